// nn::Linear's forward through at::linear. libtorch's C++ functional linear (torch/nn/functional/
// linear.h) runs a 3-D input as matmul plus a separate bias add, where at::linear (what Python's
// F.linear calls) folds a contiguous (B, T, C) input into one addmm: ~6% of a small BERT's training step.
#pragma once
#include <torch/nn/modules/linear.h>

namespace graft {

inline torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return torch::linear(x, layer->weight, layer->bias);
}

}  // namespace graft
