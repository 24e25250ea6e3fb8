// EfficientNet (Tan & Le 2019, arXiv:1905.11946), a port of torchvision 0.14
// torchvision/models/efficientnet.py (MBConvConfig, MBConv, EfficientNet, _efficientnet_conf), ops/misc.py
// (Conv2dNormActivation, SqueezeExcitation), ops/stochastic_depth.py and models/_utils.py
// (_make_divisible), with torchvision's init: kaiming normal fan_out convs with zero bias, BN 1/0,
// Linear uniform(-1/sqrt(out), 1/sqrt(out)) with zero bias.
#include "models/efficientnet.h"

#include <algorithm>
#include <cmath>

#include "graft/errors.h"
#include "graft/head.h"
#include "models/common.h"
#include "models/mobilenet_v2.h"  // make_divisible: torchvision's _make_divisible, shared by both
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

// torchvision's EfficientNet init of its Linear layers (not MobileNetV2's normal(0, 0.01)).
void init_linear_uniform(nn::LinearImpl& linear) {
  torch::NoGradGuard no_grad;
  const double range = 1.0 / std::sqrt(static_cast<double>(linear.options.out_features()));
  nn::init::uniform_(linear.weight, -range, range);
  nn::init::zeros_(linear.bias);
}

}  // namespace

int64_t EfficientNetConfig::scaled_channels(int64_t channels) const {
  return mobilenetv2::make_divisible(channels * width_mult, 8);
}

int64_t EfficientNetConfig::scaled_depth(int64_t num_layers) const {
  return static_cast<int64_t>(std::ceil(num_layers * depth_mult));
}

EfficientNetConfig EfficientNetConfig::scaled(const std::string& arch, double width_mult, double depth_mult,
                                              double dropout, double bn_eps, double bn_momentum) {
  EfficientNetConfig config;
  config.arch = arch;
  config.width_mult = width_mult;
  config.depth_mult = depth_mult;
  config.dropout = dropout;
  config.bn_eps = bn_eps;
  config.bn_momentum = bn_momentum;
  return config;
}

namespace efficientnet {

Conv2dNormActivationImpl::Conv2dNormActivationImpl(int64_t in_channels, int64_t out_channels,
                                                   int64_t kernel_size, int64_t stride, int64_t groups,
                                                   bool activation, const EfficientNetConfig& config) {
  // No conv bias: the BatchNorm right after it has one.
  push_back(nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, kernel_size)
                           .stride(stride)
                           .padding((kernel_size - 1) / 2)
                           .groups(groups)
                           .bias(false)));
  push_back(
      nn::BatchNorm2d(nn::BatchNorm2dOptions(out_channels).eps(config.bn_eps).momentum(config.bn_momentum)));
  if (activation) push_back(nn::SiLU());
}

SqueezeExcitationImpl::SqueezeExcitationImpl(int64_t input_channels, int64_t squeeze_channels) {
  fc1 = register_module("fc1", nn::Conv2d(nn::Conv2dOptions(input_channels, squeeze_channels, 1)));
  fc2 = register_module("fc2", nn::Conv2d(nn::Conv2dOptions(squeeze_channels, input_channels, 1)));
}

torch::Tensor SqueezeExcitationImpl::forward(const torch::Tensor& x) {
  torch::Tensor scale = torch::adaptive_avg_pool2d(x, {1, 1});  // (N, C, 1, 1)
  scale = torch::sigmoid(fc2->forward(torch::silu(fc1->forward(scale))));
  return scale * x;
}

MBConvImpl::MBConvImpl(const MBConvConfig& cnf, double stochastic_depth_prob,
                       const EfficientNetConfig& config)
    : use_res_connect(cnf.stride == 1 && cnf.input_channels == cnf.out_channels) {
  if (cnf.stride != 1 && cnf.stride != 2) {
    throw Error(config.arch + ": MBConv stride must be 1 or 2, got " + std::to_string(cnf.stride));
  }
  const int64_t expanded = mobilenetv2::make_divisible(cnf.input_channels * cnf.expand_ratio, 8);
  nn::Sequential layers;
  // With expand_ratio 1 the widths agree and torchvision builds no expand layer, so the depthwise conv is
  // block.0 there (features.1.0.block.0) and block.1 everywhere else.
  if (expanded != cnf.input_channels) {
    layers->push_back(Conv2dNormActivation(cnf.input_channels, expanded, /*kernel_size=*/1, /*stride=*/1,
                                           /*groups=*/1, /*activation=*/true, config));
  }
  layers->push_back(Conv2dNormActivation(expanded, expanded, cnf.kernel, cnf.stride, /*groups=*/expanded,
                                         /*activation=*/true, config));
  // The squeeze width follows the block's input, not its expanded width (the paper's se_ratio 0.25).
  layers->push_back(SqueezeExcitation(expanded, std::max<int64_t>(1, cnf.input_channels / 4)));
  // Linear projection: no activation after the BN (the "linear bottleneck").
  layers->push_back(Conv2dNormActivation(expanded, cnf.out_channels, /*kernel_size=*/1, /*stride=*/1,
                                         /*groups=*/1, /*activation=*/false, config));
  block = register_module("block", layers);
  stochastic_depth =
      register_module("stochastic_depth", StochasticDepth(stochastic_depth_prob, StochasticDepthMode::kRow));
}

