#include "layers/conv_bn.h"

#include <ATen/autocast_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>

#include <atomic>
#include <string>
#include <typeinfo>

#include "graft/errors.h"
#include "layers/lora.h"

namespace graft {
namespace {

thread_local BatchNormFolding* innermost = nullptr;
std::atomic<bool> folding_enabled{true};

bool needs_grad(const torch::Tensor& t) {
  return t.defined() && t.requires_grad();
}

// Inference tensors (made under InferenceMode) keep no version counter; they cannot be updated in place
// outside that mode either, so identity alone tells whether they changed.
uint32_t version_of(const torch::Tensor& t) {
  return t.defined() && !t.is_inference() ? t._version() : 0;
}

// The tensors a folded pair is computed from, in a fixed order (undefined ones included as such).
std::vector<torch::Tensor> fold_sources(const torch::nn::Conv2dImpl& conv,
                                        const torch::nn::BatchNorm2dImpl& bn) {
  return {conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var};
}

}  // namespace

BatchNormFolding::BatchNormFolding() : outer_(innermost) {
  innermost = this;
}

BatchNormFolding::~BatchNormFolding() {
  innermost = outer_;
}

BatchNormFolding* BatchNormFolding::active() {
  return folding_enabled.load(std::memory_order_relaxed) ? innermost : nullptr;
}

void BatchNormFolding::set_enabled(bool enabled) {
  folding_enabled.store(enabled, std::memory_order_relaxed);
}

bool BatchNormFolding::enabled() {
  return folding_enabled.load(std::memory_order_relaxed);
}

const BatchNormFolding::Folded& BatchNormFolding::fold(torch::nn::Conv2dImpl& conv,
                                                       torch::nn::BatchNorm2dImpl& bn) {
  std::vector<torch::Tensor> sources = fold_sources(conv, bn);
  auto it = cache_.find(&conv);
  if (it != cache_.end()) {
    const Folded& cached = it->second;
    bool current = true;
    for (size_t i = 0; i < sources.size() && current; ++i) {
      current = sources[i].defined() == cached.sources[i].defined() &&
                (!sources[i].defined() ||
                 (sources[i].is_same(cached.sources[i]) && version_of(sources[i]) == cached.versions[i]));
    }
    if (current) return cached;
  }
  torch::NoGradGuard no_grad;
  // Ordinary tensors even when first folded under InferenceMode: a scope may outlive that mode.
  c10::InferenceMode not_inference(/*enabled=*/false);
  // In double: the folded weights then differ from W * s by one float rounding, not two.
  const auto opts = conv.weight.options().dtype(torch::kFloat64);
  const int64_t out_channels = conv.weight.size(0);
  const torch::Tensor gamma =
      bn.weight.defined() ? bn.weight.to(torch::kFloat64) : torch::ones({out_channels}, opts);
  const torch::Tensor beta =
      bn.bias.defined() ? bn.bias.to(torch::kFloat64) : torch::zeros({out_channels}, opts);
  const torch::Tensor bias =
      conv.bias.defined() ? conv.bias.to(torch::kFloat64) : torch::zeros({out_channels}, opts);
  const torch::Tensor scale = gamma / torch::sqrt(bn.running_var.to(torch::kFloat64) + bn.options.eps());
  std::vector<int64_t> scale_shape(conv.weight.dim(), 1);
  scale_shape[0] = out_channels;
  Folded folded;
  folded.weight = (conv.weight.to(torch::kFloat64) * scale.view(scale_shape))
                      .to(conv.weight.scalar_type())
                      .contiguous(torch::MemoryFormat::ChannelsLast);
  folded.bias = ((bias - bn.running_mean.to(torch::kFloat64)) * scale + beta).to(conv.weight.scalar_type());
  for (const auto& source : sources) folded.versions.push_back(version_of(source));
  folded.sources = std::move(sources);
  return cache_[&conv] = std::move(folded);
}

bool can_fold(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl& bn) {
  if (bn.is_training() || !bn.options.track_running_stats() || !bn.running_mean.defined()) return false;
  if (!c10::get_if<torch::ExpandingArray<2>>(&conv.options.padding())) return false;
  if (!c10::get_if<torch::enumtype::kZeros>(&conv.options.padding_mode())) return false;
  if (has_live_branch(conv)) return false;
  return !needs_grad(conv.weight) && !needs_grad(conv.bias) && !needs_grad(bn.weight) && !needs_grad(bn.bias);
}

namespace {

// Under CPU autocast a grouped (depthwise) convolution runs in float32: each of its outputs sums a few
// terms (9 for a 3x3 kernel), so bf16 rounding of its inputs does not average out, and it is memory-bound,
// so bf16 gains little there. On the real nsfwjs MobileNetV2 this lifts the pooled features' cosine to
// float32's from 0.997 to 0.9993 (tests/models/test_mixed_precision.cpp).
bool depthwise_in_float32(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  return conv.options.groups() > 1 && x.device().is_cpu() && at::autocast::is_cpu_enabled();
}

}  // namespace

torch::Tensor conv2d(torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  torch::Tensor y;
  if (depthwise_in_float32(conv, x)) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    y = conv.forward(x.to(torch::kFloat));
  } else {
    y = conv.forward(x);
  }
  return conv.children().empty() ? y : add_lora(conv, x, y);  // a LoRA branch, if any
}

