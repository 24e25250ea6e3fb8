// Optimisers over parameter groups with discriminative learning rates (src/train/optim.cpp), as
// PyTorch 1.13 torch.optim (SGD, Adam, AdamW, param groups).
#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace graft {

struct OptimizerConfig {
  std::string name = "adamw";  // sgd | adam | adamw
  double lr = 1e-3;            // base rate; a group's rate is lr * lr_mult * schedule factor
  double momentum = 0.9;       // sgd only
  bool nesterov = false;       // sgd only (needs momentum > 0)
  // L2 penalty (sgd, adam) or decoupled decay (adamw); unset: PyTorch's default (0, 0, 0.01).
  std::optional<double> weight_decay;
  std::array<double, 2> betas{0.9, 0.999};  // adam, adamw
  double eps = 1e-8;                        // adam, adamw
};

// A set of parameters sharing a learning-rate multiplier, e.g. {backbone params, 0.1} and
// {head params, 1.0}. Parameters with requires_grad == false are left out of the optimiser.
struct ParamGroup {
  std::vector<torch::Tensor> params;
  double lr_mult = 1.0;
  std::string name;              // for messages and checkpoints: "backbone", "head"
  bool no_weight_decay = false;  // biases and LayerNorm weights, as Hugging Face's Trainer groups them
};

// A libtorch optimiser plus what schedules need: each group's base rate (lr * lr_mult).
struct GroupedOptimizer {
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::vector<double> base_lrs;          // one per optimiser param group
  std::vector<std::string> group_names;  // one per optimiser param group
  std::vector<double> lr_mults;          // one per optimiser param group
  std::vector<bool> no_weight_decay;     // one per optimiser param group
  OptimizerConfig config;
};

// Builds sgd/adam/adamw over the trainable parameters of `groups`. Groups left empty by freezing are
// dropped; throws graft::Error on an unknown name, a bad hyper-parameter, a tensor in two groups, or
// when no parameter at all is trainable.
GroupedOptimizer build_optimizer(const OptimizerConfig& config, const std::vector<ParamGroup>& groups);

// Sets every group's rate to base_lr * factor.
void scale_lr(GroupedOptimizer& optimizer, double factor);
// Current rate of each optimiser param group.
std::vector<double> current_lrs(const GroupedOptimizer& optimizer);

// The state libtorch keeps for `param` in `optimizer` (momentum buffer, Adam moments), nullptr before its
// first step; and replacing it. libtorch keys it by the parameter's TensorImpl, as the address printed to a
// string in 1.x and as the address itself in 2.x; these work with both.
const torch::optim::OptimizerParamState* optimizer_param_state(const torch::optim::Optimizer& optimizer,
                                                               const torch::Tensor& param);
void set_optimizer_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& param,
                               std::unique_ptr<torch::optim::OptimizerParamState> state);

}  // namespace graft
