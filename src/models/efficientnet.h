// EfficientNet-B0..B7 (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
// Networks", ICML 2019, arXiv:1905.11946), exactly as torchvision 0.14 torchvision/models/efficientnet.py
// (MBConv, EfficientNet, _efficientnet_conf) with ops/misc.py (Conv2dNormActivation, SqueezeExcitation)
// and ops/stochastic_depth.py builds it: "features.0" (stem), "features.1" .. "features.7" (one
// Sequential of MBConv blocks per stage), "features.8" (1x1 head conv), then "classifier.0" (Dropout)
// and "classifier.1" (Linear). Parameter names are torchvision's ("features.2.0.block.2.fc1.weight"), so
// torchvision checkpoints load unchanged.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>

#include <string>
#include <vector>

#include "graft/model.h"
#include "layers/conv_bn.h"
#include "layers/stochastic_depth.h"
#include "models/common.h"

namespace graft {

// One row of the paper's Table 1 (torchvision's MBConvConfig): a stage of num_layers MBConv blocks.
// Widths and depths are B0's; EfficientNetConfig's width_mult / depth_mult scale them.
struct MBConvConfig {
  double expand_ratio;     // hidden width = expand_ratio * input width, e.g. 6
  int64_t kernel;          // depthwise kernel size, 3 or 5
  int64_t stride;          // stride of the stage's first block (the others have 1)
  int64_t input_channels;  // e.g. 32
  int64_t out_channels;    // e.g. 16
  int64_t num_layers;      // blocks in the stage
};

struct EfficientNetConfig {
  std::string arch = "efficientnet_b0";
  double width_mult = 1.0;             // channels: round(c * width_mult) to a multiple of 8
  double depth_mult = 1.0;             // blocks per stage: ceil(n * depth_mult)
  double dropout = 0.2;                // classifier.0
  double stochastic_depth_prob = 0.2;  // drop rate of the last block; block i of T gets 0.2 * i / T
  // Every BatchNorm2d. torchvision leaves B0..B4 at PyTorch's defaults; B5..B7 use eps 1e-3, momentum 0.01.
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;
  // clang-format off
  std::vector<MBConvConfig> stages{
      // expand, kernel, stride, in, out, layers
      {1, 3, 1,  32,  16, 1},
      {6, 3, 2,  16,  24, 2},
      {6, 5, 2,  24,  40, 2},
      {6, 3, 2,  40,  80, 3},
      {6, 5, 1,  80, 112, 3},
      {6, 5, 2, 112, 192, 4},
      {6, 3, 1, 192, 320, 1},
  };
  // clang-format on

  // torchvision's adjust_channels / adjust_depth with this config's multipliers.
  int64_t scaled_channels(int64_t channels) const;
  int64_t scaled_depth(int64_t num_layers) const;

  // Compound scaling presets (torchvision's efficientnet_bN): width, depth, dropout, BatchNorm.
  static EfficientNetConfig efficientnet_b0() { return {}; }
  static EfficientNetConfig efficientnet_b1() { return scaled("efficientnet_b1", 1.0, 1.1, 0.2); }
  static EfficientNetConfig efficientnet_b2() { return scaled("efficientnet_b2", 1.1, 1.2, 0.3); }
  static EfficientNetConfig efficientnet_b3() { return scaled("efficientnet_b3", 1.2, 1.4, 0.3); }
  static EfficientNetConfig efficientnet_b4() { return scaled("efficientnet_b4", 1.4, 1.8, 0.4); }
  static EfficientNetConfig efficientnet_b5() { return scaled("efficientnet_b5", 1.6, 2.2, 0.4, 1e-3, 0.01); }
  static EfficientNetConfig efficientnet_b6() { return scaled("efficientnet_b6", 1.8, 2.6, 0.5, 1e-3, 0.01); }
  static EfficientNetConfig efficientnet_b7() { return scaled("efficientnet_b7", 2.0, 3.1, 0.5, 1e-3, 0.01); }
  // B0's stage table under other multipliers.
  static EfficientNetConfig scaled(const std::string& arch, double width_mult, double depth_mult,
                                   double dropout, double bn_eps = 1e-5, double bn_momentum = 0.1);
};

// The blocks have a namespace of their own: MobileNetV2 defines a Conv2dNormActivation of its own.
namespace efficientnet {

// Conv (no bias) -> BatchNorm2d [-> SiLU], children "0", "1" [, "2"]: a Sequential, as torchvision's
// Conv2dNormActivation is. Padding (k - 1) / 2 keeps the size at stride 1.
class Conv2dNormActivationImpl : public torch::nn::SequentialImpl {
 public:
  Conv2dNormActivationImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
                           int64_t groups, bool activation, const EfficientNetConfig& config);
  // Conv, BatchNorm (folded into the conv where layers/conv_bn.h may), activation.
  torch::Tensor forward(torch::Tensor x) { return conv_bn_sequential(*this, std::move(x)); }
};
TORCH_MODULE(Conv2dNormActivation);

// Squeeze-and-excitation (Hu et al. 2018) as torchvision's SqueezeExcitation: per-channel gates from the
// globally pooled input, x * sigmoid(fc2(silu(fc1(avgpool(x))))). fc1 / fc2 are 1x1 convs with bias.
class SqueezeExcitationImpl : public torch::nn::Module {
 public:
  SqueezeExcitationImpl(int64_t input_channels, int64_t squeeze_channels);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, C, H, W)

  torch::nn::Conv2d fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(SqueezeExcitation);

// Mobile inverted bottleneck: expand 1x1 (if the expanded width differs) -> depthwise kxk (carries the
// stride) -> squeeze-excitation -> linear 1x1 projection, children "block.0", "block.1", ...; plus the
// identity shortcut, behind stochastic depth, when stride is 1 and widths match.
class MBConvImpl : public torch::nn::Module {
 public:
  // `cnf` is this block's row, widths already scaled (torchvision's per-block copy of MBConvConfig);
  // `config` gives the BatchNorm settings.
  MBConvImpl(const MBConvConfig& cnf, double stochastic_depth_prob, const EfficientNetConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (N, in, H, W) -> (N, out, H/s, W/s)

  torch::nn::Sequential block{nullptr};
  StochasticDepth stochastic_depth{nullptr};
  bool use_res_connect = false;
};
TORCH_MODULE(MBConv);

// One stage, features.1 .. features.7: MBConv blocks "0", "1", ... in a row. A Sequential, as in
// torchvision; the plain forward lets it sit inside `features` (libtorch cannot nest a bare Sequential).
class StageImpl : public torch::nn::SequentialImpl {
 public:
  torch::Tensor forward(torch::Tensor x) { return torch::nn::SequentialImpl::forward(std::move(x)); }
};
TORCH_MODULE(Stage);

}  // namespace efficientnet

class EfficientNetImpl : public FeaturesClassifierImpl {
 public:
  EfficientNetImpl(const EfficientNetConfig& config, int64_t num_classes);

  const EfficientNetConfig& config() const { return config_; }

 private:
  EfficientNetConfig config_;
};
TORCH_MODULE(EfficientNet);

Backbone efficientnet_b0(int64_t num_classes);

}  // namespace graft
