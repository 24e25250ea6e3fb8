// Tiny Darknet (Redmon, darknet cfg/tiny.cfg, "Tiny Darknet" ImageNet classifier), exactly as ml5's
// TF.js layers model holds it (ml5-data-and-models models/darknetclassifier/darknettiny/model.json,
// Keras 2.1.6 topology): 15 x [Conv2D (no bias, "same") -> BatchNormalization (eps 1e-3) -> LeakyReLU
// (0.1)] with 4 MaxPooling2D (2x2/2, "same"), then the classifier conv2d_16 (1x1, 128 -> 1000, bias) and a
// global average pool. Module names are the Keras layer names ("conv2d_1", "batch_normalization_1"), so
// the Keras name map is the identity on layers.
//
// The model's output is logits (ml5 applies the softmax outside the model). graft pools before
// conv2d_16 rather than after it: the head is linear, so the result is the same up to rounding, and
// pre-logits are then the pooled 128-vector that transfer learning wants.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

#include <string>
#include <vector>

#include "graft/model.h"
#include "layers/conv2d_same.h"

namespace graft {

// One row of the layer table: a conv block (Conv2D + BN + LeakyReLU) or a 2x2/2 max pool.
struct DarknetLayer {
  enum class Kind { kConv, kMaxPool } kind;
  int64_t filters = 0;  // conv output channels
  int64_t kernel = 0;   // conv kernel size (1 or 3)
};

struct DarknetConfig {
  std::string arch = "darknet_tiny";
  std::vector<DarknetLayer> layers;  // the feature extractor, in order
  double leaky_slope = 0.1;          // LeakyReLU alpha
  double bn_eps = 1e-3;              // Keras' BatchNormalization default
  double bn_momentum = 0.01;         // PyTorch convention: Keras' momentum 0.99

  static DarknetConfig darknet_tiny();
};

class DarknetImpl : public BackboneImpl {
 public:
  DarknetImpl(const DarknetConfig& config, int64_t num_classes);

  int64_t num_features() const override { return num_features_; }
  // conv2d_i, batch_normalization_i, leaky_re_lu_i and max_pooling2d_j, as the Keras layers are named.
  std::vector<ForwardStep> feature_steps() override;
  // global_average_pooling2d_1, then conv2d_16 (a 1x1 conv on the pooled vector); pre_logits stops
  // after the pooling.
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return classifier_name_; }

  const DarknetConfig& config() const { return config_; }

  std::vector<Conv2dSame> convs;              // conv2d_1 .. conv2d_15
  std::vector<torch::nn::BatchNorm2d> norms;  // batch_normalization_1 .. 15
  torch::nn::Conv2d classifier{nullptr};      // conv2d_16; null when reset to 0 classes

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  DarknetConfig config_;
  std::string classifier_name_;  // "conv2d_16"
  int64_t num_features_ = 0;
};
TORCH_MODULE(Darknet);

Backbone darknet_tiny(int64_t num_classes);

}  // namespace graft
