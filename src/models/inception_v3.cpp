// Inception-v3 (Szegedy et al. 2015, arXiv:1512.00567), a port of torchvision 0.14
// torchvision/models/inception.py (Inception3, InceptionA..E, InceptionAux, BasicConv2d) with torchvision's
// init (init_weights=True: truncated normal std 0.1, 0.01 for AuxLogits.conv1, 0.001 for AuxLogits.fc;
// BN 1/0), and the Keras variant of keras/applications/inception_v3.py (Keras 2.2.4: conv2d_bn with
// BatchNormalization(scale=False), AveragePooling2D((3, 3), strides=(1, 1), padding="same")).
#include "models/inception_v3.h"

#include "graft/head.h"
#include "layers/conv2d_same.h"
#include "layers/conv_bn.h"
#include "models/common.h"
#include "models/model_table.h"

namespace graft {
namespace {

namespace nn = torch::nn;

// torchvision's trunc_normal_(std=stddev, a=-2, b=2): the bounds are absolute, 20 to 2000 standard
// deviations out for the stddevs used here, so the truncation only guards against the impossible.
void init_truncated_normal(torch::Tensor& weight, double stddev) {
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, stddev).clamp_(-2.0, 2.0);
}

}  // namespace

namespace inceptionv3 {

namespace {

// The 3x3 stride-1 average of the A, C and E blocks' branch_pool. torchvision: F.avg_pool2d(x, 3, 1, 1),
// padded zeros counted (divide by 9 everywhere); Keras AveragePooling2D(padding="same"): padding excluded
// (divide by 4 in a corner, 6 on an edge).
torch::Tensor branch_pool_average(const torch::Tensor& x, bool keras) {
  if (keras) return avg_pool2d_same(x, {3, 3}, {1, 1});
  return torch::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1});
}

// A BasicConv2d (Keras' conv2d_bn). A function, since ModuleHolder's forwarding constructor cannot take
// the braced (H, W) pairs.
BasicConv2d conv_bn(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel, int64_t stride,
                    std::array<int64_t, 2> padding, const LayerStyle& style) {
  return BasicConv2d(in_channels, out_channels, kernel, stride, padding, style);
}

}  // namespace

BasicConv2dImpl::BasicConv2dImpl(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel,
                                 int64_t stride, std::array<int64_t, 2> padding, const LayerStyle& style) {
  // No conv bias: the BatchNorm right after it has one.
  conv =
      register_module("conv", nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, {kernel[0], kernel[1]})
                                             .stride(stride)
                                             .padding({padding[0], padding[1]})
                                             .bias(false)));
  bn = register_module(
      "bn",
      nn::BatchNorm2d(nn::BatchNorm2dOptions(out_channels).eps(style.bn_eps).momentum(style.bn_momentum)));
}

torch::Tensor BasicConv2dImpl::forward(const torch::Tensor& x) {
  // Not in place: the input of a block feeds several branches.
  return torch::relu(graft::conv_bn(*conv, *bn, x));
}

InceptionAImpl::InceptionAImpl(int64_t in_channels, int64_t pool_features, const LayerStyle& style)
    : keras_avg_pool(style.keras_avg_pool) {
  branch1x1 = register_module("branch1x1", conv_bn(in_channels, 64, {1, 1}, 1, {0, 0}, style));
  branch5x5_1 = register_module("branch5x5_1", conv_bn(in_channels, 48, {1, 1}, 1, {0, 0}, style));
  branch5x5_2 = register_module("branch5x5_2", conv_bn(48, 64, {5, 5}, 1, {2, 2}, style));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", conv_bn(in_channels, 64, {1, 1}, 1, {0, 0}, style));
  branch3x3dbl_2 = register_module("branch3x3dbl_2", conv_bn(64, 96, {3, 3}, 1, {1, 1}, style));
  branch3x3dbl_3 = register_module("branch3x3dbl_3", conv_bn(96, 96, {3, 3}, 1, {1, 1}, style));
  branch_pool = register_module("branch_pool", conv_bn(in_channels, pool_features, {1, 1}, 1, {0, 0}, style));
}

torch::Tensor InceptionAImpl::forward(const torch::Tensor& x) {
  return torch::cat({branch1x1->forward(x),                                                         // 64
                     branch5x5_2->forward(branch5x5_1->forward(x)),                                 // 64
                     branch3x3dbl_3->forward(branch3x3dbl_2->forward(branch3x3dbl_1->forward(x))),  // 96
                     branch_pool->forward(branch_pool_average(x, keras_avg_pool))},  // pool_features
                    1);
}

