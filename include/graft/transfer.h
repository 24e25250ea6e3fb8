// Model surgery: head specs (a new top for a pretrained backbone) and freeze specs (which
// pretrained layers stay fixed). Both are small string languages shared by the library and the CLI.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <array>
#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

enum class Pooling { kAvg, kMax, kFlatten, kNone };

std::string pooling_name(Pooling pooling);

// One layer of a head after the pooling: "dropout:P", "dense:N[:ACT]", "bn" (BatchNorm1d).
struct HeadLayerSpec {
  enum class Kind { kDense, kDropout, kBatchNorm } kind = Kind::kDense;
  int64_t units = 0;        // dense outputs
  double rate = 0.0;        // dropout probability
  std::string activation;   // "", "relu", "gelu", "silu", "tanh", "sigmoid", "softmax"
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

// Freeze spec: comma-separated terms, the union of what each freezes.
//   all         every backbone parameter (the custom head, if any, stays trainable)
//   none        nothing
//   last:N      everything but the last N layers (Keras' layers[:-N]; see backbone_layers)
//   until:NAME  every layer before the first layer whose name is NAME or starts with NAME.
//   GLOB        parameters whose full name matches (shell glob: * ? [..]), e.g. "layer1.*"
struct FreezeReport {
  int64_t frozen_parameters = 0;     // tensors
  int64_t trainable_parameters = 0;  // tensors
  int64_t fixed_parameters = 0;      // tensors that never train (BackboneImpl::is_fixed_parameter)
  std::vector<std::string> frozen_layers;
};

// Module path of the part transfer learning trains anew: the custom head (classifier_name()), or else
// the last classifier layer ("fc", "classifier.6") when it holds weights; "" when there is none.
std::string head_module_name(BackboneImpl& model);

// The backbone's layers as freezing counts them: modules that own parameters directly (Conv, BN,
// Linear...), in definition order, excluding the custom head. Keras counts parameter-free layers
// (ReLU, Add) too; counting only weighted layers makes last:N mean "N layers that learn".
std::vector<std::string> backbone_layers(BackboneImpl& model);

// Sets requires_grad on every parameter: frozen ones false, the rest true. Throws SpecError on a
// malformed spec or a NAME/GLOB that matches nothing. Re-applies the BatchNorm policy.
FreezeReport apply_freeze(BackboneImpl& model, const std::string& spec);

// The same on any module (a text model such as BertForSequenceClassification): layers are the modules
// that own parameters directly, in registration order; `head` names the module no spec freezes
// ("classifier"; "" for none). E.g. "until:bert.encoder.layer.10" freezes the embeddings and layers 0-9,
// "bert.embeddings.*" the embeddings alone.
FreezeReport apply_freeze(torch::nn::Module& model, const std::string& spec, const std::string& head);
std::vector<std::string> module_layers(const torch::nn::Module& model, const std::string& head);

// Simple shell-style glob match (* ? [abc]); exposed for tests.
bool glob_match(const std::string& pattern, const std::string& text);

}  // namespace graft
