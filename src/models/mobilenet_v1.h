// MobileNet v1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
// Applications", 2017), as Keras 2.8 keras/applications/mobilenet.py builds it, with Keras' layer names
// as module names ("conv1", "conv1_bn", "conv_dw_1", "conv_dw_1_bn", "conv_pw_1", ..., "conv_preds"), so
// the Keras name map is the identity on layers:
//   conv1 (3x3/2, "same": TF's asymmetric padding) -> conv1_bn -> conv1_relu (ReLU6), then 13 blocks
//   [conv_pad_i (ZeroPadding2D ((0,1),(0,1)), stride-2 blocks only) -> conv_dw_i (depthwise 3x3, "same" at
//   stride 1, "valid" after the pad) -> _bn -> _relu -> conv_pw_i (1x1) -> _bn -> _relu], then global average
//   pooling, dropout and the 1x1 conv classifier conv_preds (+ reshape). BatchNorm eps 1e-3 (Keras').
// forward() returns logits (Keras' reshape_2); the Keras model's softmax ("predictions") is left to the
// caller, as in every graft model.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>

#include <string>
#include <vector>

#include "graft/model.h"
#include "layers/conv2d_same.h"

namespace graft {

// One depthwise-separable block: depthwise 3x3 with `stride`, then pointwise to `filters` (before alpha).
struct DepthwiseBlockSetting {
  int64_t filters;
  int64_t stride;
};

struct MobileNetV1Config {
  std::string arch = "mobilenet_v1_100";
  double alpha = 1.0;            // width multiplier: every width is int(width * alpha), as Keras rounds
  int64_t depth_multiplier = 1;  // depthwise channel multiplier
  int64_t stem_filters = 32;     // conv1, before alpha
  double dropout = 1e-3;         // Keras' default rate before conv_preds
  double bn_eps = 1e-3;          // Keras' BatchNormalization default
  double bn_momentum = 0.01;     // PyTorch convention: Keras' momentum 0.99
  // clang-format off
  std::vector<DepthwiseBlockSetting> blocks{
      // filters, stride   (block ids 1..13)
      {64, 1},   {128, 2}, {128, 1}, {256, 2}, {256, 1}, {512, 2},
      {512, 1},  {512, 1}, {512, 1}, {512, 1}, {512, 1},
      {1024, 2}, {1024, 1},
  };
  // clang-format on

  // alpha in {0.25, 0.5, 0.75, 1.0}: the widths Keras ships ImageNet weights for. arch is
  // "mobilenet_v1_025" .. "mobilenet_v1_100".
  static MobileNetV1Config mobilenet_v1(double alpha);
};

class MobileNetV1Impl : public BackboneImpl {
 public:
  MobileNetV1Impl(const MobileNetV1Config& config, int64_t num_classes);

  int64_t num_features() const override { return num_features_; }
  // One step per Keras layer: conv1, conv1_bn, conv1_relu, [conv_pad_i], conv_dw_i, conv_dw_i_bn, ...
  std::vector<ForwardStep> feature_steps() override;
  // global_average_pooling2d, dropout, conv_preds (a 1x1 conv on the pooled vector, reshaped to
  // (N, classes) like reshape_2); pre_logits stops after the dropout.
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "conv_preds"; }

  const MobileNetV1Config& config() const { return config_; }

  Conv2dSame conv1{nullptr};
  torch::nn::BatchNorm2d conv1_bn{nullptr};
  std::vector<torch::nn::Conv2d> conv_dw, conv_pw;  // conv_dw_1 .. 13, conv_pw_1 .. 13
  std::vector<torch::nn::BatchNorm2d> conv_dw_bn, conv_pw_bn;
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Conv2d conv_preds{nullptr};  // null when reset to 0 classes

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  MobileNetV1Config config_;
  int64_t num_features_ = 0;
};
TORCH_MODULE(MobileNetV1);

Backbone mobilenet_v1_025(int64_t num_classes);
Backbone mobilenet_v1_050(int64_t num_classes);
Backbone mobilenet_v1_075(int64_t num_classes);
Backbone mobilenet_v1_100(int64_t num_classes);

}  // namespace graft