InceptionBImpl::InceptionBImpl(int64_t in_channels, const LayerStyle& style) {
  branch3x3 = register_module("branch3x3", conv_bn(in_channels, 384, {3, 3}, 2, {0, 0}, style));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", conv_bn(in_channels, 64, {1, 1}, 1, {0, 0}, style));
  branch3x3dbl_2 = register_module("branch3x3dbl_2", conv_bn(64, 96, {3, 3}, 1, {1, 1}, style));
  branch3x3dbl_3 = register_module("branch3x3dbl_3", conv_bn(96, 96, {3, 3}, 2, {0, 0}, style));
}

torch::Tensor InceptionBImpl::forward(const torch::Tensor& x) {
  return torch::cat({branch3x3->forward(x),                                                         // 384
                     branch3x3dbl_3->forward(branch3x3dbl_2->forward(branch3x3dbl_1->forward(x))),  // 96
                     torch::max_pool2d(x, {3, 3}, {2, 2})},                                         // C
                    1);
}

InceptionCImpl::InceptionCImpl(int64_t in_channels, int64_t c7, const LayerStyle& style)
    : keras_avg_pool(style.keras_avg_pool) {
  branch1x1 = register_module("branch1x1", conv_bn(in_channels, 192, {1, 1}, 1, {0, 0}, style));
  branch7x7_1 = register_module("branch7x7_1", conv_bn(in_channels, c7, {1, 1}, 1, {0, 0}, style));
  branch7x7_2 = register_module("branch7x7_2", conv_bn(c7, c7, {1, 7}, 1, {0, 3}, style));
  branch7x7_3 = register_module("branch7x7_3", conv_bn(c7, 192, {7, 1}, 1, {3, 0}, style));
  branch7x7dbl_1 = register_module("branch7x7dbl_1", conv_bn(in_channels, c7, {1, 1}, 1, {0, 0}, style));
  branch7x7dbl_2 = register_module("branch7x7dbl_2", conv_bn(c7, c7, {7, 1}, 1, {3, 0}, style));
  branch7x7dbl_3 = register_module("branch7x7dbl_3", conv_bn(c7, c7, {1, 7}, 1, {0, 3}, style));
  branch7x7dbl_4 = register_module("branch7x7dbl_4", conv_bn(c7, c7, {7, 1}, 1, {3, 0}, style));
  branch7x7dbl_5 = register_module("branch7x7dbl_5", conv_bn(c7, 192, {1, 7}, 1, {0, 3}, style));
  branch_pool = register_module("branch_pool", conv_bn(in_channels, 192, {1, 1}, 1, {0, 0}, style));
}

torch::Tensor InceptionCImpl::forward(const torch::Tensor& x) {
  torch::Tensor dbl = branch7x7dbl_2->forward(branch7x7dbl_1->forward(x));
  dbl = branch7x7dbl_5->forward(branch7x7dbl_4->forward(branch7x7dbl_3->forward(dbl)));
  return torch::cat({branch1x1->forward(x),                                                // 192
                     branch7x7_3->forward(branch7x7_2->forward(branch7x7_1->forward(x))),  // 192
                     dbl,                                                                  // 192
                     branch_pool->forward(branch_pool_average(x, keras_avg_pool))},        // 192
                    1);
}

InceptionDImpl::InceptionDImpl(int64_t in_channels, const LayerStyle& style) {
  branch3x3_1 = register_module("branch3x3_1", conv_bn(in_channels, 192, {1, 1}, 1, {0, 0}, style));
  branch3x3_2 = register_module("branch3x3_2", conv_bn(192, 320, {3, 3}, 2, {0, 0}, style));
  branch7x7x3_1 = register_module("branch7x7x3_1", conv_bn(in_channels, 192, {1, 1}, 1, {0, 0}, style));
  branch7x7x3_2 = register_module("branch7x7x3_2", conv_bn(192, 192, {1, 7}, 1, {0, 3}, style));
  branch7x7x3_3 = register_module("branch7x7x3_3", conv_bn(192, 192, {7, 1}, 1, {3, 0}, style));
  branch7x7x3_4 = register_module("branch7x7x3_4", conv_bn(192, 192, {3, 3}, 2, {0, 0}, style));
}

