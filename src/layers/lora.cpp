// LoRA's branch (layers/lora.h).
#include "layers/lora.h"

#include <cmath>

#include "graft/dropout.h"

namespace graft {

namespace {

// PEFT's default: Kaiming-uniform with a = sqrt(5), nn.Linear's (and nn.Conv2d's) own initialisation.
void init_down(torch::Tensor& weight) {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

}  // namespace

LoraDownImpl::LoraDownImpl(int64_t in_features, int64_t r, double dropout_p) : dropout(dropout_p) {
  weight = register_parameter("weight", torch::empty({r, in_features}));
  init_down(weight);
}

LoraDownImpl::LoraDownImpl(int64_t in_channels, int64_t r, std::vector<int64_t> kernel,
                           std::vector<int64_t> stride_, std::vector<int64_t> padding_, double dropout_p)
    : dropout(dropout_p), stride(std::move(stride_)), padding(std::move(padding_)) {
  weight = register_parameter("weight", torch::empty({r, in_channels, kernel.at(0), kernel.at(1)}));
  init_down(weight);
}

torch::Tensor LoraDownImpl::forward(const torch::Tensor& x) {
  const torch::Tensor in = graft::dropout(x, dropout, is_training());
  if (weight.dim() == 4) return torch::conv2d(in, weight, {}, stride, padding);
  return torch::linear(in, weight);
}

LoraUpImpl::LoraUpImpl(int64_t r, int64_t out_features, double scaling_, bool conv) : scaling(scaling_) {
  // The branch starts at zero.
  weight = register_parameter("weight",
                              conv ? torch::zeros({out_features, r, 1, 1}) : torch::zeros({out_features, r}));
}

torch::Tensor LoraUpImpl::forward(const torch::Tensor& h) {
  if (weight.dim() == 4) return torch::conv2d(h, weight) * scaling;
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

bool has_live_branch(const torch::nn::Module& layer) {
  bool down = false;
  const LoraUpImpl* up = nullptr;
  for (const auto& child : layer.children()) {
    down = down || child->as<LoraDownImpl>() != nullptr;
    if (const auto* u = child->as<LoraUpImpl>()) up = u;
  }
  return down && up && !up->merged;
}

torch::Tensor add_lora(torch::nn::Module& layer, const torch::Tensor& x, torch::Tensor y) {
  auto [down, up] = lora_branch(layer);
  if (!down || !up || up->merged) return y;
  const torch::Tensor h = down->forward(x);
  const torch::Tensor product =
      up->weight.dim() == 4 ? torch::conv2d(h, up->weight) : torch::linear(h, up->weight);
  return y.add_(product, up->scaling);
}

torch::Tensor lora_weight_delta(const LoraDownImpl& down, const LoraUpImpl& up) {
  if (down.weight.dim() == 2) return torch::matmul(up.weight, down.weight) * up.scaling;
  if (down.weight.size(2) == 1 && down.weight.size(3) == 1)  // (out, r) @ (r, in) as (out, in, 1, 1)
    return torch::matmul(up.weight.flatten(1), down.weight.flatten(1)).view({up.weight.size(0), -1, 1, 1}) *
           up.scaling;
  // PEFT: conv2d(A^T, B)^T, i.e. delta[o, i] = sum_r B[o, r] A[r, i], kernel by kernel.
  return torch::conv2d(down.weight.permute({1, 0, 2, 3}), up.weight).permute({1, 0, 2, 3}) * up.scaling;
}

}  // namespace graft
