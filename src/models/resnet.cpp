// ResNet (He et al. 2015, arXiv:1512.03385), a line-by-line port of torchvision 0.14
// torchvision/models/resnet.py: BasicBlock, Bottleneck (v1.5: stride on the 3x3), _make_layer and
// the initialisation (kaiming normal fan_out on convolutions, BN weight 1 bias 0, default Linear).
#include "models/resnet.h"

#include "graft/errors.h"
#include "graft/head.h"
#include "layers/conv_bn.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

nn::Conv2d conv3x3(int64_t in, int64_t out, int64_t stride, bool bias = false) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, /*kernel_size=*/3).stride(stride).padding(1).bias(bias));
}

nn::Conv2d conv1x1(int64_t in, int64_t out, int64_t stride = 1, bool bias = false) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, /*kernel_size=*/1).stride(stride).bias(bias));
}

nn::BatchNorm2d batch_norm(int64_t channels, const ResNetConfig& config) {
  return nn::BatchNorm2d(nn::BatchNorm2dOptions(channels).eps(config.bn_eps).momentum(config.bn_momentum));
}

// The shortcut projection torchvision adds when a block changes stride or width: "downsample.0" (conv)
// and "downsample.1" (BN). Null when the identity shortcut fits.
nn::Sequential make_downsample(int64_t inplanes, int64_t outplanes, int64_t stride,
                               const ResNetConfig& config = {}) {
  if (stride == 1 && inplanes == outplanes) return nullptr;
  return nn::Sequential(conv1x1(inplanes, outplanes, stride, config.conv_bias),
                        batch_norm(outplanes, config));
}

// Blocks use an in-place ReLU as torchvision does: it only ever overwrites tensors the block owns.
nn::ReLU inplace_relu() {
  return nn::ReLU(nn::ReLUOptions().inplace(true));
}

}  // namespace

namespace resnet {

BasicBlockImpl::BasicBlockImpl(int64_t inplanes, int64_t planes, int64_t stride) {
  conv1 = register_module("conv1", conv3x3(inplanes, planes, stride));
  bn1 = register_module("bn1", nn::BatchNorm2d(planes));
  relu = register_module("relu", inplace_relu());
  conv2 = register_module("conv2", conv3x3(planes, planes, 1));
  bn2 = register_module("bn2", nn::BatchNorm2d(planes));
  if (auto shortcut = make_downsample(inplanes, planes, stride)) {
    downsample = register_module("downsample", shortcut);
  }
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto out = relu(conv_bn(*conv1, *bn1, x));
  out = conv_bn(*conv2, *bn2, out);
  out += downsample ? conv_bn_sequential(*downsample, x) : x;
  return relu(out);
}

BottleneckImpl::BottleneckImpl(int64_t inplanes, int64_t planes, int64_t stride, const ResNetConfig& config) {
  const int64_t outplanes = planes * 4;
  const bool bias = config.conv_bias;
  // v1.5 (torchvision) strides the 3x3; v1 (Keras) the first 1x1, which then skips 3 of 4 pixels.
  conv1 = register_module("conv1", conv1x1(inplanes, planes, config.stride_in_1x1 ? stride : 1, bias));
  bn1 = register_module("bn1", batch_norm(planes, config));
  conv2 = register_module("conv2", conv3x3(planes, planes, config.stride_in_1x1 ? 1 : stride, bias));
  bn2 = register_module("bn2", batch_norm(planes, config));
  conv3 = register_module("conv3", conv1x1(planes, outplanes, 1, bias));
  bn3 = register_module("bn3", batch_norm(outplanes, config));
  relu = register_module("relu", inplace_relu());
  if (auto shortcut = make_downsample(inplanes, outplanes, stride, config)) {
    downsample = register_module("downsample", shortcut);
  }
}

torch::Tensor BottleneckImpl::forward(const torch::Tensor& x) {
  auto out = relu(conv_bn(*conv1, *bn1, x));  // (N, planes, H, W)
  out = relu(conv_bn(*conv2, *bn2, out));     // (N, planes, H/s, W/s)
  out = conv_bn(*conv3, *bn3, out);           // (N, 4 * planes, H/s, W/s)
  out += downsample ? conv_bn_sequential(*downsample, x) : x;
  return relu(out);
}

}  // namespace resnet

ResNetImpl::ResNetImpl(const ResNetConfig& config, int64_t num_classes)
    : BackboneImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  conv1 = register_module(
      "conv1",
      nn::Conv2d(nn::Conv2dOptions(3, 64, /*kernel_size=*/7).stride(2).padding(3).bias(config.conv_bias)));
  bn1 = register_module("bn1", batch_norm(64, config));
  relu = register_module("relu", inplace_relu());
  maxpool = register_module("maxpool", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2).padding(1)));

  int64_t inplanes = 64;
  for (size_t stage = 0; stage < layers.size(); ++stage) {
    const int64_t planes = int64_t{64} << stage;  // 64, 128, 256, 512
    const int64_t stride = stage == 0 ? 1 : 2;
    nn::Sequential layer;
    for (int64_t i = 0; i < config.layers[stage]; ++i) {
      const int64_t block_stride = i == 0 ? stride : 1;
      if (config.bottleneck) {
        layer->push_back(resnet::Bottleneck(inplanes, planes, block_stride, config));
      } else {
        layer->push_back(resnet::BasicBlock(inplanes, planes, block_stride));
      }
      inplanes = planes * config.expansion();
    }
    layers[stage] = register_module("layer" + std::to_string(stage + 1), layer);
  }
  avgpool = register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  if (num_classes > 0) {
    fc = register_module("fc", nn::Linear(num_features(), num_classes));
  } else {
    register_module("fc", nn::Identity());
  }

  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
      if (conv->bias.defined()) nn::init::zeros_(conv->bias);  // Keras' build: bias initialiser zeros
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
}

