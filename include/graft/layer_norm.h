// LayerNorm computed in float32 whatever its input's precision.
#pragma once
#include <torch/nn/modules/normalization.h>

namespace graft {

// torch::nn::LayerNorm (the same parameters and names) that normalises a reduced-precision input in float32
// and returns float32: under bf16 autocast the input arrives in bf16 beside float32 weights, which
// libtorch 1.13's CPU kernel refuses, and normalisation is where low precision costs accuracy (PyTorch's
// CUDA autocast runs layer_norm in float32 for that reason). Float32 inputs are untouched.
class FloatLayerNormImpl : public torch::nn::LayerNormImpl {
 public:
  using torch::nn::LayerNormImpl::LayerNormImpl;
  torch::Tensor forward(const torch::Tensor& input) {
    const bool reduced = input.scalar_type() == torch::kBFloat16 || input.scalar_type() == torch::kHalf;
    return torch::nn::LayerNormImpl::forward(reduced ? input.to(torch::kFloat) : input);
  }
};
TORCH_MODULE(FloatLayerNorm);

}  // namespace graft
