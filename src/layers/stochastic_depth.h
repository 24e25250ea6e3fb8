// Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", 2016), as torchvision 0.14
// torchvision/ops/stochastic_depth.py applies it to residual branches: in training, each sample's branch
// ("row") or the whole batch's ("batch") is zeroed with probability p and survivors are scaled by
// 1 / (1 - p), so the expected output equals the input; in eval it is the identity.
//
// The mask is drawn with torch's own generator (bernoulli_ on an empty tensor, exactly torchvision's
// calls), so torch::manual_seed makes a training run repeatable and draws the same masks as torchvision
// under the same seed.
#pragma once
#include <torch/nn/cloneable.h>
#include <torch/types.h>

#include <ostream>

namespace graft {

enum class StochasticDepthMode {
  kRow,    // one draw per sample: mask shape (N, 1, 1, ...)
  kBatch,  // one draw for the whole batch: mask shape (1, 1, ...)
};

// Throws graft::Error unless 0 <= p <= 1. Returns `input` itself when not training or p == 0.
torch::Tensor stochastic_depth(const torch::Tensor& input, double p, StochasticDepthMode mode, bool training);

// The module form (torchvision's StochasticDepth(p, mode)); it has no parameters or buffers.
class StochasticDepthImpl : public torch::nn::Cloneable<StochasticDepthImpl> {
 public:
  StochasticDepthImpl(double p, StochasticDepthMode mode);
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x) { return stochastic_depth(x, p, mode, is_training()); }
  void pretty_print(std::ostream& stream) const override;

  double p;
  StochasticDepthMode mode;
};
TORCH_MODULE(StochasticDepth);

}  // namespace graft
