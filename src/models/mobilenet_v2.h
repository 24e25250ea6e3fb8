// MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018), as
// torchvision 0.14 torchvision/models/mobilenetv2.py (and ops/misc.py Conv2dNormActivation) builds it:
// "features.0" .. "features.18", then "classifier.0" (Dropout) and "classifier.1" (Linear).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

#include <string>
#include <vector>

#include "graft/model.h"
#include "layers/conv_bn.h"
#include "models/common.h"

namespace graft {

// One row of the paper's Table 2: a stage of `repeats` inverted residual blocks.
struct InvertedResidualSetting {
  int64_t expand_ratio;  // t: hidden width = t * input width
  int64_t channels;      // c: output channels (before width_mult)
  int64_t repeats;       // n: blocks in the stage
  int64_t stride;        // s: stride of the stage's first block
};

struct MobileNetV2Config {
  std::string arch = "mobilenet_v2";
  double width_mult = 1.0;  // scales every width, rounded to a multiple of round_nearest
  int64_t round_nearest = 8;
  int64_t input_channel = 32;   // stem width
  int64_t last_channel = 1280;  // width of features.18 (never scaled below 1280)
  double dropout = 0.2;         // classifier.0
  // Keras' MobileNetV2 (keras/applications/mobilenet_v2.py) is the same network with TF conventions:
  // stride-2 convolutions pad "same" (the extra cell bottom/right), BatchNorm eps 1e-3, momentum 0.999
  // (0.001 in PyTorch's convention). Its weights load through the Keras name map (keras_convert.cpp).
  bool tf_same_padding = false;
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;
  // clang-format off
  std::vector<InvertedResidualSetting> setting{
      // t,   c, n, s
      {1,  16, 1, 1},
      {6,  24, 2, 2},
      {6,  32, 3, 2},
      {6,  64, 4, 2},
      {6,  96, 3, 1},
      {6, 160, 3, 2},
      {6, 320, 1, 1},
  };
  // clang-format on

  static MobileNetV2Config mobilenet_v2() { return {}; }
  static MobileNetV2Config keras() {
    MobileNetV2Config config;
    config.tf_same_padding = true;
    config.bn_eps = 1e-3;
    config.bn_momentum = 1e-3;
    return config;
  }
};

// The blocks have a namespace of their own: other architectures define blocks of the same names.
namespace mobilenetv2 {

// torchvision's _make_divisible: round v to the nearest multiple of divisor, never down by more than 10%.
int64_t make_divisible(double v, int64_t divisor);

// Padding and BatchNorm conventions of a build: torchvision's (default) or TF's (MobileNetV2Config).
struct LayerStyle {
  bool tf_same_padding = false;
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;
};

// Conv (no bias) -> BatchNorm2d -> ReLU6, children "0", "1", "2": a Sequential, as torchvision's
// Conv2dNormActivation is. The plain forward lets it sit inside another Sequential.
class Conv2dNormActivationImpl : public torch::nn::SequentialImpl {
 public:
  Conv2dNormActivationImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
                           int64_t groups = 1, const LayerStyle& style = {});
  // Conv, BatchNorm (folded into the conv where layers/conv_bn.h may), activation.
  torch::Tensor forward(torch::Tensor x) { return conv_bn_sequential(*this, std::move(x)); }
};
TORCH_MODULE(Conv2dNormActivation);

// Expand 1x1 (if t > 1) -> depthwise 3x3 -> linear 1x1 projection, plus the identity shortcut when
// stride is 1 and widths match. Children: "conv.0", "conv.1", ...
class InvertedResidualImpl : public torch::nn::Module {
 public:
  InvertedResidualImpl(int64_t inp, int64_t oup, int64_t stride, int64_t expand_ratio,
                       const LayerStyle& style = {});
  torch::Tensor forward(const torch::Tensor& x);  // (N, inp, H, W) -> (N, oup, H/s, W/s)

  torch::nn::Sequential conv{nullptr};
  bool use_res_connect = false;
};
TORCH_MODULE(InvertedResidual);

}  // namespace mobilenetv2

class MobileNetV2Impl : public FeaturesClassifierImpl {
 public:
  MobileNetV2Impl(const MobileNetV2Config& config, int64_t num_classes);

  const MobileNetV2Config& config() const { return config_; }

 private:
  MobileNetV2Config config_;
};
TORCH_MODULE(MobileNetV2);

Backbone mobilenet_v2(int64_t num_classes);
// The Keras build (MobileNetV2Config::keras()), same names: what Keras and TF.js weights need.
Backbone mobilenet_v2_keras(int64_t num_classes);

}  // namespace graft