torch::Tensor InceptionDImpl::forward(const torch::Tensor& x) {
  torch::Tensor b7 = branch7x7x3_2->forward(branch7x7x3_1->forward(x));
  b7 = branch7x7x3_4->forward(branch7x7x3_3->forward(b7));
  return torch::cat({branch3x3_2->forward(branch3x3_1->forward(x)),  // 320
                     b7,                                             // 192
                     torch::max_pool2d(x, {3, 3}, {2, 2})},          // C
                    1);
}

InceptionEImpl::InceptionEImpl(int64_t in_channels, const LayerStyle& style)
    : keras_avg_pool(style.keras_avg_pool) {
  branch1x1 = register_module("branch1x1", conv_bn(in_channels, 320, {1, 1}, 1, {0, 0}, style));
  branch3x3_1 = register_module("branch3x3_1", conv_bn(in_channels, 384, {1, 1}, 1, {0, 0}, style));
  branch3x3_2a = register_module("branch3x3_2a", conv_bn(384, 384, {1, 3}, 1, {0, 1}, style));
  branch3x3_2b = register_module("branch3x3_2b", conv_bn(384, 384, {3, 1}, 1, {1, 0}, style));
  branch3x3dbl_1 = register_module("branch3x3dbl_1", conv_bn(in_channels, 448, {1, 1}, 1, {0, 0}, style));
  branch3x3dbl_2 = register_module("branch3x3dbl_2", conv_bn(448, 384, {3, 3}, 1, {1, 1}, style));
  branch3x3dbl_3a = register_module("branch3x3dbl_3a", conv_bn(384, 384, {1, 3}, 1, {0, 1}, style));
  branch3x3dbl_3b = register_module("branch3x3dbl_3b", conv_bn(384, 384, {3, 1}, 1, {1, 0}, style));
  branch_pool = register_module("branch_pool", conv_bn(in_channels, 192, {1, 1}, 1, {0, 0}, style));
}

torch::Tensor InceptionEImpl::forward(const torch::Tensor& x) {
  const torch::Tensor b3 = branch3x3_1->forward(x);
  const torch::Tensor dbl = branch3x3dbl_2->forward(branch3x3dbl_1->forward(x));
  return torch::cat({branch1x1->forward(x),                                          // 320
                     branch3x3_2a->forward(b3), branch3x3_2b->forward(b3),           // 384 + 384
                     branch3x3dbl_3a->forward(dbl), branch3x3dbl_3b->forward(dbl),   // 384 + 384
                     branch_pool->forward(branch_pool_average(x, keras_avg_pool))},  // 192
                    1);
}

InceptionAuxImpl::InceptionAuxImpl(int64_t in_channels, int64_t num_classes, const LayerStyle& style) {
  conv0 = register_module("conv0", conv_bn(in_channels, 128, {1, 1}, 1, {0, 0}, style));
  conv1 = register_module("conv1", conv_bn(128, 768, {5, 5}, 1, {0, 0}, style));
  fc = register_module("fc", nn::Linear(768, num_classes));
}

torch::Tensor InceptionAuxImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::avg_pool2d(x, {5, 5}, {3, 3});                // (N, 768, 5, 5)
  y = conv1->forward(conv0->forward(y));                                 // (N, 768, 1, 1)
  return fc->forward(torch::adaptive_avg_pool2d(y, {1, 1}).flatten(1));  // (N, num_classes)
}

}  // namespace inceptionv3

