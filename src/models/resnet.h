// ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image Recognition", 2015), with the
// stride of Bottleneck on the 3x3 convolution ("ResNet v1.5"), exactly as torchvision 0.14
// torchvision/models/resnet.py builds it: same module tree, same parameter and buffer names
// ("layer1.0.downsample.1.running_mean", "fc.weight"), so torchvision checkpoints load unchanged.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include <array>
#include <string>

#include "graft/model.h"

namespace graft {

// Which residual block and how many of them per stage; everything else is fixed by the paper.
struct ResNetConfig {
  std::string arch;                 // e.g. "resnet50"
  bool bottleneck = false;          // Bottleneck (1x1-3x3-1x1, expansion 4) or BasicBlock (3x3-3x3)
  std::array<int64_t, 4> layers{};  // blocks in layer1..layer4, e.g. {3, 4, 6, 3}

  // Keras' ResNet50 (keras/applications/resnet.py, "v1"): the stride sits on the first 1x1 convolution,
  // every convolution has a bias, BatchNorm eps is 1.001e-5 (momentum 0.99, i.e. 0.01 here), and the
  // weights were trained on BGR input ('caffe' preprocessing), so the first step reverses the channels.
  // Names stay torchvision's; the Keras name map (keras_convert.cpp) renames.
  bool stride_in_1x1 = false;
  bool conv_bias = false;
  double bn_eps = 1e-5;
  double bn_momentum = 0.1;
  bool bgr_input = false;

  int64_t expansion() const { return bottleneck ? 4 : 1; }

  static ResNetConfig resnet18() { return {"resnet18", false, {2, 2, 2, 2}}; }
  static ResNetConfig resnet34() { return {"resnet34", false, {3, 4, 6, 3}}; }
  static ResNetConfig resnet50() { return {"resnet50", true, {3, 4, 6, 3}}; }
  static ResNetConfig resnet101() { return {"resnet101", true, {3, 4, 23, 3}}; }
  static ResNetConfig resnet152() { return {"resnet152", true, {3, 8, 36, 3}}; }
  static ResNetConfig resnet50_keras() {
    ResNetConfig config = resnet50();
    config.stride_in_1x1 = true;
    config.conv_bias = true;
    config.bn_eps = 1.001e-5;
    config.bn_momentum = 0.01;
    config.bgr_input = true;
    return config;
  }
};

// The blocks have a namespace of their own: video ResNets and others define blocks of the same names.
namespace resnet {

// Two 3x3 convolutions plus the shortcut (ResNet-18/34). `downsample` exists only where the shortcut
// changes stride or width, as in torchvision, so its names appear only in those blocks.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);  // (N, inplanes, H, W) -> (N, planes, H/s, W/s)

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};  // conv1x1 + BN, or absent
};
TORCH_MODULE(BasicBlock);

// 1x1 reduce, 3x3 (carries the stride; the 1x1 does in Keras' v1), 1x1 expand x4, plus the shortcut
// (ResNet-50/101/152). `config` supplies the v1 / Keras switches.
class BottleneckImpl : public torch::nn::Module {
 public:
  BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, const ResNetConfig& config = {});
  torch::Tensor forward(const torch::Tensor& x);  // (N, inplanes, H, W) -> (N, 4 * planes, H/s, W/s)

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

}  // namespace resnet

class ResNetImpl : public BackboneImpl {
 public:
  ResNetImpl(const ResNetConfig& config, int64_t num_classes);

  int64_t num_features() const override { return 512 * config_.expansion(); }
  std::vector<ForwardStep> feature_steps() override;
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "fc"; }

  const ResNetConfig& config() const { return config_; }

  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::MaxPool2d maxpool{nullptr};
  std::array<torch::nn::Sequential, 4> layers{nullptr, nullptr, nullptr, nullptr};  // "layer1".."layer4"
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Linear fc{nullptr};  // null after reset_classifier(0): "fc" is then an Identity

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  ResNetConfig config_;
};
TORCH_MODULE(ResNet);

Backbone resnet18(int64_t num_classes);
Backbone resnet34(int64_t num_classes);
Backbone resnet50(int64_t num_classes);
Backbone resnet101(int64_t num_classes);
Backbone resnet152(int64_t num_classes);
Backbone resnet50_keras(int64_t num_classes);  // ResNetConfig::resnet50_keras(), for Keras weights

}  // namespace graft
