// MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), a port of torchvision 0.14
// torchvision/models/mobilenetv2.py (InvertedResidual, MobileNetV2), ops/misc.py (Conv2dNormActivation)
// and models/_utils.py (_make_divisible), with torchvision's init: kaiming normal fan_out convs,
// BN 1/0, Linear normal(0, 0.01) with zero bias.
#include "models/mobilenet_v2.h"

#include <cmath>

#include "graft/errors.h"
#include "graft/head.h"
#include "layers/conv2d_same.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

}  // namespace

namespace mobilenetv2 {

int64_t make_divisible(double v, int64_t divisor) {
  // Python: max(divisor, int(v + divisor / 2) // divisor * divisor); both operands are >= 0 here.
  int64_t rounded = std::max(divisor, static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (rounded < 0.9 * v) rounded += divisor;
  return rounded;
}

nn::BatchNorm2d batch_norm(int64_t channels, const LayerStyle& style) {
  return nn::BatchNorm2d(nn::BatchNorm2dOptions(channels).eps(style.bn_eps).momentum(style.bn_momentum));
}

Conv2dNormActivationImpl::Conv2dNormActivationImpl(int64_t in_channels, int64_t out_channels,
                                                   int64_t kernel_size, int64_t stride, int64_t groups,
                                                   const LayerStyle& style) {
  // No conv bias: the BatchNorm right after it has one.
  auto options =
      nn::Conv2dOptions(in_channels, out_channels, kernel_size).stride(stride).groups(groups).bias(false);
  if (style.tf_same_padding && stride > 1) {
    // Keras pads (0, 1) for stride 2 on even sizes (ZeroPadding2D + "valid"); symmetric padding would
    // shift every window by a pixel.
    push_back(Conv2dSame(options));
  } else {
    push_back(nn::Conv2d(options.padding((kernel_size - 1) / 2)));
  }
  push_back(batch_norm(out_channels, style));
  push_back(nn::ReLU6(nn::ReLU6Options().inplace(true)));  // overwrites only the BN output it owns
}

InvertedResidualImpl::InvertedResidualImpl(int64_t inp, int64_t oup, int64_t stride, int64_t expand_ratio,
                                           const LayerStyle& style)
    : use_res_connect(stride == 1 && inp == oup) {
  if (stride != 1 && stride != 2) {
    throw Error("InvertedResidual: stride must be 1 or 2, got " + std::to_string(stride));
  }
  const int64_t hidden = inp * expand_ratio;
  nn::Sequential layers;
  // Expand (pw), filter each channel (dw, carries the stride), project back with no activation (pw-linear).
  if (expand_ratio != 1) {
    layers->push_back(
        Conv2dNormActivation(inp, hidden, /*kernel_size=*/1, /*stride=*/1, /*groups=*/1, style));
  }
  layers->push_back(
      Conv2dNormActivation(hidden, hidden, /*kernel_size=*/3, stride, /*groups=*/hidden, style));
  layers->push_back(nn::Conv2d(nn::Conv2dOptions(hidden, oup, /*kernel_size=*/1).bias(false)));
  layers->push_back(batch_norm(oup, style));
  conv = register_module("conv", layers);
}

torch::Tensor InvertedResidualImpl::forward(const torch::Tensor& x) {
  // conv.0 .. conv.(n-3) are Conv2dNormActivations; the last two the projection and its BatchNorm.
  torch::Tensor out = x;
  for (auto it = conv->begin(); it != conv->end() - 2; ++it) out = it->forward(out);
  // Built so in the constructor: the casts cannot fail.
  auto& projection = dynamic_cast<nn::Conv2dImpl&>(*conv->ptr(conv->size() - 2));
  auto& bn = dynamic_cast<nn::BatchNorm2dImpl&>(*conv->ptr(conv->size() - 1));
  out = conv_bn(projection, bn, out);
  return use_res_connect ? x + out : out;
}

}  // namespace mobilenetv2

MobileNetV2Impl::MobileNetV2Impl(const MobileNetV2Config& config, int64_t num_classes)
    : FeaturesClassifierImpl(config.arch), config_(config) {
  using mobilenetv2::make_divisible;
  check_num_classes(config.arch, num_classes);
  if (config.setting.empty()) throw Error(config.arch + ": the inverted residual setting is empty");
  int64_t input_channel = make_divisible(config.input_channel * config.width_mult, config.round_nearest);
  last_channel_ =
      make_divisible(config.last_channel * std::max(1.0, config.width_mult), config.round_nearest);

  const mobilenetv2::LayerStyle style{config.tf_same_padding, config.bn_eps, config.bn_momentum};
  nn::Sequential layers;
  layers->push_back(mobilenetv2::Conv2dNormActivation(3, input_channel, /*kernel_size=*/3, /*stride=*/2,
                                                      /*groups=*/1, style));
  feature_types_.push_back("Conv2dNormActivation");
  for (const auto& stage : config.setting) {
    const int64_t output_channel = make_divisible(stage.channels * config.width_mult, config.round_nearest);
    for (int64_t i = 0; i < stage.repeats; ++i) {
      layers->push_back(mobilenetv2::InvertedResidual(input_channel, output_channel,
                                                      i == 0 ? stage.stride : 1, stage.expand_ratio, style));
      feature_types_.push_back("InvertedResidual");
      input_channel = output_channel;
    }
  }
  layers->push_back(mobilenetv2::Conv2dNormActivation(input_channel, last_channel_, /*kernel_size=*/1,
                                                      /*stride=*/1, /*groups=*/1, style));
  feature_types_.push_back("Conv2dNormActivation");
  finish_layout(layers, config.dropout, num_classes, init_linear_normal, /*reinit_replaced=*/false);
}

Backbone mobilenet_v2(int64_t num_classes) {
  return std::make_shared<MobileNetV2Impl>(MobileNetV2Config::mobilenet_v2(), num_classes);
}

Backbone mobilenet_v2_keras(int64_t num_classes) {
  return std::make_shared<MobileNetV2Impl>(MobileNetV2Config::keras(), num_classes);
}

void register_mobilenet_v2(std::vector<ModelEntry>& table) {
  const std::string tv = kTorchvisionIn1kWeights;
  // nsfwjs' MobileNetV2 is Keras' (TF padding, BN eps 1e-3) with its own 5-class head; torchvision
  // names, loaded through the Keras name map.
  PretrainedCfg nsfwjs = nsfwjs_cfg("mobilenet_v2", 224);
  nsfwjs.build = mobilenet_v2_keras;
  nsfwjs.head = "avg,dense:256:relu,dropout:0.5,dense:128:relu,dropout:0.25,dense:5";
  nsfwjs.description = "nsfwjs 4.4.0 MobileNetV2 (Keras 2.2.4, uint8-quantised TF.js), 5 classes";
  // Keras applications' own ImageNet weights (.h5) load into the same Keras build.
  PretrainedCfg keras;
  keras.tag = "keras";
  keras.source =
      "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
      "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5";
  keras.file_format = "keras-h5";
  keras.mean = {0.5, 0.5, 0.5};  // Keras mobilenet_v2.preprocess_input: x / 127.5 - 1
  keras.std = {0.5, 0.5, 0.5};
  keras.license = "Apache-2.0 (Keras Applications)";
  keras.description = "Keras Applications ImageNet weights, alpha 1.0 (Keras build: TF padding, BN eps 1e-3)";
  keras.build = mobilenet_v2_keras;
  table.push_back(
      {"mobilenet_v2",
       "mobilenet",
       "MobileNetV2 (Sandler et al. 2018), torchvision layout",
       mobilenet_v2,
       {torchvision_in1k("tv_in1k", "torchvision:mobilenet_v2 IMAGENET1K_V1 (convert to safetensors)", tv),
        nsfwjs, keras}});
}

}  // namespace graft