InceptionV3Impl::InceptionV3Impl(const InceptionV3Config& config, int64_t num_classes)
    : BackboneImpl(config.arch), config_(config) {
  using inceptionv3::conv_bn;
  check_num_classes(config.arch, num_classes);
  const inceptionv3::LayerStyle style{config.keras_avg_pool, config.bn_eps, config.bn_momentum};

  // Registered in torchvision's order, so parameters and the state dict list as torchvision's do.
  Conv2d_1a_3x3 = register_module("Conv2d_1a_3x3", conv_bn(3, 32, {3, 3}, 2, {0, 0}, style));
  Conv2d_2a_3x3 = register_module("Conv2d_2a_3x3", conv_bn(32, 32, {3, 3}, 1, {0, 0}, style));
  Conv2d_2b_3x3 = register_module("Conv2d_2b_3x3", conv_bn(32, 64, {3, 3}, 1, {1, 1}, style));
  maxpool1 = register_module("maxpool1", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2)));
  Conv2d_3b_1x1 = register_module("Conv2d_3b_1x1", conv_bn(64, 80, {1, 1}, 1, {0, 0}, style));
  Conv2d_4a_3x3 = register_module("Conv2d_4a_3x3", conv_bn(80, 192, {3, 3}, 1, {0, 0}, style));
  maxpool2 = register_module("maxpool2", nn::MaxPool2d(nn::MaxPool2dOptions(3).stride(2)));
  Mixed_5b = register_module("Mixed_5b", inceptionv3::InceptionA(192, /*pool_features=*/32, style));
  Mixed_5c = register_module("Mixed_5c", inceptionv3::InceptionA(256, /*pool_features=*/64, style));
  Mixed_5d = register_module("Mixed_5d", inceptionv3::InceptionA(288, /*pool_features=*/64, style));
  Mixed_6a = register_module("Mixed_6a", inceptionv3::InceptionB(288, style));
  Mixed_6b = register_module("Mixed_6b", inceptionv3::InceptionC(768, /*channels_7x7=*/128, style));
  Mixed_6c = register_module("Mixed_6c", inceptionv3::InceptionC(768, /*channels_7x7=*/160, style));
  Mixed_6d = register_module("Mixed_6d", inceptionv3::InceptionC(768, /*channels_7x7=*/160, style));
  Mixed_6e = register_module("Mixed_6e", inceptionv3::InceptionC(768, /*channels_7x7=*/192, style));
  if (config.aux_logits) {
    AuxLogits = register_module("AuxLogits", inceptionv3::InceptionAux(768, config.aux_num_classes, style));
  }
  Mixed_7a = register_module("Mixed_7a", inceptionv3::InceptionD(768, style));
  Mixed_7b = register_module("Mixed_7b", inceptionv3::InceptionE(1280, style));
  Mixed_7c = register_module("Mixed_7c", inceptionv3::InceptionE(2048, style));
  avgpool = register_module("avgpool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions({1, 1})));
  dropout = register_module("dropout", nn::Dropout(config.dropout));
  if (num_classes > 0) {
    fc = register_module("fc", nn::Linear(num_features(), num_classes));
  } else {
    register_module("fc", nn::Identity());
  }

  torch::NoGradGuard no_grad;
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    if (auto* conv = item.value()->as<nn::Conv2d>()) {
      init_truncated_normal(conv->weight, name == "AuxLogits.conv1.conv" ? 0.01 : 0.1);
    } else if (auto* linear = item.value()->as<nn::Linear>()) {
      init_truncated_normal(linear->weight, name == "AuxLogits.fc" ? 0.001 : 0.1);  // bias: Linear's default
    } else if (auto* bn = item.value()->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
      // Keras' scale=False: gamma is the constant 1, not a weight.
      if (!config.bn_scale) fix_parameter(name + ".weight");
    }
  }
}