torch::Tensor conv_bn(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x) {
  if (typeid(conv) != typeid(torch::nn::Conv2dImpl)) {
    throw Error(std::string("conv_bn: the convolution must be a plain Conv2d, got ") + typeid(conv).name() +
                " (a subclass's own forward would be skipped)");
  }
  BatchNormFolding* scope = BatchNormFolding::active();
  if (!scope || x.dim() != 4 || !can_fold(conv, bn)) return bn.forward(conv2d(conv, x));
  const auto& folded = scope->fold(conv, bn);
  const auto& padding = c10::get<torch::ExpandingArray<2>>(conv.options.padding());
  if (depthwise_in_float32(conv, x)) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    return torch::conv2d(x.to(torch::kFloat).contiguous(torch::MemoryFormat::ChannelsLast), folded.weight,
                         folded.bias, *conv.options.stride(), *padding, *conv.options.dilation(),
                         conv.options.groups());
  }
  return torch::conv2d(x.contiguous(torch::MemoryFormat::ChannelsLast), folded.weight, folded.bias,
                       *conv.options.stride(), *padding, *conv.options.dilation(), conv.options.groups());
}

torch::Tensor conv_bn_sequential(torch::nn::SequentialImpl& seq, torch::Tensor x) {
  // Exactly a Conv2d: a subclass such as Conv2dSame (TF padding) has a forward of its own, which the
  // Conv2dImpl& that conv_bn() takes would not call.
  const bool pair = seq.size() >= 2 && typeid(*seq.ptr(0)) == typeid(torch::nn::Conv2dImpl) &&
                    typeid(*seq.ptr(1)) == typeid(torch::nn::BatchNorm2dImpl);
  if (!pair) return seq.forward(std::move(x));
  auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(seq.ptr(0).get());
  auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(seq.ptr(1).get());
  x = conv_bn(*conv, *bn, x);
  for (auto it = seq.begin() + 2; it != seq.end(); ++it) {
    // ReLU6 is hardtanh, whose backward libtorch 1.13 has no bf16 CPU kernel for (a bf16 fine-tune under
    // autocast stopped there); clamp has one, and its gradient differs only at exactly 0 and 6.
    if (x.scalar_type() == torch::kBFloat16 && x.requires_grad() && it->ptr()->as<torch::nn::ReLU6Impl>())
      x = torch::clamp(x, 0.0, 6.0);
    else
      x = it->forward(x);
  }
  return x;
}

std::pair<StepFn, StepFn> conv_bn_steps(std::shared_ptr<torch::nn::Conv2dImpl> conv,
                                        std::shared_ptr<torch::nn::BatchNorm2dImpl> bn) {
  auto folds = [](const torch::nn::Conv2dImpl& c, const torch::nn::BatchNorm2dImpl& b,
                  const torch::Tensor& x) {
    return BatchNormFolding::active() && x.dim() == 4 && can_fold(c, b);
  };
  StepFn conv_step = [conv, bn, folds](const torch::Tensor& x) {
    return folds(*conv, *bn, x) ? conv_bn(*conv, *bn, x) : conv2d(*conv, x);
  };
  StepFn bn_step = [conv, bn, folds](const torch::Tensor& x) {
    return folds(*conv, *bn, x) ? x : bn->forward(x);
  };
  return {std::move(conv_step), std::move(bn_step)};
}

}  // namespace graft
