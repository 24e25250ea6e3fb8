// Small pieces every image architecture file shares: class-count checks, step lists over a Sequential,
// and the "replace the last classifier layer" surgery that libtorch's Sequential cannot do in place.
#pragma once
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

// Throws graft::Error unless num_classes >= 0 (0: no classifier, the model returns pre-logits).
// `where` names the call, e.g. "vgg16" or "vgg16: reset_classifier(-1)".
void check_num_classes(const std::string& where, int64_t num_classes);

// One step per child [begin, end) of `seq`, named "<prefix>.<index>" and typed types[index].
std::vector<ForwardStep> sequential_steps(const torch::nn::Sequential& seq, const std::string& prefix,
                                          const std::vector<std::string>& types, size_t begin = 0,
                                          size_t end = std::numeric_limits<size_t>::max());

// torchvision's classifier Linear init for VGG and MobileNetV2: weight ~ N(0, 0.01), bias 0.
void init_linear_normal(torch::nn::LinearImpl& linear);

// PreTrainedModel._init_weights of Hugging Face's text models (BERT, RoBERTa, DistilBERT, Llama): Linear and
// Embedding weights ~ N(0, std), biases 0, an Embedding's padding row 0, LayerNorm 1 and 0; `root` included.
void init_hf_weights(torch::nn::Module& root, double std);

// Keras' default init for the ports from Keras/TF.js: glorot (Xavier) uniform kernel, zero bias.
void init_conv_xavier(torch::nn::Conv2dImpl& conv);
// The 1x1 convolution those ports classify with (Keras' "conv_preds"), freshly initialised.
torch::nn::Conv2d make_conv_classifier(int64_t in_channels, int64_t num_classes);

// The last layer of a model replaced in place: `make()` builds the fresh layer, which follows the model to
// the device and dtype of `like` (so a reset after .to(cuda) still runs) and is registered as `name`; for
// num_classes 0 an Identity is registered there instead (the model then returns pre-logits) and the
// returned holder is null.
template <class Holder, class Make>
Holder replace_last_layer(torch::nn::Module& model, const std::string& name, int64_t num_classes,
                          const torch::Tensor& like, Make make) {
  if (num_classes == 0) {
    model.replace_module(name, torch::nn::Identity());
    return Holder{nullptr};
  }
  Holder layer = make();
  layer->to(like.device(), like.scalar_type());
  model.replace_module(name, layer);
  return layer;
}

// The classifier of a model that classifies with one Linear registered as "fc" (ResNet, InceptionV3, the
// video ResNets), replaced through replace_last_layer: Linear(in_features, num_classes) with torchvision's
// N(0, 0.01) init when `normal_init` (libtorch's default otherwise, as torchvision's ResNet leaves it);
// null, with an Identity registered, for 0.
torch::nn::Linear replace_fc(torch::nn::Module& model, int64_t in_features, int64_t num_classes,
                             const torch::Tensor& like, bool normal_init);
// Outputs of such a classifier: fc's, or in_features when it is an Identity.
inline int64_t fc_outputs(const torch::nn::Linear& fc, int64_t in_features) {
  return fc ? fc->options.out_features() : in_features;
}

// Appends a classifier's last layer to `seq`: Linear(in_features, num_classes), or an Identity for 0 (the
// model then returns pre-logits).
void push_last_linear(torch::nn::Sequential& seq, int64_t in_features, int64_t num_classes);

// torchvision's head of MobileNetV2 and EfficientNet: global average pooling and flatten (functional in
// torchvision: labels, not module paths), then `classifier`'s (Dropout, Linear) steps; pre_logits stops
// before its last layer. (N, C, H, W) -> (N, classes).
std::vector<ForwardStep> pooled_classifier_steps(const torch::nn::Sequential& classifier, int64_t num_classes,
                                                 bool pre_logits);

// A copy of `seq` whose last child is a fresh Linear(in_features, num_classes) (Identity for 0) on the
// device and dtype of `like`; the other children are shared, so their weights are kept.
torch::nn::Sequential with_new_last_linear(const torch::nn::Sequential& seq, int64_t in_features,
                                           int64_t num_classes, const torch::Tensor& like);

// torchvision's initialisation of its convolutional classifiers (VGG, MobileNetV2, EfficientNet):
// convolutions Kaiming-normal (fan-out, ReLU's gain), their biases 0, BatchNorm 1 / 0, Linear layers by
// linear_init.
void init_torchvision_weights(torch::nn::Module& model,
                              const std::function<void(torch::nn::LinearImpl&)>& linear_init);

// torchvision's layout of MobileNetV2 and EfficientNet: `features`, a Sequential (stem, blocks, a last
// conv of num_features() outputs, features.N typed for the summary), then `classifier` (Dropout, Linear)
// after global average pooling. A subclass builds the features and calls finish_layout.
class FeaturesClassifierImpl : public BackboneImpl {
 public:
  using LinearInit = std::function<void(torch::nn::LinearImpl&)>;
  using BackboneImpl::BackboneImpl;

  int64_t num_features() const override { return last_channel_; }
  std::vector<ForwardStep> feature_steps() override;
  // avgpool, flatten, classifier.0 (Dropout), classifier.1 (Linear); pre_logits stops before classifier.1.
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "classifier"; }

  torch::nn::Sequential features{nullptr};
  torch::nn::Sequential classifier{nullptr};

 protected:
  // Registers `layers` as features and the classifier (Identity for 0 classes), then initialises them
  // (init_torchvision_weights).
  // reinit_replaced: a classifier replaced later is initialised by linear_init too (EfficientNet), not
  // left at libtorch's default (MobileNetV2).
  void finish_layout(torch::nn::Sequential layers, double dropout, int64_t num_classes,
                     LinearInit linear_init, bool reinit_replaced);
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override { return num_classes_ > 0 ? num_classes_ : last_channel_; }

  int64_t last_channel_ = 0;                // width of the last conv (1280 for MobileNetV2 and B0)
  std::vector<std::string> feature_types_;  // layer type of features.N, for the summary

 private:
  int64_t num_classes_ = 0;  // 0: classifier.1 is an Identity
  LinearInit linear_init_;
  bool reinit_replaced_ = false;
};

}  // namespace graft
