// Golden tolerances for a float32 forward pass compared with another float32 implementation of the same
// network (torchvision, TF.js), derived from what the computation can amplify rather than from one
// machine's result (issue #15: a bound read off one CPU failed on another).
//
// Each weight layer computes dot products of K terms (K: its fan-in, in_channels / groups x the kernel's
// size). Two implementations sum them in their own order (another kernel, vector width, AVX2 or AVX-512,
// Intel or AMD, channels-last, a folded BatchNorm), and a float32 sum of K terms rounds by about
// sqrt(K) * u of the magnitude of its terms (u = 2^-24: the random-walk estimate of rounding; K * u is the
// worst case). Later layers carry that error on at the scale of their activations, so after L weight
// layers the output may be off by about L * sqrt(K_max) * u of its own scale, on each side of the
// comparison: tolerance = 2 * L * sqrt(K_max) * u * max |expected|. On the golden references this is
// 10x to 300x above the differences seen (AMD EPYC: inception_v3 logits 4e-5 against 1.2e-2, resnet152
// features 4e-5 against 1.3e-2), and far below what a wrong layer gives (a wrong padding, epsilon or
// activation moves outputs by 1e-2 to 1 of their scale).
//
// A softmax is 1/2-Lipschitz in the max norm (sum_j |dp_i/dz_j| = 2 p_i (1 - p_i) <= 1/2), so
// probabilities get half the logits' tolerance.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace graft::testing {

constexpr double kUnitRoundoff = 5.9604644775390625e-08;  // 2^-24, float32

struct ForwardDepth {
  int64_t layers = 0;  // weight layers (convolutions, linear layers): weights of two or more dimensions
  int64_t fan_in = 1;  // the largest number of terms one output sums
};

inline ForwardDepth forward_depth(const torch::nn::Module& model) {
  ForwardDepth depth;
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    const torch::Tensor& weight = item.value();
    if (weight.dim() < 2 || name.size() < 6 || name.compare(name.size() - 6, 6, "weight") != 0) continue;
    ++depth.layers;
    depth.fan_in = std::max<int64_t>(depth.fan_in, weight.numel() / weight.size(0));
  }
  return depth;
}

// The tolerance on an output whose reference is `expected`.
inline double forward_tolerance(const ForwardDepth& depth, const torch::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return 2.0 * static_cast<double>(depth.layers) * std::sqrt(static_cast<double>(depth.fan_in)) *
         kUnitRoundoff * scale;
}

// Probabilities of a softmax over logits whose tolerance is `logits_tolerance`.
inline double softmax_tolerance(double logits_tolerance) {
  return 0.5 * logits_tolerance;
}

// bf16 autocast against a float32 reference. Each convolution and matrix product rounds its input and
// its weight to bfloat16 (8 significant bits: u = 2^-9) and sums in float32, so every term of a dot
// product is off by up to 2u of itself and the sum by about 2u of its own scale (the terms' errors are
// independent; float32 summation adds nothing comparable). Layer after layer these add up: L weight
// layers leave about 2 L u of the output's scale; twice that is the bound, as for float32 above:
// tolerance = 4 L u max |expected|. This is loose for deep models; the tests pair it with the direction
// of each output (cosine similarity), which rounding barely turns.
constexpr double kBf16UnitRoundoff = 1.0 / 512;  // 2^-9

inline double bf16_tolerance(const ForwardDepth& depth, const torch::Tensor& expected) {
  return 4.0 * static_cast<double>(depth.layers) * kBf16UnitRoundoff * expected.abs().max().item<double>();
}

}  // namespace graft::testing
