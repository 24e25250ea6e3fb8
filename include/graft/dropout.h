// Dropout with torch::nn::Dropout's semantics (in training each element is zeroed with probability p and the
// others scaled by 1 / (1 - p), NaN and infinity times 0 staying NaN; in eval the identity), computed in one
// pass on the CPU. ATen's CPU dropout draws every element from the Mersenne Twister and keeps a float mask
// for backward: about 4 ms forward for BERT-base's (8, 128, 768) activations on 2 AMD EPYC cores, near the
// cost of a 768x768 matrix product on them, paid three times a layer; this one takes under 1 ms. A
// counter-based generator (SplitMix64 over the element index, from one seed drawn from torch's default
// generator, so torch::manual_seed repeats a run whatever the thread count) gives each element 32 bits, and
// backward keeps a byte mask. The masks differ from ATen's draws, not their distribution.
#pragma once
#include <torch/nn/cloneable.h>
#include <torch/types.h>

#include <ostream>

namespace graft {

// Called qualified (graft::dropout): ATen has a dropout of the same arguments, which ADL finds.
// Throws graft::Error unless 0 <= p <= 1. Returns `x` itself when not training or p == 0. CUDA tensors and
// dtypes other than float32 go to torch::dropout.
torch::Tensor dropout(const torch::Tensor& x, double p, bool training);

// The module form, named and printed as torch::nn::Dropout is; it has no parameters or buffers.
class DropoutImpl : public torch::nn::Cloneable<DropoutImpl> {
 public:
  explicit DropoutImpl(double p = 0.5);
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x) { return graft::dropout(x, p, is_training()); }
  void pretty_print(std::ostream& stream) const override;

  double p;
};
TORCH_MODULE(Dropout);

}  // namespace graft
