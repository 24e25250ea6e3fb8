// Video ResNets (Tran et al. 2018, arXiv:1711.11248), a line-by-line port of torchvision 0.14
// torchvision/models/video/resnet.py: Conv3DSimple, Conv3DNoTemporal, Conv2Plus1D (with its midplanes
// formula), BasicBlock, BasicStem, R2Plus1dStem, VideoResNet._make_layer (get_downsample_stride) and the
// initialisation (kaiming normal fan_out on convolutions, BN weight 1 bias 0, Linear N(0, 0.01) bias 0).
#include "models/video_resnet.h"

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>

#include "graft/head.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

nn::Conv3d conv3d(int64_t in, int64_t out, torch::ExpandingArray<3> kernel, torch::ExpandingArray<3> stride,
                  torch::ExpandingArray<3> padding) {
  return nn::Conv3d(nn::Conv3dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}

// Inside blocks the ReLU is in place, as torchvision's: it only ever overwrites tensors the block owns.
nn::ReLU inplace_relu() {
  return nn::ReLU(nn::ReLUOptions().inplace(true));
}

// Width between the spatial and the temporal convolution of Conv2Plus1D: the one that gives the (2+1)D
// pair about the parameters of a full 3x3x3 convolution. torchvision computes it once per block from the
// block's (inplanes, planes) and gives both of the block's convolutions the same value.
int64_t midplanes(int64_t inplanes, int64_t planes) {
  return (inplanes * planes * 3 * 3 * 3) / (inplanes * 3 * 3 + 3 * planes);
}

// Appends torchvision's conv_builder(in, out, mid, stride) to `seq`: one child, a Conv3d or, for
// Conv2Plus1D, a Sequential (conv 1x3x3, BN, ReLU, conv 3x1x1) whose children are "0", "1", "2", "3".
void push_conv(nn::Sequential& seq, VideoConv kind, int64_t in, int64_t out, int64_t mid, int64_t stride) {
  switch (kind) {
    case VideoConv::k3D:
      seq->push_back(conv3d(in, out, /*kernel=*/3, /*stride=*/stride, /*padding=*/1));
      return;
    case VideoConv::kNoTemporal:
      seq->push_back(
          conv3d(in, out, /*kernel=*/{1, 3, 3}, /*stride=*/{1, stride, stride}, /*padding=*/{0, 1, 1}));
      return;
    case VideoConv::k2Plus1D:
      seq->push_back(video_resnet::Conv2Plus1D(in, out, mid, stride));
      return;
  }
}

// The shortcut projection (torchvision's _make_layer): 1x1x1 conv + BN at the block's stride, which
// leaves time alone where the block's convolution does (get_downsample_stride of Conv3DNoTemporal).
nn::Sequential make_downsample(int64_t inplanes, int64_t planes, VideoConv kind, int64_t stride) {
  if (stride == 1 && inplanes == planes) return nullptr;
  const int64_t time_stride = kind == VideoConv::kNoTemporal ? 1 : stride;
  return nn::Sequential(conv3d(inplanes, planes, /*kernel=*/1, {time_stride, stride, stride}, /*padding=*/0),
                        nn::BatchNorm3d(planes));
}

}  // namespace

namespace video_resnet {

Conv2Plus1DImpl::Conv2Plus1DImpl(int64_t in_planes, int64_t out_planes, int64_t midplanes, int64_t stride) {
  push_back(conv3d(in_planes, midplanes, {1, 3, 3}, {1, stride, stride}, {0, 1, 1}));  // space
  push_back(nn::BatchNorm3d(midplanes));
  push_back(inplace_relu());
  push_back(conv3d(midplanes, out_planes, {3, 1, 1}, {stride, 1, 1}, {1, 0, 0}));  // time
}

BasicBlockImpl::BasicBlockImpl(int64_t inplanes, int64_t planes, VideoConv conv, int64_t stride) {
  const int64_t mid = midplanes(inplanes, planes);
  nn::Sequential first, second;
  push_conv(first, conv, inplanes, planes, mid, stride);
  first->push_back(nn::BatchNorm3d(planes));
  first->push_back(inplace_relu());
  push_conv(second, conv, planes, planes, mid, 1);
  second->push_back(nn::BatchNorm3d(planes));
  conv1 = register_module("conv1", first);
  conv2 = register_module("conv2", second);
  relu = register_module("relu", inplace_relu());
  if (auto shortcut = make_downsample(inplanes, planes, conv, stride)) {
    downsample = register_module("downsample", shortcut);
  }
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  auto out = conv2->forward(conv1->forward(x));  // (N, planes, T/st, H/s, W/s)
  out += downsample ? downsample->forward(x) : x;
  return relu(out);
}

}  // namespace video_resnet

