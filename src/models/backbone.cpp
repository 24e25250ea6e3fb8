// BackboneImpl: the parts of the backbone interface that every architecture shares (custom head,
// step runner, BatchNorm policy for frozen layers).
#include "graft/errors.h"
#include "graft/head.h"
#include "graft/model.h"
#include "graft/strings.h"
#include "models/common.h"

namespace graft {

torch::Tensor run_steps(const std::vector<ForwardStep>& steps, torch::Tensor x) {
  for (const auto& step : steps) x = step.fn(x);
  return x;
}

std::array<int64_t, 2> input_hw(const PretrainedCfg& cfg) {
  const auto& size = cfg.input_size;
  if (size.size() != 3 && size.size() != 4) {
    throw Error("pretrained cfg '" + cfg.tag + "': input_size has " + std::to_string(size.size()) +
                " entries; expected (C, H, W) for images or (C, T, H, W) for video");
  }
  return {size[size.size() - 2], size[size.size() - 1]};
}

torch::Tensor example_input(const PretrainedCfg& cfg, std::array<int64_t, 2> hw) {
  if (hw[0] <= 0 || hw[1] <= 0) hw = input_hw(cfg);
  if (is_video_cfg(cfg)) return torch::zeros({1, cfg.input_size[0], cfg.input_size[1], hw[0], hw[1]});
  return torch::zeros({1, cfg.input_size[0], hw[0], hw[1]});
}

torch::Tensor BackboneImpl::forward_head(const torch::Tensor& features, bool pre_logits) {
  if (head_) return run_steps(head_->steps(pre_logits), features);
  return run_steps(classifier_steps(pre_logits), features);
}

std::vector<ForwardStep> BackboneImpl::all_steps() {
  std::vector<ForwardStep> steps = feature_steps();
  std::vector<ForwardStep> head;
  if (head_) {
    head = head_->steps(false);
    for (auto& step : head) step.name = classifier_name() + "." + step.name;
  } else {
    head = classifier_steps(false);
  }
  steps.insert(steps.end(), head.begin(), head.end());
  return steps;
}

void BackboneImpl::set_head(const HeadSpec& spec, std::array<int64_t, 2> input_hw) {
  std::array<int64_t, 2> feature_hw{0, 0};
  if (spec.pooling == Pooling::kFlatten || spec.pooling == Pooling::kNone) {
    // The feature map size depends on the input size: measure it with one dry run.
    torch::NoGradGuard no_grad;
    const bool was_training = is_training();
    eval();
    auto features = forward_features(example_input(default_cfg(), input_hw));  // (1, C, [T',] H', W')
    train(was_training);
    // Flatten only needs the number of cells: a video map's T' folds into the rows.
    feature_hw = {1, 1};
    for (int64_t d = 2; d < features.dim(); ++d) {
      feature_hw[d + 1 == features.dim() ? 1 : 0] *= features.size(d);
    }
  }
  auto head = std::make_shared<HeadImpl>(spec, num_features(), feature_hw);
  const std::string name = classifier_name();
  if (head_) {
    replace_module(name, head);
  } else if (named_children().contains(name)) {
    reference_classifier_ = named_children()[name];
    replace_module(name, head);
  } else {
    register_module(name, head);
  }
  head_ = head;
}

void BackboneImpl::reset_classifier(int64_t num_classes) {
  check_num_classes(arch() + ": reset_classifier", num_classes);
  clear_custom_head();
  replace_classifier(num_classes);
}

int64_t BackboneImpl::num_classes() const {
  return has_custom_head() ? custom_head()->out_features() : classifier_outputs();
}

void BackboneImpl::clear_custom_head() {
  if (!head_) return;
  if (reference_classifier_) {
    replace_module(classifier_name(), reference_classifier_);
  } else {
    unregister_module(classifier_name());
  }
  head_ = nullptr;
  reference_classifier_ = nullptr;
}

void BackboneImpl::fix_parameter(const std::string& name) {
  auto params = named_parameters(/*recurse=*/true);
  if (!params.contains(name)) {
    throw Error(arch_ + ": fix_parameter('" + name + "'): the model has no such parameter");
  }
  params[name].set_requires_grad(false);
  fixed_parameters_.insert(name);
}

void BackboneImpl::train(bool on) {
  torch::nn::Module::train(on);
  if (!on || frozen_bn_trains_) return;
  // A frozen BatchNorm must not drift: keep it on its running statistics (inference mode).
  for (auto& module : modules(/*include_self=*/false)) {
    const bool is_bn = dynamic_cast<torch::nn::BatchNorm1dImpl*>(module.get()) ||
                       dynamic_cast<torch::nn::BatchNorm2dImpl*>(module.get()) ||
                       dynamic_cast<torch::nn::BatchNorm3dImpl*>(module.get());
    if (!is_bn) continue;
    auto params = module->parameters(/*recurse=*/false);
    const bool frozen = !params.empty() && std::none_of(params.begin(), params.end(),
                                                        [](const auto& p) { return p.requires_grad(); });
    if (frozen) module->eval();
  }
}

int64_t count_parameters(const torch::nn::Module& module, const std::string& prefix, bool trainable_only) {
  int64_t total = 0;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (!prefix.empty() && name != prefix && name.rfind(prefix + ".", 0) != 0) continue;
    if (trainable_only && !item.value().requires_grad()) continue;
    total += item.value().numel();
  }
  return total;
}

std::string head_module_name(BackboneImpl& model) {
  if (model.has_custom_head()) return model.classifier_name();
  auto steps = model.classifier_steps(false);
  if (steps.empty()) return "";
  const std::string& last = steps.back().name;
  for (const auto& item : model.named_parameters(true)) {
    if (is_dotted_prefix(item.key(), last)) return last;
  }
  return "";
}

}  // namespace graft
