// VGG-16 and VGG-19, with and without BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks
// for Large-Scale Image Recognition", 2014), as torchvision 0.14 torchvision/models/vgg.py builds them:
// "features.N" layers from a cfg table, AdaptiveAvgPool2d(7, 7), and the 3-Linear "classifier.N".
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/pooling.h>

#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

struct VGGConfig {
  std::string arch;          // e.g. "vgg16_bn"
  std::vector<int64_t> cfg;  // conv widths in order; kMaxPool marks a 2x2 max pool (torchvision's "M")
  bool batch_norm = false;   // Conv-BN-ReLU instead of Conv-ReLU
  double dropout = 0.5;      // in the classifier

  static constexpr int64_t kMaxPool = 0;

  static VGGConfig vgg16() { return {"vgg16", cfg_d(), false}; }
  static VGGConfig vgg16_bn() { return {"vgg16_bn", cfg_d(), true}; }
  static VGGConfig vgg19() { return {"vgg19", cfg_e(), false}; }
  static VGGConfig vgg19_bn() { return {"vgg19_bn", cfg_e(), true}; }
  // torchvision's cfgs["D"] (16 weight layers) and cfgs["E"] (19).
  static std::vector<int64_t> cfg_d();
  static std::vector<int64_t> cfg_e();
};

class VGGImpl : public BackboneImpl {
 public:
  VGGImpl(const VGGConfig& config, int64_t num_classes);

  int64_t num_features() const override { return 512; }
  std::vector<ForwardStep> feature_steps() override;
  // avgpool, flatten, classifier.0 .. classifier.6; pre_logits stops at classifier.5 (4096 wide).
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "classifier"; }

  const VGGConfig& config() const { return config_; }

  torch::nn::Sequential features{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Sequential classifier{nullptr};

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  VGGConfig config_;
  std::vector<std::string> feature_types_;  // layer type of features.N, for the summary
  int64_t num_classes_ = 0;                 // 0: classifier.6 is an Identity
};
TORCH_MODULE(VGG);

Backbone vgg16(int64_t num_classes);
Backbone vgg16_bn(int64_t num_classes);
Backbone vgg19(int64_t num_classes);
Backbone vgg19_bn(int64_t num_classes);

}  // namespace graft
