// MobileNet v1 (arXiv:1704.04861), a port of Keras 2.8 keras/applications/mobilenet.py (MobileNet,
// _conv_block, _depthwise_conv_block) with Keras' layer names and TF padding; see mobilenet_v1.h.
// Initialisation follows Keras' defaults: glorot_uniform kernels, zero bias, BatchNorm 1/0.
#include "models/mobilenet_v1.h"

#include <torch/nn/functional/padding.h>

#include <cmath>

#include "graft/errors.h"
#include "graft/head.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

// Keras: filters = int(filters * alpha), truncation toward zero.
int64_t scaled(int64_t filters, double alpha) {
  return static_cast<int64_t>(static_cast<double>(filters) * alpha);
}

}  // namespace

MobileNetV1Config MobileNetV1Config::mobilenet_v1(double alpha) {
  const int hundredths = static_cast<int>(std::lround(alpha * 100));
  if (hundredths != 25 && hundredths != 50 && hundredths != 75 && hundredths != 100) {
    throw Error(
        "mobilenet_v1: alpha must be 0.25, 0.5, 0.75 or 1.0 (the widths with ImageNet weights), got " +
        std::to_string(alpha));
  }
  MobileNetV1Config config;
  config.alpha = hundredths / 100.0;
  config.arch = std::string("mobilenet_v1_") + (hundredths < 100 ? "0" : "") + std::to_string(hundredths);
  return config;
}

MobileNetV1Impl::MobileNetV1Impl(const MobileNetV1Config& config, int64_t num_classes)
    : BackboneImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  if (config.depth_multiplier < 1) throw Error(config.arch + ": depth_multiplier must be >= 1");
  const auto batch_norm = [&](int64_t channels) {
    return nn::BatchNorm2d(nn::BatchNorm2dOptions(channels).eps(config.bn_eps).momentum(config.bn_momentum));
  };
  int64_t channels = scaled(config.stem_filters, config.alpha);
  conv1 = register_module(
      "conv1", Conv2dSame(nn::Conv2dOptions(3, channels, /*kernel_size=*/3).stride(2).bias(false)));
  conv1_bn = register_module("conv1_bn", batch_norm(channels));
  for (size_t i = 0; i < config.blocks.size(); ++i) {
    const DepthwiseBlockSetting& block = config.blocks[i];
    if (block.stride != 1 && block.stride != 2) {
      throw Error(config.arch + ": block " + std::to_string(i + 1) + " has stride " +
                  std::to_string(block.stride) + "; Keras' MobileNet uses 1 or 2");
    }
    const std::string id = std::to_string(i + 1);
    const int64_t depthwise = channels * config.depth_multiplier;
    // Stride 1: "same" for a 3x3 window is one cell each side. Stride 2: conv_pad_i pads, the conv is
    // "valid".
    conv_dw.push_back(register_module("conv_dw_" + id, nn::Conv2d(nn::Conv2dOptions(channels, depthwise, 3)
                                                                      .stride(block.stride)
                                                                      .padding(block.stride == 1 ? 1 : 0)
                                                                      .groups(channels)
                                                                      .bias(false))));
    conv_dw_bn.push_back(register_module("conv_dw_" + id + "_bn", batch_norm(depthwise)));
    const int64_t pointwise = scaled(block.filters, config.alpha);
    conv_pw.push_back(
        register_module("conv_pw_" + id, nn::Conv2d(nn::Conv2dOptions(depthwise, pointwise, 1).bias(false))));
    conv_pw_bn.push_back(register_module("conv_pw_" + id + "_bn", batch_norm(pointwise)));
    channels = pointwise;
  }
  num_features_ = channels;
  dropout = register_module("dropout", nn::Dropout(config.dropout));
  if (num_classes > 0) {
    conv_preds = register_module("conv_preds", make_conv_classifier(num_features_, num_classes));
  } else {
    register_module("conv_preds", nn::Identity());
  }
  init_conv_xavier(*conv1);
  for (auto& conv : conv_dw) init_conv_xavier(*conv);
  for (auto& conv : conv_pw) init_conv_xavier(*conv);
}

