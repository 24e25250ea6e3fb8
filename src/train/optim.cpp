// Optimisers over parameter groups with per-group learning-rate multipliers ("discriminative" rates:
// ULMFiT, Howard & Ruder 2018; timm's layer-wise decay), on libtorch's torch::optim SGD/Adam/AdamW
// (PyTorch 1.13 semantics: SGD momentum buffer b = mu * b + g, p -= lr * b; AdamW decoupled decay).
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <sstream>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include "graft/trainer.h"

namespace graft {
namespace {

std::unique_ptr<torch::optim::OptimizerOptions> group_options(const OptimizerConfig& config, double lr) {
  if (config.name == "sgd") {
    auto options = std::make_unique<torch::optim::SGDOptions>(lr);
    options->momentum(config.momentum)
        .nesterov(config.nesterov)
        .weight_decay(config.weight_decay.value_or(0.0));
    return options;
  }
  const auto betas = std::make_tuple(config.betas[0], config.betas[1]);
  if (config.name == "adam") {
    auto options = std::make_unique<torch::optim::AdamOptions>(lr);
    options->betas(betas).eps(config.eps).weight_decay(config.weight_decay.value_or(0.0));
    return options;
  }
  auto options = std::make_unique<torch::optim::AdamWOptions>(lr);
  options->betas(betas).eps(config.eps).weight_decay(config.weight_decay.value_or(1e-2));
  return options;
}

using StateKey = std::decay_t<decltype(std::declval<const torch::optim::Optimizer&>().state())>::key_type;

// libtorch 1.x: c10::guts::to_string(param.unsafeGetTensorImpl()) (torch/optim/serialize.h), which prints
// the pointer to a stream; 2.x: the pointer. A template, so that only the branch for this libtorch compiles.
template <typename Key = StateKey>
Key state_key(const torch::Tensor& param) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream out;
    out << param.unsafeGetTensorImpl();
    return out.str();
  } else {
    return param.unsafeGetTensorImpl();
  }
}

void check_config(const OptimizerConfig& config) {
  if (config.name != "sgd" && config.name != "adam" && config.name != "adamw")
    throw Error("unknown optimizer '" + config.name + "'; expected sgd, adam or adamw");
  if (!(config.lr >= 0.0)) throw Error("optimizer lr must be >= 0, got " + std::to_string(config.lr));
  if (config.name == "sgd") {
    if (config.momentum < 0.0)
      throw Error("sgd momentum must be >= 0, got " + std::to_string(config.momentum));
    if (config.nesterov && config.momentum <= 0.0)
      throw Error("sgd nesterov needs momentum > 0 (got " + std::to_string(config.momentum) + ")");
  } else {
    for (double beta : config.betas)
      if (!(beta >= 0.0 && beta < 1.0))
        throw Error(config.name + " betas must lie in [0, 1), got " + std::to_string(beta));
    if (!(config.eps >= 0.0)) throw Error(config.name + " eps must be >= 0");
  }
  if (config.weight_decay && !(*config.weight_decay >= 0.0))
    throw Error("weight_decay must be >= 0, got " + std::to_string(*config.weight_decay));
}

}  // namespace

GroupedOptimizer build_optimizer(const OptimizerConfig& config, const std::vector<ParamGroup>& groups) {
  check_config(config);
  GroupedOptimizer result;
  result.config = config;
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  std::unordered_set<const void*> seen;
  for (size_t g = 0; g < groups.size(); ++g) {
    const ParamGroup& group = groups[g];
    const std::string group_name = group.name.empty() ? "group " + std::to_string(g) : group.name;
    if (!(group.lr_mult >= 0.0))
      throw Error("parameter group '" + group_name + "': lr_mult must be >= 0, got " +
                  std::to_string(group.lr_mult));
    std::vector<torch::Tensor> trainable;
    for (const torch::Tensor& param : group.params) {
      if (!param.defined()) continue;
      if (!seen.insert(param.unsafeGetTensorImpl()).second)
        throw Error("parameter group '" + group_name +
                    "' repeats a parameter that is already in a group; each parameter may be in one "
                    "group only");
      if (param.requires_grad()) trainable.push_back(param);  // frozen ones never reach the optimiser
    }
    if (trainable.empty()) continue;  // wholly frozen group
    const double base_lr = config.lr * group.lr_mult;
    OptimizerConfig group_config = config;
    if (group.no_weight_decay) group_config.weight_decay = 0.0;
    torch_groups.emplace_back(std::move(trainable), group_options(group_config, base_lr));
    result.no_weight_decay.push_back(group.no_weight_decay);
    result.base_lrs.push_back(base_lr);
    result.lr_mults.push_back(group.lr_mult);
    result.group_names.push_back(group_name);
  }
  if (torch_groups.empty())
    throw Error(
        "no trainable parameters: every parameter is frozen (requires_grad false); unfreeze the head "
        "or use a freeze spec that leaves something to train");
  // The defaults only fill options a group lacks; every group here carries its own.
  if (config.name == "sgd") {
    torch::optim::SGDOptions defaults(config.lr);
    defaults.momentum(config.momentum).nesterov(config.nesterov);
    result.optimizer = std::make_unique<torch::optim::SGD>(std::move(torch_groups), defaults);
  } else if (config.name == "adam") {
    result.optimizer =
        std::make_unique<torch::optim::Adam>(std::move(torch_groups), torch::optim::AdamOptions(config.lr));
  } else {
    result.optimizer =
        std::make_unique<torch::optim::AdamW>(std::move(torch_groups), torch::optim::AdamWOptions(config.lr));
  }
  return result;
}

void scale_lr(GroupedOptimizer& optimizer, double factor) {
  auto& groups = optimizer.optimizer->param_groups();
  for (size_t i = 0; i < groups.size() && i < optimizer.base_lrs.size(); ++i)
    groups[i].options().set_lr(optimizer.base_lrs[i] * factor);
}

const torch::optim::OptimizerParamState* optimizer_param_state(const torch::optim::Optimizer& optimizer,
                                                               const torch::Tensor& param) {
  const auto found = optimizer.state().find(state_key(param));
  return found == optimizer.state().end() ? nullptr : found->second.get();
}

void set_optimizer_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& param,
                               std::unique_ptr<torch::optim::OptimizerParamState> state) {
  optimizer.state()[state_key(param)] = std::move(state);
}

std::vector<double> current_lrs(const GroupedOptimizer& optimizer) {
  std::vector<double> lrs;
  for (const auto& group : optimizer.optimizer->param_groups()) lrs.push_back(group.options().get_lr());
  return lrs;
}

}  // namespace graft