std::vector<ForwardStep> ResNetImpl::feature_steps() {
  std::vector<ForwardStep> steps;
  if (config_.bgr_input) {
    steps.push_back(
        {"bgr", "ChannelFlip", [](const torch::Tensor& x) { return x.flip({1}); }});  // RGB -> BGR
  }
  auto [conv1_step, bn1_step] = conv_bn_steps(conv1.ptr(), bn1.ptr());
  steps.push_back({"conv1", "Conv2d", conv1_step});
  steps.push_back({"bn1", "BatchNorm2d", bn1_step});
  // Not in place: callers may keep each step's output (summary, feature taps).
  steps.push_back({"relu", "ReLU", [](const torch::Tensor& x) { return torch::relu(x); }});
  steps.push_back(
      {"maxpool", "MaxPool2d", [m = maxpool.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  for (size_t stage = 0; stage < layers.size(); ++stage) {
    const auto& layer = layers[stage];
    for (size_t i = 0; i < layer->size(); ++i) {
      const std::string name = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      if (config_.bottleneck) {
        steps.push_back(
            {name, "Bottleneck",
             [m = layer->ptr<resnet::BottleneckImpl>(i)](const torch::Tensor& x) { return m->forward(x); }});
      } else {
        steps.push_back(
            {name, "BasicBlock",
             [m = layer->ptr<resnet::BasicBlockImpl>(i)](const torch::Tensor& x) { return m->forward(x); }});
      }
    }
  }
  return steps;  // (N, 3, H, W) -> (N, 512 * expansion, H/32, W/32)
}

std::vector<ForwardStep> ResNetImpl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"avgpool", "AdaptiveAvgPool2d",
                   [m = avgpool.ptr()](const torch::Tensor& x) { return m->forward(x); }});  // (N, C, 1, 1)
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (N, C)
  if (pre_logits) return steps;
  if (fc) {
    steps.push_back({"fc", "Linear", [m = fc.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  } else {
    steps.push_back({"fc", "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

void ResNetImpl::replace_classifier(int64_t num_classes) {
  fc = replace_fc(*this, num_features(), num_classes, conv1->weight, /*normal_init=*/false);
}

int64_t ResNetImpl::classifier_outputs() const {
  return fc_outputs(fc, num_features());
}

Backbone resnet18(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet18(), num_classes);
}
Backbone resnet34(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet34(), num_classes);
}
Backbone resnet50(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet50(), num_classes);
}
Backbone resnet101(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet101(), num_classes);
}
Backbone resnet152(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet152(), num_classes);
}
Backbone resnet50_keras(int64_t num_classes) {
  return std::make_shared<ResNetImpl>(ResNetConfig::resnet50_keras(), num_classes);
}

void register_resnet(std::vector<ModelEntry>& table) {
  const std::string tv = kTorchvisionIn1kWeights;
  // torchvision's IMAGENET1K_V2 recipe evaluates at 232 -> 224.
  PretrainedCfg v2 = torchvision_in1k("tv2_in1k", "hf-hub:timm/resnet50.tv2_in1k", tv + " (V2 recipe)");
  v2.crop_pct = 224.0 / 232.0;
  // Keras applications' ResNet50 ("v1"; keras/applications/resnet.py): its own build, torchvision names.
  PretrainedCfg keras;
  keras.tag = "keras";
  keras.source =
      "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
      "resnet50_weights_tf_dim_ordering_tf_kernels.h5";
  keras.file_format = "keras-h5";
  // 'caffe' preprocessing: BGR (the model flips the channels itself), ImageNet means subtracted from
  // 0..255 pixels, no scaling. On graft's [0, 1] pixels: mean / 255 and std 1 / 255.
  keras.mean = {123.68 / 255, 116.779 / 255, 103.939 / 255};
  keras.std = {1.0 / 255, 1.0 / 255, 1.0 / 255};
  keras.license = "MIT (Keras Applications; weights from Kaiming He's release)";
  keras.description = "Keras Applications ImageNet ResNet50 (v1: stride on the 1x1, biased convolutions)";
  keras.build = resnet50_keras;
  // Every ResNet has torchvision's V1 weights as its default tag; `more_tags` follow it.
  auto add_resnet = [&](const std::string& arch, std::function<Backbone(int64_t)> build,
                        const std::string& what, const std::vector<PretrainedCfg>& more_tags = {}) {
    std::vector<PretrainedCfg> tags{
        torchvision_in1k("tv_in1k", "hf-hub:timm/" + arch + ".tv_in1k", tv + " (V1)")};
    tags.insert(tags.end(), more_tags.begin(), more_tags.end());
    table.push_back({arch, "resnet", what, std::move(build), std::move(tags)});
  };
  add_resnet("resnet18", resnet18, "ResNet-18 (He et al. 2015), torchvision layout");
  add_resnet("resnet34", resnet34, "ResNet-34, torchvision layout");
  add_resnet("resnet50", resnet50, "ResNet-50 v1.5 (stride on the 3x3 conv), torchvision layout",
             {v2, keras});
  add_resnet("resnet101", resnet101, "ResNet-101 v1.5, torchvision layout");
  add_resnet("resnet152", resnet152, "ResNet-152 v1.5, torchvision layout");
}

}  // namespace graft
