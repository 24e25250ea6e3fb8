// LoRA's low-rank branch as Hugging Face PEFT computes it (tuners/lora/layer.py, v0.5): beside a frozen
// layer, y = base(x) + lora_B(lora_A(dropout(x))) * scaling. The branch's two matrices are registered on
// the adapted layer itself as "lora_A" and "lora_B", so that their names are PEFT's file names
// (<path>.lora_A.weight, <path>.lora_B.weight) and the base keeps its own (<path>.weight); graft::linear
// (layers/linear.h) and GPT-2's Conv1D add the branch of a layer that has one.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>

namespace graft {

// lora_A: an (r, in) weight without bias; dropout on its input (training only).
class LoraDownImpl : public torch::nn::Module {
 public:
  LoraDownImpl(int64_t in_features, int64_t r, double dropout);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., r)

  torch::Tensor weight;
  double dropout = 0.0;
};
TORCH_MODULE(LoraDown);

// lora_B: an (out, r) weight without bias, its output times scaling (alpha / r, or alpha / sqrt(r) with
// rsLoRA).
class LoraUpImpl : public torch::nn::Module {
 public:
  LoraUpImpl(int64_t r, int64_t out_features, double scaling);
  torch::Tensor forward(const torch::Tensor& h);  // (..., r) -> (..., out) * scaling

  torch::Tensor weight;
  double scaling = 1.0;
  bool merged = false;  // the delta is in the base weight: the branch adds nothing to the output
};
TORCH_MODULE(LoraUp);

// The branch of a layer: (lora_A, lora_B), or two nulls when it has none.
std::pair<LoraDownImpl*, LoraUpImpl*> lora_branch(torch::nn::Module& layer);

// What the branch adds to the layer's output for x; undefined when the layer has no branch or it is merged.
torch::Tensor lora_delta(torch::nn::Module& layer, const torch::Tensor& x);

// scaling * B @ A, the (out, in) change of the base weight that merging makes.
torch::Tensor lora_weight_delta(const LoraDownImpl& down, const LoraUpImpl& up);

}  // namespace graft