std::vector<ForwardStep> InceptionV3Impl::feature_steps() {
  std::vector<ForwardStep> steps;
  if (config_.transform_input) {
    // torchvision's _transform_input: ImageNet mean/std normalisation -> (x - 0.5) / 0.5, per channel.
    steps.push_back({"transform_input", "TransformInput", [](const torch::Tensor& x) {
                       const auto scale = torch::tensor({0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5}, x.options());
                       const auto shift = torch::tensor(
                           {(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5}, x.options());
                       return x * scale.view({1, 3, 1, 1}) + shift.view({1, 3, 1, 1});
                     }});
  }
  auto add = [&steps](const std::string& name, const std::string& type, auto module) {
    steps.push_back({name, type, [module](const torch::Tensor& x) { return module->forward(x); }});
  };
  add("Conv2d_1a_3x3", "BasicConv2d", Conv2d_1a_3x3.ptr());  // (N, 32, 149, 149) at 299 px
  add("Conv2d_2a_3x3", "BasicConv2d", Conv2d_2a_3x3.ptr());  // (N, 32, 147, 147)
  add("Conv2d_2b_3x3", "BasicConv2d", Conv2d_2b_3x3.ptr());  // (N, 64, 147, 147)
  add("maxpool1", "MaxPool2d", maxpool1.ptr());              // (N, 64, 73, 73)
  add("Conv2d_3b_1x1", "BasicConv2d", Conv2d_3b_1x1.ptr());  // (N, 80, 73, 73)
  add("Conv2d_4a_3x3", "BasicConv2d", Conv2d_4a_3x3.ptr());  // (N, 192, 71, 71)
  add("maxpool2", "MaxPool2d", maxpool2.ptr());              // (N, 192, 35, 35)
  add("Mixed_5b", "InceptionA", Mixed_5b.ptr());             // (N, 256, 35, 35)
  add("Mixed_5c", "InceptionA", Mixed_5c.ptr());             // (N, 288, 35, 35)
  add("Mixed_5d", "InceptionA", Mixed_5d.ptr());             // (N, 288, 35, 35)
  add("Mixed_6a", "InceptionB", Mixed_6a.ptr());             // (N, 768, 17, 17)
  add("Mixed_6b", "InceptionC", Mixed_6b.ptr());             // (N, 768, 17, 17)
  add("Mixed_6c", "InceptionC", Mixed_6c.ptr());
  add("Mixed_6d", "InceptionC", Mixed_6d.ptr());
  add("Mixed_6e", "InceptionC", Mixed_6e.ptr());
  add("Mixed_7a", "InceptionD", Mixed_7a.ptr());  // (N, 1280, 8, 8)
  add("Mixed_7b", "InceptionE", Mixed_7b.ptr());  // (N, 2048, 8, 8)
  add("Mixed_7c", "InceptionE", Mixed_7c.ptr());  // (N, 2048, 8, 8)
  return steps;
}

std::vector<ForwardStep> InceptionV3Impl::classifier_steps(bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"avgpool", "AdaptiveAvgPool2d", [m = avgpool.ptr()](const torch::Tensor& x) {
                     return m->forward(x);
                   }});  // (N, 2048, 1, 1)
  steps.push_back(
      {"dropout", "Dropout", [m = dropout.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (N, 2048)
  if (pre_logits) return steps;
  if (fc) {
    steps.push_back({"fc", "Linear", [m = fc.ptr()](const torch::Tensor& x) { return m->forward(x); }});
  } else {
    steps.push_back({"fc", "Identity", [](const torch::Tensor& x) { return x; }});
  }
  return steps;
}

void InceptionV3Impl::replace_classifier(int64_t num_classes) {
  fc = replace_fc(*this, num_features(), num_classes, Conv2d_1a_3x3->conv->weight, /*normal_init=*/true);
}

int64_t InceptionV3Impl::classifier_outputs() const {
  return fc_outputs(fc, num_features());
}

Backbone inception_v3(int64_t num_classes) {
  return std::make_shared<InceptionV3Impl>(InceptionV3Config::inception_v3(), num_classes);
}

Backbone inception_v3_torchvision_pretrained(int64_t num_classes) {
  return std::make_shared<InceptionV3Impl>(InceptionV3Config::torchvision_pretrained(), num_classes);
}

Backbone inception_v3_keras(int64_t num_classes) {
  return std::make_shared<InceptionV3Impl>(InceptionV3Config::keras(), num_classes);
}

void register_inception_v3(std::vector<ModelEntry>& table) {
  const std::string tv = kTorchvisionIn1kWeights;
  // torchvision's IMAGENET1K_V1 (ported from TensorFlow): resize 342, centre crop 299, bilinear. Its state
  // dict carries AuxLogits.* and the weights expect transform_input, so the tag builds both
  // (inception_v3_torchvision_pretrained) and the file loads strictly. It is the default tag, so
  // create_model("inception_v3") builds them too; the builder inception_v3() has neither, as
  // torchvision's inception_v3(weights=None, aux_logits=False).
  PretrainedCfg tv_in1k = torchvision_in1k(
      "tv_in1k", "torchvision:inception_v3 IMAGENET1K_V1 (convert to safetensors; has AuxLogits.*)", tv);
  tv_in1k.input_size = {3, 299, 299};
  tv_in1k.crop_pct = 299.0 / 342.0;
  tv_in1k.build = inception_v3_torchvision_pretrained;
  // nsfwjs' InceptionV3 is Keras' (BatchNorm without gamma, average pools that exclude padding) with its
  // own 5-class head; torchvision names, loaded through the Keras name map.
  PretrainedCfg nsfwjs = nsfwjs_cfg("inception_v3", 299);
  nsfwjs.build = inception_v3_keras;
  nsfwjs.head = "avg,dense:256:relu,dropout:0.5,dense:128:relu,dropout:0.25,dense:5";
  nsfwjs.description = "nsfwjs 4.4.0 InceptionV3 (Keras 2.2.4, uint8-quantised TF.js), 5 classes";
  const std::string what = "Inception-v3 (Szegedy et al. 2015), torchvision layout";
  table.push_back({"inception_v3", "inception", what, inception_v3, {tv_in1k, nsfwjs}});
}

}  // namespace graft
