// Head specs and the head module they build: the new top of a pretrained backbone, written as
// "avg,dropout:0.2,dense:512:relu,dense:10" (Keras: GlobalAveragePooling2D, Dropout, Dense, Dense).
// A model part (models/ builds it into every backbone); transfer.h adds freezing on top.
#pragma once
#include <torch/nn/module.h>

#include <array>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "graft/model.h"

namespace graft {

enum class Pooling { kAvg, kMax, kFlatten, kNone };

std::string pooling_name(Pooling pooling);

// One layer of a head after the pooling: "dropout:P", "dense:N[:ACT]", "bn" (BatchNorm1d).
struct HeadLayerSpec {
  enum class Kind { kDense, kDropout, kBatchNorm } kind = Kind::kDense;
  int64_t units = 0;       // dense outputs
  double rate = 0.0;       // dropout probability
  std::string activation;  // "", "relu", "gelu", "silu", "tanh", "sigmoid", "softmax"
};

// "avg,dropout:0.2,dense:512:relu,dense:10": pooling first (avg|max|flatten|none, default avg), then
// layers in order. An empty layer list means include_top=false: the head outputs pooled features.
struct HeadSpec {
  Pooling pooling = Pooling::kAvg;
  std::vector<HeadLayerSpec> layers;

  static HeadSpec parse(const std::string& text);  // throws SpecError naming the bad term
  std::string to_string() const;
};

// A head built from a HeadSpec. Children are numbered as in a Sequential: "0" is the first layer
// after pooling (pooling owns no weights and is not a child).
class HeadImpl : public torch::nn::Module {
 public:
  // in_channels: channels of the feature map; feature_hw: its spatial size (needed for flatten).
  HeadImpl(const HeadSpec& spec, int64_t in_channels, std::array<int64_t, 2> feature_hw);
  torch::Tensor forward(const torch::Tensor& features);  // (N, C, H, W) -> (N, out_features())
  // The pooling alone, (N, C, H, W) -> (N, D): what a feature cache stores.
  torch::Tensor pool(const torch::Tensor& features) const;
  // The layers after the pooling, (N, D) -> (N, out_features()): trains on cached features.
  torch::Tensor forward_pooled(const torch::Tensor& pooled);
  // Steps for the summary: pooling, then each layer, names relative to the head.
  std::vector<ForwardStep> steps(bool pre_logits);
  int64_t out_features() const { return out_features_; }
  const HeadSpec& spec() const { return spec_; }

 private:
  HeadSpec spec_;
  std::vector<std::pair<std::string, std::function<torch::Tensor(const torch::Tensor&)>>> layers_;
  std::vector<std::string> layer_types_;
  int64_t out_features_ = 0;
};

}  // namespace graft
