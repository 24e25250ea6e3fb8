// Stochastic depth (see stochastic_depth.h), torchvision 0.14 torchvision/ops/stochastic_depth.py.
#include "layers/stochastic_depth.h"

#include <string>
#include <vector>

#include "graft/errors.h"

namespace graft {
namespace {

void check_probability(double p) {
  if (!(p >= 0.0 && p <= 1.0)) {  // also rejects NaN
    throw Error("stochastic_depth: the drop probability must be in [0, 1], got " + std::to_string(p));
  }
}

}  // namespace

torch::Tensor stochastic_depth(const torch::Tensor& input, double p, StochasticDepthMode mode,
                               bool training) {
  check_probability(p);
  if (!training || p == 0.0) return input;
  const double survival_rate = 1.0 - p;
  // Row mode: one keep/drop per sample, broadcast over the other dimensions.
  std::vector<int64_t> size(input.dim(), 1);
  if (mode == StochasticDepthMode::kRow && input.dim() > 0) size[0] = input.size(0);
  torch::Tensor noise = torch::empty(size, input.options()).bernoulli_(survival_rate);
  if (survival_rate > 0.0) noise.div_(survival_rate);  // p == 1 drops everything; nothing to rescale
  return input * noise;
}

StochasticDepthImpl::StochasticDepthImpl(double p, StochasticDepthMode mode) : p(p), mode(mode) {
  check_probability(p);
}

void StochasticDepthImpl::pretty_print(std::ostream& stream) const {
  stream << "StochasticDepth(p=" << p << ", mode=" << (mode == StochasticDepthMode::kRow ? "row" : "batch")
         << ")";
}

}  // namespace graft