torch::Tensor MBConvImpl::forward(const torch::Tensor& x) {
  torch::Tensor result = block->forward(x);
  if (use_res_connect) result = stochastic_depth->forward(result) + x;
  return result;
}

}  // namespace efficientnet

EfficientNetImpl::EfficientNetImpl(const EfficientNetConfig& config, int64_t num_classes)
    : FeaturesClassifierImpl(config.arch), config_(config) {
  check_num_classes(config.arch, num_classes);
  if (config.stages.empty()) {
    throw Error(config.arch + ": the stage table (EfficientNetConfig::stages) is empty");
  }
  std::vector<MBConvConfig> stages;
  int64_t total_blocks = 0;
  for (const auto& stage : config.stages) {
    stages.push_back({stage.expand_ratio, stage.kernel, stage.stride,
                      config.scaled_channels(stage.input_channels),
                      config.scaled_channels(stage.out_channels), config.scaled_depth(stage.num_layers)});
    total_blocks += stages.back().num_layers;
  }

  nn::Sequential layers;
  layers->push_back(efficientnet::Conv2dNormActivation(3, stages.front().input_channels, /*kernel_size=*/3,
                                                       /*stride=*/2, /*groups=*/1, /*activation=*/true,
                                                       config));
  feature_types_.push_back("Conv2dNormActivation");
  int64_t block_id = 0;
  for (const auto& stage : stages) {
    efficientnet::Stage blocks;
    for (int64_t i = 0; i < stage.num_layers; ++i) {
      MBConvConfig cnf = stage;
      if (i > 0) {  // only the first block of a stage changes width and resolution
        cnf.input_channels = cnf.out_channels;
        cnf.stride = 1;
      }
      // Deeper blocks are dropped more often: 0 for the first, approaching stochastic_depth_prob at the end.
      const double sd_prob = config.stochastic_depth_prob * static_cast<double>(block_id) / total_blocks;
      blocks->push_back(efficientnet::MBConv(cnf, sd_prob, config));
      ++block_id;
    }
    layers->push_back(blocks);
    feature_types_.push_back("MBConv x" + std::to_string(stage.num_layers));
  }
  last_channel_ = 4 * stages.back().out_channels;
  layers->push_back(
      efficientnet::Conv2dNormActivation(stages.back().out_channels, last_channel_, /*kernel_size=*/1,
                                         /*stride=*/1, /*groups=*/1, /*activation=*/true, config));
  feature_types_.push_back("Conv2dNormActivation");
  // torchvision initialises EfficientNet's Linear layers uniformly (not MobileNetV2's N(0, 0.01)), a new
  // classifier too.
  finish_layout(layers, config.dropout, num_classes, init_linear_uniform, /*reinit_replaced=*/true);
}

Backbone efficientnet_b0(int64_t num_classes) {
  return std::make_shared<EfficientNetImpl>(EfficientNetConfig::efficientnet_b0(), num_classes);
}

void register_efficientnet(std::vector<ModelEntry>& table) {
  const std::string tv = kTorchvisionIn1kWeights;
  // torchvision's names; timm's efficientnet_b0 is another module tree (conv_stem, blocks.N.M, conv_head).
  // torchvision evaluates these weights at resize 256 (bicubic), centre crop 224.
  PretrainedCfg b0 =
      torchvision_in1k("tv_in1k", "torchvision:efficientnet_b0 IMAGENET1K_V1 (convert to safetensors)",
                       tv + " (ported from timm)");
  b0.interpolation = "bicubic";
  b0.crop_pct = 224.0 / 256.0;
  table.push_back({"efficientnet_b0",
                   "efficientnet",
                   "EfficientNet-B0 (Tan & Le 2019), torchvision layout",
                   efficientnet_b0,
                   {b0}});
}

}  // namespace graft
