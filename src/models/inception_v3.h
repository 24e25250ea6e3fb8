// Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2015,
// arXiv:1512.00567), as torchvision 0.14 torchvision/models/inception.py (Inception3, InceptionA..E,
// InceptionAux, BasicConv2d) builds it: same module tree and parameter names ("Conv2d_1a_3x3.conv.weight",
// "Mixed_5b.branch1x1.bn.running_mean", "fc.weight"), so torchvision checkpoints load unchanged.
//
// Keras' InceptionV3 (keras/applications/inception_v3.py) is the same network, branch for branch and in
// the same order, with two differences that InceptionV3Config::keras() switches on: its BatchNormalization
// has scale=False (no gamma), and the 3x3 average pool of the A, C and E blocks is AveragePooling2D
// (padding "same"), which leaves padded cells out of the mean where torchvision's F.avg_pool2d(x, 3, 1, 1)
// counts them. Every stride-2 convolution and pool is "valid" in both, so no TF padding is needed.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include <array>
#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

struct InceptionV3Config {
  std::string arch = "inception_v3";
  // torchvision's InceptionAux under "AuxLogits" (fed by Mixed_6e): only so that checkpoints that carry it
  // (torchvision's IMAGENET1K_V1) load strictly. forward() never runs it; it returns the main logits.
  bool aux_logits = false;
  // Classes of AuxLogits.fc, 1000 (ImageNet) whatever the main head has: graft never runs it, and
  // torchvision's checkpoint must load into a model built for another class count.
  int64_t aux_num_classes = 1000;
  // torchvision's: the model itself turns ImageNet-normalised input (mean 0.485.., std 0.229..) into the
  // (x - 0.5) / 0.5 input that the weights ported from TensorFlow expect. torchvision switches it on
  // whenever it loads IMAGENET1K_V1.
  bool transform_input = false;
  double dropout = 0.5;  // before fc
  // Keras conventions (see the file comment). keras_avg_pool: the A/C/E branch_pool average excludes the
  // padding. bn_scale = false: BatchNorm has no gamma; graft keeps the BN weight fixed at 1 (requires_grad
  // false, BackboneImpl::fix_parameter) so the module tree stays torchvision's.
  bool keras_avg_pool = false;
  bool bn_scale = true;
  double bn_eps = 1e-3;      // torchvision's BasicConv2d and Keras' conv2d_bn agree
  double bn_momentum = 0.1;  // PyTorch convention; Keras' momentum 0.99 is 0.01 here

  static InceptionV3Config inception_v3() { return {}; }
  // What torchvision's IMAGENET1K_V1 state dict needs: AuxLogits present, transform_input on.
  static InceptionV3Config torchvision_pretrained() {
    InceptionV3Config config;
    config.aux_logits = true;
    config.transform_input = true;
    return config;
  }
  static InceptionV3Config keras() {
    InceptionV3Config config;
    config.keras_avg_pool = true;
    config.bn_scale = false;
    config.bn_momentum = 0.01;
    return config;
  }
};

// The blocks have a namespace of their own: GoogLeNet and Inception-v4 define blocks of the same names.
namespace inceptionv3 {

// BatchNorm and pooling conventions of a build: torchvision's (default) or Keras' (InceptionV3Config).
struct LayerStyle {
  bool keras_avg_pool = false;
  double bn_eps = 1e-3;
  double bn_momentum = 0.1;
};

// Conv (no bias) -> BatchNorm2d -> ReLU, children "conv" and "bn" (torchvision's BasicConv2d, Keras'
// conv2d_bn). Kernel and padding are (H, W): the C and E blocks factorise n x n into 1 x n and n x 1.
class BasicConv2dImpl : public torch::nn::Module {
 public:
  BasicConv2dImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel, int64_t stride,
                  std::array<int64_t, 2> padding, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(BasicConv2d);

// 35 x 35 grid (Mixed_5b..5d, Keras mixed0..2): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1, concatenated.
class InceptionAImpl : public torch::nn::Module {
 public:
  InceptionAImpl(int64_t in_channels, int64_t pool_features, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, 224 + pool_features, H, W)

  BasicConv2d branch1x1{nullptr}, branch5x5_1{nullptr}, branch5x5_2{nullptr}, branch3x3dbl_1{nullptr},
      branch3x3dbl_2{nullptr}, branch3x3dbl_3{nullptr}, branch_pool{nullptr};
  bool keras_avg_pool = false;
};
TORCH_MODULE(InceptionA);

// 35 -> 17 grid reduction (Mixed_6a, mixed3): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2.
class InceptionBImpl : public torch::nn::Module {
 public:
  InceptionBImpl(int64_t in_channels, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, 480 + C, (H-3)/2+1, (W-3)/2+1)

  BasicConv2d branch3x3{nullptr}, branch3x3dbl_1{nullptr}, branch3x3dbl_2{nullptr}, branch3x3dbl_3{nullptr};
};
TORCH_MODULE(InceptionB);

// 17 x 17 grid (Mixed_6b..6e, mixed4..7): 7x7 convolutions factorised into 1x7 and 7x1.
class InceptionCImpl : public torch::nn::Module {
 public:
  InceptionCImpl(int64_t in_channels, int64_t channels_7x7, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, 768, H, W)

