// Tiny Darknet as ml5's TF.js layers model (see darknet.h). Initialisation follows Keras' defaults
// (glorot_uniform kernels, zero bias, BatchNorm 1/0), since the reference weights were trained in darknet
// and only the layer structure comes from Keras.
#include "models/darknet.h"

#include "graft/errors.h"
#include "graft/head.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

}  // namespace

DarknetConfig DarknetConfig::darknet_tiny() {
  using K = DarknetLayer::Kind;
  DarknetConfig config;
  // clang-format off
  config.layers = {
      {K::kConv, 16, 3},  {K::kMaxPool},
      {K::kConv, 32, 3},  {K::kMaxPool},
      {K::kConv, 16, 1},  {K::kConv, 128, 3}, {K::kConv, 16, 1}, {K::kConv, 128, 3}, {K::kMaxPool},
      {K::kConv, 32, 1},  {K::kConv, 256, 3}, {K::kConv, 32, 1}, {K::kConv, 256, 3}, {K::kMaxPool},
      {K::kConv, 64, 1},  {K::kConv, 512, 3}, {K::kConv, 64, 1}, {K::kConv, 512, 3}, {K::kConv, 128, 1},
  };
  // clang-format on
  return config;
}

DarknetImpl::DarknetImpl(const DarknetConfig& config, int64_t num_classes)
    : BackboneImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  int64_t channels = 3;
  for (const DarknetLayer& layer : config.layers) {
    if (layer.kind != DarknetLayer::Kind::kConv) continue;
    const std::string index = std::to_string(convs.size() + 1);
    convs.push_back(register_module(
        "conv2d_" + index, Conv2dSame(nn::Conv2dOptions(channels, layer.filters, layer.kernel).bias(false))));
    norms.push_back(register_module(
        "batch_normalization_" + index,
        nn::BatchNorm2d(
            nn::BatchNorm2dOptions(layer.filters).eps(config.bn_eps).momentum(config.bn_momentum))));
    channels = layer.filters;
  }
  if (convs.empty()) throw Error(config.arch + ": the layer table has no convolution");
  num_features_ = channels;
  classifier_name_ = "conv2d_" + std::to_string(convs.size() + 1);
  if (num_classes > 0) {
    classifier = register_module(classifier_name_, make_conv_classifier(num_features_, num_classes));
  } else {
    register_module(classifier_name_, nn::Identity());
  }
  for (auto& conv : convs) init_conv_xavier(*conv);
}

std::vector<ForwardStep> DarknetImpl::feature_steps() {
  std::vector<ForwardStep> steps;
  size_t conv = 0, pool = 0;
  const double slope = config_.leaky_slope;
  for (const DarknetLayer& layer : config_.layers) {
    if (layer.kind == DarknetLayer::Kind::kMaxPool) {
      ++pool;
      steps.push_back({"max_pooling2d_" + std::to_string(pool), "MaxPool2d", [](const torch::Tensor& x) {
                         return max_pool2d_same(x, {2, 2}, {2, 2});
                       }});  // (N, C, H/2, W/2)
      continue;
    }
    const std::string index = std::to_string(conv + 1);
    steps.push_back({"conv2d_" + index, "Conv2dSame",
                     [m = convs[conv].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"batch_normalization_" + index, "BatchNorm2d",
                     [m = norms[conv].ptr()](const torch::Tensor& x) { return m->forward(x); }});
    steps.push_back({"leaky_re_lu_" + index, "LeakyReLU",
                     [slope](const torch::Tensor& x) { return torch::leaky_relu(x, slope); }});
    ++conv;
  }
  return steps;  // (N, 3, H, W) -> (N, 128, H/16, W/16)
}

std::vector<ForwardStep> DarknetImpl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"global_average_pooling2d_1", "GlobalAvgPool2d", [](const torch::Tensor& x) {
                     return x.mean({2, 3});
                   }});  // (N, 128)
  if (pre_logits) return steps;
  if (classifier) {
    steps.push_back({classifier_name_, "Conv2d", [m = classifier.ptr()](const torch::Tensor& x) {
                       // A 1x1 conv on the pooled vector: (N, 128) -> (N, 128, 1, 1) -> (N, classes).
                       return m->forward(x.view({x.size(0), x.size(1), 1, 1})).flatten(1);
                     }});
  } else {
    steps.push_back({classifier_name_, "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

void DarknetImpl::replace_classifier(int64_t num_classes) {
  classifier =
      replace_last_layer<nn::Conv2d>(*this, classifier_name_, num_classes, convs.front()->weight,
                                     [&] { return make_conv_classifier(num_features_, num_classes); });
}

int64_t DarknetImpl::classifier_outputs() const {
  return classifier ? classifier->options.out_channels() : num_features_;
}

Backbone darknet_tiny(int64_t num_classes) {
  return std::make_shared<DarknetImpl>(DarknetConfig::darknet_tiny(), num_classes);
}

void register_darknet(std::vector<ModelEntry>& table) {
  PretrainedCfg ml5;
  ml5.tag = "ml5";
  ml5.source = "ml5: github.com/ml5js/ml5-data-and-models models/darknetclassifier/darknettiny/model.json";
  ml5.file_format = "tfjs-layers";
  ml5.mean = {0.0, 0.0, 0.0};  // ml5 feeds pixel / 255, no normalisation
  ml5.std = {1.0, 1.0, 1.0};
  ml5.crop_pct = 1.0;                  // the whole image, resized (bilinear, align_corners=true) to 224
  ml5.labels = "imagenet-1k-darknet";  // darknet's own class order (kit fox, English setter, ...)
  ml5.license = "MIT (ml5)";
  ml5.description = "ml5 Tiny Darknet ImageNet classifier (TF.js layers model; outputs logits)";
  table.push_back(
      {"darknet_tiny", "darknet", "Tiny Darknet (darknet tiny.cfg), ml5 TF.js layout", darknet_tiny, {ml5}});
}

}  // namespace graft