std::vector<ForwardStep> MobileNetV1Impl::feature_steps() {
  std::vector<ForwardStep> steps;
  const auto relu6 = [](const torch::Tensor& x) { return torch::clamp(x, 0.0, 6.0); };
  steps.push_back(
      {"conv1", "Conv2dSame", [m = conv1.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  steps.push_back(
      {"conv1_bn", "BatchNorm2d", [m = conv1_bn.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  steps.push_back({"conv1_relu", "ReLU6", relu6});  // (N, 32a, H/2, W/2)
  for (size_t i = 0; i < conv_dw.size(); ++i) {
    const std::string id = std::to_string(i + 1);
    if (config_.blocks[i].stride == 2) {
      // ZeroPadding2D(((0, 1), (0, 1))): one row at the bottom, one column at the right.
      steps.push_back({"conv_pad_" + id, "ZeroPad2d", [](const torch::Tensor& x) {
                         return F::pad(x, F::PadFuncOptions({0, 1, 0, 1}));
                       }});
    }
    steps.push_back({"conv_dw_" + id, "DepthwiseConv2d",
                     [m = conv_dw[i].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"conv_dw_" + id + "_bn", "BatchNorm2d",
                     [m = conv_dw_bn[i].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"conv_dw_" + id + "_relu", "ReLU6", relu6});
    steps.push_back({"conv_pw_" + id, "Conv2d",
                     [m = conv_pw[i].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"conv_pw_" + id + "_bn", "BatchNorm2d",
                     [m = conv_pw_bn[i].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"conv_pw_" + id + "_relu", "ReLU6", relu6});
  }
  return steps;  // (N, 3, H, W) -> (N, 1024a, H/32, W/32)
}

std::vector<ForwardStep> MobileNetV1Impl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"global_average_pooling2d", "GlobalAvgPool2d", [](const torch::Tensor& x) {
                     return x.mean({2, 3});
                   }});  // (N, C)
  steps.push_back(
      {"dropout", "Dropout", [m = dropout.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  if (pre_logits) return steps;
  if (conv_preds) {
    steps.push_back({"conv_preds", "Conv2d", [m = conv_preds.ptr()](const torch::Tensor& x) {
                       // Keras keeps the pooled map (N, 1, 1, C); conv_preds then reshape_2 give (N,
                       // classes).
                       return m->forward(x.view({x.size(0), x.size(1), 1, 1})).flatten(1);
                     }});
  } else {
    steps.push_back({"conv_preds", "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

void MobileNetV1Impl::replace_classifier(int64_t num_classes) {
  conv_preds = replace_last_layer<nn::Conv2d>(*this, "conv_preds", num_classes, conv1->weight, [&] {
    return make_conv_classifier(num_features_, num_classes);
  });
}

int64_t MobileNetV1Impl::classifier_outputs() const {
  return conv_preds ? conv_preds->options.out_channels() : num_features_;
}

Backbone mobilenet_v1_025(int64_t num_classes) {
  return std::make_shared<MobileNetV1Impl>(MobileNetV1Config::mobilenet_v1(0.25), num_classes);
}
Backbone mobilenet_v1_050(int64_t num_classes) {
  return std::make_shared<MobileNetV1Impl>(MobileNetV1Config::mobilenet_v1(0.5), num_classes);
}
Backbone mobilenet_v1_075(int64_t num_classes) {
  return std::make_shared<MobileNetV1Impl>(MobileNetV1Config::mobilenet_v1(0.75), num_classes);
}
Backbone mobilenet_v1_100(int64_t num_classes) {
  return std::make_shared<MobileNetV1Impl>(MobileNetV1Config::mobilenet_v1(1.0), num_classes);
}

void register_mobilenet_v1(std::vector<ModelEntry>& table) {
  auto add_mobilenet_v1 = [&](const std::string& arch, const std::string& alpha, const std::string& file,
                              std::function<Backbone(int64_t)> build) {
    PretrainedCfg keras;
    keras.tag = "keras";
    keras.source = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/" + file;
    keras.file_format = "keras-h5";
    keras.mean = {0.5, 0.5, 0.5};  // Keras mobilenet.preprocess_input: x / 127.5 - 1
    keras.std = {0.5, 0.5, 0.5};
    keras.crop_pct = 1.0;
    keras.license = "Apache-2.0 (Keras Applications)";
    keras.description = "Keras Applications ImageNet weights, alpha " + alpha;
    table.push_back({arch,
                     "mobilenet",
                     "MobileNet v1 (Howard et al. 2017), alpha " + alpha + ", Keras layout",
                     std::move(build),
                     {keras}});
  };
  add_mobilenet_v1("mobilenet_v1_025", "0.25", "mobilenet_2_5_224_tf.h5", mobilenet_v1_025);
  add_mobilenet_v1("mobilenet_v1_050", "0.5", "mobilenet_5_0_224_tf.h5", mobilenet_v1_050);
  add_mobilenet_v1("mobilenet_v1_075", "0.75", "mobilenet_7_5_224_tf.h5", mobilenet_v1_075);
  add_mobilenet_v1("mobilenet_v1_100", "1.0", "mobilenet_1_0_224_tf.h5", mobilenet_v1_100);
}

}  // namespace graft