  BasicConv2d branch1x1{nullptr}, branch7x7_1{nullptr}, branch7x7_2{nullptr}, branch7x7_3{nullptr},
      branch7x7dbl_1{nullptr}, branch7x7dbl_2{nullptr}, branch7x7dbl_3{nullptr}, branch7x7dbl_4{nullptr},
      branch7x7dbl_5{nullptr}, branch_pool{nullptr};
  bool keras_avg_pool = false;
};
TORCH_MODULE(InceptionC);

// 17 -> 8 grid reduction (Mixed_7a, mixed8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2.
class InceptionDImpl : public torch::nn::Module {
 public:
  InceptionDImpl(int64_t in_channels, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, 512 + C, (H-3)/2+1, (W-3)/2+1)

  BasicConv2d branch3x3_1{nullptr}, branch3x3_2{nullptr}, branch7x7x3_1{nullptr}, branch7x7x3_2{nullptr},
      branch7x7x3_3{nullptr}, branch7x7x3_4{nullptr};
};
TORCH_MODULE(InceptionD);

// 8 x 8 grid (Mixed_7b, 7c; mixed9, 10): the 3x3 branches end in parallel 1x3 and 3x1, concatenated.
class InceptionEImpl : public torch::nn::Module {
 public:
  InceptionEImpl(int64_t in_channels, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, C, H, W) -> (N, 2048, H, W)

  BasicConv2d branch1x1{nullptr}, branch3x3_1{nullptr}, branch3x3_2a{nullptr}, branch3x3_2b{nullptr},
      branch3x3dbl_1{nullptr}, branch3x3dbl_2{nullptr}, branch3x3dbl_3a{nullptr}, branch3x3dbl_3b{nullptr},
      branch_pool{nullptr};
  bool keras_avg_pool = false;
};
TORCH_MODULE(InceptionE);

// The auxiliary classifier on Mixed_6e (training-time regulariser in the paper): avgpool 5x5/3, 1x1 conv,
// 5x5 conv, global average, Linear.
class InceptionAuxImpl : public torch::nn::Module {
 public:
  InceptionAuxImpl(int64_t in_channels, int64_t num_classes, const LayerStyle& style);
  torch::Tensor forward(const torch::Tensor& x);  // (N, 768, 17, 17) -> (N, num_classes)

  BasicConv2d conv0{nullptr}, conv1{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(InceptionAux);

}  // namespace inceptionv3

class InceptionV3Impl : public BackboneImpl {
 public:
  InceptionV3Impl(const InceptionV3Config& config, int64_t num_classes);

  int64_t num_features() const override { return 2048; }
  // [transform_input,] Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, maxpool1, Conv2d_3b_1x1, Conv2d_4a_3x3,
  // maxpool2, Mixed_5b .. Mixed_7c: (N, 3, 299, 299) -> (N, 2048, 8, 8).
  std::vector<ForwardStep> feature_steps() override;
  // avgpool (adaptive), dropout, flatten, fc; pre_logits stops before fc.
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "fc"; }

  const InceptionV3Config& config() const { return config_; }

  inceptionv3::BasicConv2d Conv2d_1a_3x3{nullptr}, Conv2d_2a_3x3{nullptr}, Conv2d_2b_3x3{nullptr};
  torch::nn::MaxPool2d maxpool1{nullptr};  // 3x3/2, no padding
  inceptionv3::BasicConv2d Conv2d_3b_1x1{nullptr}, Conv2d_4a_3x3{nullptr};
  torch::nn::MaxPool2d maxpool2{nullptr};
  inceptionv3::InceptionA Mixed_5b{nullptr}, Mixed_5c{nullptr}, Mixed_5d{nullptr};
  inceptionv3::InceptionB Mixed_6a{nullptr};
  inceptionv3::InceptionC Mixed_6b{nullptr}, Mixed_6c{nullptr}, Mixed_6d{nullptr}, Mixed_6e{nullptr};
  inceptionv3::InceptionAux AuxLogits{nullptr};  // only with config.aux_logits
  inceptionv3::InceptionD Mixed_7a{nullptr};
  inceptionv3::InceptionE Mixed_7b{nullptr}, Mixed_7c{nullptr};
  torch::nn::AdaptiveAvgPool2d avgpool{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear fc{nullptr};  // null after reset_classifier(0): "fc" is then an Identity

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  InceptionV3Config config_;
};
TORCH_MODULE(InceptionV3);

Backbone inception_v3(int64_t num_classes);
// With AuxLogits and transform_input, as torchvision loads IMAGENET1K_V1 (the tag inception_v3.tv_in1k).
Backbone inception_v3_torchvision_pretrained(int64_t num_classes);
// The Keras build (InceptionV3Config::keras()), same names: what Keras and TF.js weights need.
Backbone inception_v3_keras(int64_t num_classes);

}  // namespace graft
