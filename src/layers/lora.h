// LoRA's low-rank branch as Hugging Face PEFT computes it (tuners/lora/layer.py, v0.5): beside a frozen
// layer, y = base(x) + lora_B(lora_A(dropout(x))) * scaling. The branch's two matrices are registered on
// the adapted layer itself as "lora_A" and "lora_B", so that their names are PEFT's file names
// (<path>.lora_A.weight, <path>.lora_B.weight) and the base keeps its own (<path>.weight); graft::linear
// (layers/linear.h), GPT-2's Conv1D and graft::conv2d (layers/conv_bn.h) add the branch of a layer that
// has one.
//
// Beside a Conv2d the branch is PEFT's pair of convolutions: lora_A an (r, in, kh, kw) convolution with
// the base's stride and padding, lora_B an (out, r, 1, 1) one.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace graft {

// lora_A: an (r, in) weight without bias (or (r, in, kh, kw) beside a convolution); dropout on its input
// (training only).
class LoraDownImpl : public torch::nn::Module {
 public:
  LoraDownImpl(int64_t in_features, int64_t r, double dropout);
  // Beside a convolution of that kernel, stride and padding.
  LoraDownImpl(int64_t in_channels, int64_t r, std::vector<int64_t> kernel, std::vector<int64_t> stride,
               std::vector<int64_t> padding, double dropout);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., r); (N, in, H, W) -> (N, r, H', W')

  torch::Tensor weight;
  double dropout = 0.0;
  std::vector<int64_t> stride, padding;  // a convolution's; empty beside a Linear
};
TORCH_MODULE(LoraDown);

// lora_B: an (out, r) weight without bias (or (out, r, 1, 1) beside a convolution), its output times
// scaling (alpha / r, or alpha / sqrt(r) with rsLoRA).
class LoraUpImpl : public torch::nn::Module {
 public:
  LoraUpImpl(int64_t r, int64_t out_features, double scaling, bool conv = false);
  torch::Tensor forward(const torch::Tensor& h);  // (..., r) -> (..., out) * scaling

  torch::Tensor weight;
  double scaling = 1.0;
  bool merged = false;  // the delta is in the base weight: the branch adds nothing to the output
};
TORCH_MODULE(LoraUp);

// The branch of a layer: (lora_A, lora_B), or two nulls when it has none.
std::pair<LoraDownImpl*, LoraUpImpl*> lora_branch(torch::nn::Module& layer);

// Whether the layer has a branch that is not merged into its weight (one that changes its output).
bool has_live_branch(const torch::nn::Module& layer);

// y, the base layer's output for x, with the branch's output added (in place: one kernel for B's product
// times scaling plus y, as PEFT's `result += ...`); y as it is when the layer has no branch or it is merged.
// y must be the base's fresh output, which autograd does not keep.
torch::Tensor add_lora(torch::nn::Module& layer, const torch::Tensor& x, torch::Tensor y);

// The change of the base weight that merging makes, as PEFT computes it: scaling * B @ A, (out, in); beside
// a convolution (out, in, kh, kw), by matrix product for 1x1 kernels and by convolving A with B otherwise.
torch::Tensor lora_weight_delta(const LoraDownImpl& down, const LoraUpImpl& up);

}  // namespace graft
