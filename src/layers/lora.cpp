// LoRA's branch (layers/lora.h).
#include "layers/lora.h"

#include <cmath>

namespace graft {

LoraDownImpl::LoraDownImpl(int64_t in_features, int64_t r, double dropout_p) : dropout(dropout_p) {
  weight = register_parameter("weight", torch::empty({r, in_features}));
  // PEFT's default: Kaiming-uniform with a = sqrt(5), nn.Linear's own initialisation.
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

torch::Tensor LoraDownImpl::forward(const torch::Tensor& x) {
  const torch::Tensor in = dropout > 0 && is_training() ? torch::dropout(x, dropout, true) : x;
  return torch::linear(in, weight);
}

LoraUpImpl::LoraUpImpl(int64_t r, int64_t out_features, double scaling_) : scaling(scaling_) {
  weight = register_parameter("weight", torch::zeros({out_features, r}));  // the branch starts at zero
}

torch::Tensor LoraUpImpl::forward(const torch::Tensor& h) {
  return torch::linear(h, weight) * scaling;
}

std::pair<LoraDownImpl*, LoraUpImpl*> lora_branch(torch::nn::Module& layer) {
  LoraDownImpl* down = nullptr;
  LoraUpImpl* up = nullptr;
  for (const auto& child : layer.children()) {
    if (auto* d = child->as<LoraDownImpl>()) down = d;
    if (auto* u = child->as<LoraUpImpl>()) up = u;
  }
  return {down, up};
}

torch::Tensor lora_delta(torch::nn::Module& layer, const torch::Tensor& x) {
  auto [down, up] = lora_branch(layer);
  if (!down || !up || up->merged) return {};
  return up->forward(down->forward(x));
}

torch::Tensor lora_weight_delta(const LoraDownImpl& down, const LoraUpImpl& up) {
  return torch::matmul(up.weight, down.weight) * up.scaling;
}

}  // namespace graft
