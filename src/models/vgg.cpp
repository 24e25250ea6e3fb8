// VGG (Simonyan & Zisserman 2014, arXiv:1409.1556), a port of torchvision 0.14
// torchvision/models/vgg.py: make_layers over cfgs "D" and "E", AdaptiveAvgPool2d(7, 7), the classifier
// Linear(25088, 4096)-ReLU-Dropout-Linear(4096, 4096)-ReLU-Dropout-Linear(4096, n), and VGG's init
// (kaiming normal fan_out convs, zero biases, BN 1/0, Linear normal(0, 0.01)).
#include "models/vgg.h"

#include "graft/errors.h"
#include "graft/head.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

constexpr int64_t kHidden = 4096;  // width of the two hidden classifier layers

}  // namespace

std::vector<int64_t> VGGConfig::cfg_d() {
  const int64_t M = kMaxPool;
  return {64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M};
}

std::vector<int64_t> VGGConfig::cfg_e() {
  const int64_t M = kMaxPool;
  return {64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M};
}

VGGImpl::VGGImpl(const VGGConfig& config, int64_t num_classes) : BackboneImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  // ReLUs are not in place (torchvision's are): each features.N is a step whose output callers may keep.
  nn::Sequential layers;
  int64_t in_channels = 3;
  for (int64_t width : config.cfg) {
    if (width == VGGConfig::kMaxPool) {
      layers->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2).stride(2)));
      feature_types_.push_back("MaxPool2d");
      continue;
    }
    layers->push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, width, /*kernel_size=*/3).padding(1)));
    feature_types_.push_back("Conv2d");
    if (config.batch_norm) {
      layers->push_back(nn::BatchNorm2d(width));
      feature_types_.push_back("BatchNorm2d");
    }
    layers->push_back(nn::ReLU());
    feature_types_.push_back("ReLU");
    in_channels = width;
  }
  features = register_module("features", layers);
  avgpool = register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({7, 7})));

  nn::Sequential head(nn::Linear(512 * 7 * 7, kHidden), nn::ReLU(), nn::Dropout(config.dropout),
                      nn::Linear(kHidden, kHidden), nn::ReLU(), nn::Dropout(config.dropout));
  push_last_linear(head, kHidden, num_classes);
  classifier = register_module("classifier", head);
  num_classes_ = num_classes;

  init_torchvision_weights(*this, init_linear_normal);
}

std::vector<ForwardStep> VGGImpl::feature_steps() {
  return sequential_steps(features, "features", feature_types_);  // (N, 3, H, W) -> (N, 512, H/32, W/32)
}

std::vector<ForwardStep> VGGImpl::classifier_steps(bool pre_logits) {
  static const char* const kTypes[] = {"Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout"};
  std::vector<ForwardStep> steps;
  // (N, 512, h, w) -> (N, 512, 7, 7): any input size gives the 25088 inputs classifier.0 expects.
  steps.push_back({"avgpool", "AdaptiveAvgPool2d",
                   [m = avgpool.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (N, 25088)
  std::vector<std::string> types(kTypes, kTypes + 6);
  types.push_back(num_classes_ > 0 ? "Linear" : "Identity");
  auto head = sequential_steps(classifier, "classifier", types, 0,
                               pre_logits ? classifier->size() - 1 : classifier->size());
  steps.insert(steps.end(), head.begin(), head.end());
  return steps;
}

void VGGImpl::replace_classifier(int64_t num_classes) {
  // A Sequential cannot swap one element, so a new one is built around the same classifier.0..5
  // (their weights are kept) and registered under the same name.
  classifier = replace_module("classifier", with_new_last_linear(classifier, kHidden, num_classes,
                                                                 classifier->ptr<nn::LinearImpl>(0)->weight));
  num_classes_ = num_classes;
}

int64_t VGGImpl::classifier_outputs() const {
  return num_classes_ > 0 ? num_classes_ : kHidden;
}

Backbone vgg16(int64_t num_classes) {
  return std::make_shared<VGGImpl>(VGGConfig::vgg16(), num_classes);
}
Backbone vgg16_bn(int64_t num_classes) {
  return std::make_shared<VGGImpl>(VGGConfig::vgg16_bn(), num_classes);
}
Backbone vgg19(int64_t num_classes) {
  return std::make_shared<VGGImpl>(VGGConfig::vgg19(), num_classes);
}
Backbone vgg19_bn(int64_t num_classes) {
  return std::make_shared<VGGImpl>(VGGConfig::vgg19_bn(), num_classes);
}

void register_vgg(std::vector<ModelEntry>& table) {
  const std::string tv = kTorchvisionIn1kWeights;
  auto add_vgg = [&](const std::string& arch, std::function<Backbone(int64_t)> build,
                     const std::string& what) {
    table.push_back({arch,
                     "vgg",
                     what,
                     std::move(build),
                     {torchvision_in1k(
                         "tv_in1k", "torchvision:" + arch + " IMAGENET1K_V1 (convert to safetensors)", tv)}});
  };
  add_vgg("vgg16", vgg16, "VGG-16 (Simonyan & Zisserman 2014), configuration D");
  add_vgg("vgg16_bn", vgg16_bn, "VGG-16 with batch normalisation");
  add_vgg("vgg19", vgg19, "VGG-19, configuration E");
  add_vgg("vgg19_bn", vgg19_bn, "VGG-19 with batch normalisation");
}

}  // namespace graft