VideoResNetImpl::VideoResNetImpl(const VideoResNetConfig& config, int64_t num_classes)
    : BackboneImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  // The stem's ReLUs are not in place: each is a step of its own, and callers may keep a step's output.
  if (config.r2plus1d_stem) {
    // R2Plus1dStem: the 3x7x7 convolution factored into 1x7x7 (45 channels) and 3x1x1.
    stem = nn::Sequential(conv3d(3, 45, {1, 7, 7}, {1, 2, 2}, {0, 3, 3}), nn::BatchNorm3d(45), nn::ReLU(),
                          conv3d(45, 64, {3, 1, 1}, {1, 1, 1}, {1, 0, 0}), nn::BatchNorm3d(64), nn::ReLU());
  } else {
    stem = nn::Sequential(conv3d(3, 64, {3, 7, 7}, {1, 2, 2}, {1, 3, 3}), nn::BatchNorm3d(64), nn::ReLU());
  }
  register_module("stem", stem);

  int64_t inplanes = 64;
  for (size_t stage = 0; stage < layers.size(); ++stage) {
    const int64_t planes = int64_t{64} << stage;  // 64, 128, 256, 512
    const int64_t stride = stage == 0 ? 1 : 2;
    nn::Sequential layer;
    for (int64_t i = 0; i < config.layers[stage]; ++i) {
      layer->push_back(video_resnet::BasicBlock(inplanes, planes, config.convs[stage], i == 0 ? stride : 1));
      inplanes = planes;
    }
    layers[stage] = register_module("layer" + std::to_string(stage + 1), layer);
  }
  avgpool = register_module("avgpool", nn::AdaptiveAvgPool3d(nn::AdaptiveAvgPool3dOptions({1, 1, 1})));
  if (num_classes > 0) {
    fc = register_module("fc", nn::Linear(num_features(), num_classes));
  } else {
    register_module("fc", nn::Identity());
  }

  torch::NoGradGuard no_grad;
  for (auto& module : modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv3d>()) {
      nn::init::kaiming_normal_(conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = module->as<nn::BatchNorm3d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (fc) init_linear_normal(*fc);
}

std::vector<ForwardStep> VideoResNetImpl::feature_steps() {
  const std::vector<std::string> stem_types =
      config_.r2plus1d_stem
          ? std::vector<std::string>{"Conv3d", "BatchNorm3d", "ReLU", "Conv3d", "BatchNorm3d", "ReLU"}
          : std::vector<std::string>{"Conv3d", "BatchNorm3d", "ReLU"};
  std::vector<ForwardStep> steps = sequential_steps(stem, "stem", stem_types);
  for (size_t stage = 0; stage < layers.size(); ++stage) {
    const auto& layer = layers[stage];
    for (size_t i = 0; i < layer->size(); ++i) {
      steps.push_back({"layer" + std::to_string(stage + 1) + "." + std::to_string(i), "BasicBlock",
                       [m = layer->ptr<video_resnet::BasicBlockImpl>(i)](const torch::Tensor& x) {
                         return m->forward(x);
                       }});
    }
  }
  // (N, 3, T, H, W) -> (N, 512, T', H/16, W/16); T' = T (mc3_18) or T/8 (r3d_18, r2plus1d_18).
  return steps;
}

std::vector<ForwardStep> VideoResNetImpl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  // (N, C, 1, 1, 1)
  steps.push_back({"avgpool", "AdaptiveAvgPool3d",
                   [m = avgpool.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (N, C)
  if (pre_logits) return steps;
  if (fc) {
    steps.push_back({"fc", "Linear", [m = fc.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  } else {
    steps.push_back({"fc", "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

void VideoResNetImpl::replace_classifier(int64_t num_classes) {
  fc = replace_fc(*this, num_features(), num_classes, stem->parameters().front(), /*normal_init=*/true);
}

int64_t VideoResNetImpl::classifier_outputs() const {
  return fc_outputs(fc, num_features());
}

Backbone r3d_18(int64_t num_classes) {
  return std::make_shared<VideoResNetImpl>(VideoResNetConfig::r3d_18(), num_classes);
}
Backbone mc3_18(int64_t num_classes) {
  return std::make_shared<VideoResNetImpl>(VideoResNetConfig::mc3_18(), num_classes);
}
Backbone r2plus1d_18(int64_t num_classes) {
  return std::make_shared<VideoResNetImpl>(VideoResNetConfig::r2plus1d_18(), num_classes);
}

// Video: (N, 3, T, H, W) clips.
void register_video_resnet(std::vector<ModelEntry>& table) {
  const std::string k400 = "torchvision Kinetics-400 weights (16 x 112 x 112 clips)";
  table.push_back({"r3d_18",
                   "video_resnet",
                   "R3D-18 (Tran et al. 2018), 3D ResNet-18 for video, torchvision layout",
                   r3d_18,
                   {torchvision_kinetics400("R3D_18_Weights", k400 + ", acc@1 63.2")}});
  table.push_back({"mc3_18",
                   "video_resnet",
                   "MC3-18 (Tran et al. 2018), 3D convs in layer1 and 2D above, torchvision layout",
                   mc3_18,
                   {torchvision_kinetics400("MC3_18_Weights", k400 + ", acc@1 64.0")}});
  table.push_back({"r2plus1d_18",
                   "video_resnet",
                   "R(2+1)D-18 (Tran et al. 2018), spatial then temporal convs, torchvision layout",
                   r2plus1d_18,
                   {torchvision_kinetics400("R2Plus1D_18_Weights", k400 + ", acc@1 67.5")}});
}

}  // namespace graft
