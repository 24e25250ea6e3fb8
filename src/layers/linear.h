// nn::Linear's forward through at::linear. libtorch's C++ functional linear (torch/nn/functional/
// linear.h) runs a 3-D input as matmul plus a separate bias add, where at::linear (what Python's
// F.linear calls) folds a contiguous (B, T, C) input into one addmm: ~6% of a small BERT's training step.
// A layer with a LoRA branch (layers/lora.h) adds it.
#pragma once
#include <torch/nn/modules/linear.h>

#include "layers/lora.h"

namespace graft {

inline torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  torch::Tensor y = torch::linear(x, layer->weight, layer->bias);
  // The list is empty without a branch (no allocation).
  return layer->children().empty() ? y : add_lora(*layer.ptr(), x, y);
}

}  // namespace graft
