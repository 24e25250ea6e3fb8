// Shared pieces of the architecture files (see common.h).
#include "models/common.h"

#include "graft/errors.h"

namespace graft {

namespace nn = torch::nn;

void check_num_classes(const std::string& where, int64_t num_classes) {
  if (num_classes < 0) {
    throw Error(where +
                ": the number of classes must be >= 0 (0 removes the classifier and the model returns "
                "pre-logits), got " +
                std::to_string(num_classes));
  }
}

std::vector<ForwardStep> sequential_steps(const nn::Sequential& seq, const std::string& prefix,
                                          const std::vector<std::string>& types, size_t begin, size_t end) {
  std::vector<ForwardStep> steps;
  end = std::min(end, seq->size());
  for (size_t i = begin; i < end; ++i) {
    steps.push_back({prefix + "." + std::to_string(i), i < types.size() ? types[i] : "Module",
                     [m = *(seq->begin() + i)](const torch::Tensor& x) mutable { return m.forward(x); }});
  }
  return steps;
}

void init_linear_normal(nn::LinearImpl& linear) {
  torch::NoGradGuard no_grad;
  nn::init::normal_(linear.weight, /*mean=*/0, /*std=*/0.01);
  nn::init::zeros_(linear.bias);
}

void init_hf_weights(nn::Module& root, double std) {
  torch::NoGradGuard no_grad;
  // modules(include_self) needs the root in a shared_ptr, which it is not yet inside a constructor.
  std::vector<nn::Module*> all{&root};
  for (auto& child : root.modules(/*include_self=*/false)) all.push_back(child.get());
  for (nn::Module* module : all) {
    if (auto* linear = module->as<nn::Linear>()) {
      linear->weight.normal_(0, std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = module->as<nn::Embedding>()) {
      embedding->weight.normal_(0, std);
      if (auto pad = embedding->options.padding_idx()) embedding->weight[*pad].zero_();
    } else if (auto* norm = module->as<nn::LayerNorm>()) {
      norm->weight.fill_(1);
      norm->bias.zero_();
    }
  }
}

void init_conv_xavier(nn::Conv2dImpl& conv) {
  torch::NoGradGuard no_grad;
  nn::init::xavier_uniform_(conv.weight);
  if (conv.bias.defined()) nn::init::zeros_(conv.bias);
}

nn::Conv2d make_conv_classifier(int64_t in_channels, int64_t num_classes) {
  nn::Conv2d conv(nn::Conv2dOptions(in_channels, num_classes, /*kernel_size=*/1).bias(true));
  init_conv_xavier(*conv);
  return conv;
}

nn::Linear replace_fc(nn::Module& model, int64_t in_features, int64_t num_classes, const torch::Tensor& like,
                      bool normal_init) {
  return replace_last_layer<nn::Linear>(model, "fc", num_classes, like, [&] {
    nn::Linear layer(in_features, num_classes);
    if (normal_init) init_linear_normal(*layer);
    return layer;
  });
}

void push_last_linear(nn::Sequential& seq, int64_t in_features, int64_t num_classes) {
  if (num_classes > 0)
    seq->push_back(nn::Linear(in_features, num_classes));
  else
    seq->push_back(nn::Identity());
}

std::vector<ForwardStep> pooled_classifier_steps(const nn::Sequential& classifier, int64_t num_classes,
                                                 bool pre_logits) {
  std::vector<ForwardStep> steps;
  steps.push_back({"avgpool", "AdaptiveAvgPool2d", [](const torch::Tensor& x) {
                     return torch::adaptive_avg_pool2d(x, {1, 1});  // (N, C, 1, 1)
                   }});
  steps.push_back({"flatten", "Flatten", [](const torch::Tensor& x) { return x.flatten(1); }});  // (N, C)
  auto head = sequential_steps(classifier, "classifier", {"Dropout", num_classes > 0 ? "Linear" : "Identity"},
                               0, pre_logits ? 1 : 2);
  steps.insert(steps.end(), head.begin(), head.end());
  return steps;
}

nn::Sequential with_new_last_linear(const nn::Sequential& seq, int64_t in_features, int64_t num_classes,
                                    const torch::Tensor& like) {
  nn::Sequential out;
  for (size_t i = 0; i + 1 < seq->size(); ++i) out->push_back(*(seq->begin() + i));
  if (num_classes > 0) {
    nn::Linear last(in_features, num_classes);
    init_linear_normal(*last);
    last->to(like.device(), like.scalar_type());
    out->push_back(last);
  } else {
    out->push_back(nn::Identity());
  }
  return out;
}

void init_torchvision_weights(torch::nn::Module& model,
                              const std::function<void(torch::nn::LinearImpl&)>& linear_init) {
  namespace nn = torch::nn;
  torch::NoGradGuard no_grad;
  for (auto& module : model.modules(/*include_self=*/false)) {
    if (auto* conv = module->as<nn::Conv2d>()) {
      // The gain of ReLU, sqrt(2): what torchvision passes (VGG names nonlinearity="relu"; the mobile
      // networks leave leaky_relu with a = 0, the same gain).
      nn::init::kaiming_normal_(conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
      if (conv->bias.defined()) nn::init::zeros_(conv->bias);
    } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    } else if (auto* linear = module->as<nn::Linear>()) {
      linear_init(*linear);
    }
  }
}

void FeaturesClassifierImpl::finish_layout(torch::nn::Sequential layers, double dropout, int64_t num_classes,
                                           LinearInit linear_init, bool reinit_replaced) {
  namespace nn = torch::nn;
  features = register_module("features", layers);
  nn::Sequential head{nn::Dropout(dropout)};
  push_last_linear(head, last_channel_, num_classes);
  classifier = register_module("classifier", head);
  num_classes_ = num_classes;
  linear_init_ = std::move(linear_init);
  reinit_replaced_ = reinit_replaced;

  init_torchvision_weights(*this, linear_init_);
}

std::vector<ForwardStep> FeaturesClassifierImpl::feature_steps() {
  return sequential_steps(features, "features", feature_types_);  // (N, 3, H, W) -> (N, C, H/32, W/32)
}

std::vector<ForwardStep> FeaturesClassifierImpl::classifier_steps(bool pre_logits) {
  return pooled_classifier_steps(classifier, num_classes_, pre_logits);  // (N, C, H/32, W/32) -> logits
}

void FeaturesClassifierImpl::replace_classifier(int64_t num_classes) {
  // A Sequential cannot swap one element: a new one around the same Dropout, under the same name.
  classifier = replace_module("classifier", with_new_last_linear(classifier, last_channel_, num_classes,
                                                                 features->ptr(0)->parameters().front()));
  if (reinit_replaced_)
    if (auto* linear = classifier->ptr(1)->as<torch::nn::Linear>()) linear_init_(*linear);
  num_classes_ = num_classes;
}

}  // namespace graft
