// Video ResNets R3D-18, MC3-18 and R(2+1)D-18 (Tran et al., "A Closer Look at Spatiotemporal
// Convolutions for Action Recognition", CVPR 2018), exactly as torchvision 0.14
// torchvision/models/video/resnet.py builds them: same module tree, same parameter and buffer names
// ("stem.0.weight", "layer2.0.conv1.0.3.weight", "layer2.0.downsample.1.running_var", "fc.bias"), so
// torchvision's Kinetics-400 checkpoints load unchanged. Input is a clip (N, 3, T, H, W).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include <array>
#include <string>

#include "graft/model.h"

namespace graft {

// How a residual block convolves space and time (torchvision's conv_makers).
enum class VideoConv {
  k3D,          // Conv3DSimple: one 3x3x3 convolution; strides time and space
  kNoTemporal,  // Conv3DNoTemporal: a 1x3x3 convolution; strides space only
  k2Plus1D,     // Conv2Plus1D: 1x3x3 spatial -> BN -> ReLU -> 3x1x1 temporal, `midplanes` between them
};

// The stem and the convolution of each stage; every variant has BasicBlocks, two per stage.
struct VideoResNetConfig {
  std::string arch;                  // e.g. "r2plus1d_18"
  bool r2plus1d_stem = false;        // R2Plus1dStem (1x7x7 then 3x1x1 conv) or BasicStem (one 3x7x7 conv)
  std::array<VideoConv, 4> convs{};  // conv builder of layer1..layer4
  std::array<int64_t, 4> layers{2, 2, 2, 2};  // BasicBlocks in layer1..layer4

  static VideoResNetConfig r3d_18() {
    return {"r3d_18", false, {VideoConv::k3D, VideoConv::k3D, VideoConv::k3D, VideoConv::k3D}};
  }
  // Mixed convolutions: 3D in layer1 only, 2D ("no temporal") above.
  static VideoResNetConfig mc3_18() {
    return {"mc3_18",
            false,
            {VideoConv::k3D, VideoConv::kNoTemporal, VideoConv::kNoTemporal, VideoConv::kNoTemporal}};
  }
  static VideoResNetConfig r2plus1d_18() {
    return {"r2plus1d_18",
            true,
            {VideoConv::k2Plus1D, VideoConv::k2Plus1D, VideoConv::k2Plus1D, VideoConv::k2Plus1D}};
  }
};

namespace video_resnet {

// torchvision's Conv2Plus1D: 1x3x3 conv (stride (1, s, s)) -> BatchNorm3d -> ReLU -> 3x1x1 conv (stride
// (s, 1, 1)), children "0", "1", "2", "3": a Sequential, as torchvision's is. The plain forward lets it sit
// inside another Sequential (a block's conv1 = (Conv2Plus1D, BN, ReLU)).
class Conv2Plus1DImpl : public torch::nn::SequentialImpl {
 public:
  Conv2Plus1DImpl(int64_t in_planes, int64_t out_planes, int64_t midplanes, int64_t stride);
  torch::Tensor forward(torch::Tensor x) { return torch::nn::SequentialImpl::forward(std::move(x)); }
};
TORCH_MODULE(Conv2Plus1D);

// torchvision's video BasicBlock: conv1 = (conv, BN, ReLU) and conv2 = (conv, BN) as Sequentials, so
// their weights are "conv1.0.weight" and "conv1.1.weight" (R(2+1)D: "conv1.0.0.weight", "conv1.0.3.weight").
// `downsample` (1x1x1 conv + BN) exists only where the shortcut changes stride or width.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t inplanes, int64_t planes, VideoConv conv, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);  // (N, inplanes, T, H, W) -> (N, planes, T/st, H/s, W/s)

  torch::nn::Sequential conv1{nullptr}, conv2{nullptr};
  torch::nn::ReLU relu{nullptr};
  torch::nn::Sequential downsample{nullptr};  // or absent
};
TORCH_MODULE(BasicBlock);

}  // namespace video_resnet

class VideoResNetImpl : public BackboneImpl {
 public:
  VideoResNetImpl(const VideoResNetConfig& config, int64_t num_classes);

  int64_t num_features() const override { return 512; }
  std::vector<ForwardStep> feature_steps() override;
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override;
  std::string classifier_name() const override { return "fc"; }

  const VideoResNetConfig& config() const { return config_; }

  torch::nn::Sequential stem{nullptr};  // conv, BN, ReLU (R(2+1)D: twice)
  std::array<torch::nn::Sequential, 4> layers{nullptr, nullptr, nullptr, nullptr};  // "layer1".."layer4"
  torch::nn::AdaptiveAvgPool3d avgpool{nullptr};
  torch::nn::Linear fc{nullptr};  // null after reset_classifier(0): "fc" is then an Identity

 protected:
  void replace_classifier(int64_t num_classes) override;
  int64_t classifier_outputs() const override;

 private:
  VideoResNetConfig config_;
};
TORCH_MODULE(VideoResNet);

Backbone r3d_18(int64_t num_classes);
Backbone mc3_18(int64_t num_classes);
Backbone r2plus1d_18(int64_t num_classes);

}  // namespace graft
