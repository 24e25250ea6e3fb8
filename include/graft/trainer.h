// graft's training core, independent of any architecture: the Trainer, which ties together optimisers
// (optim.h), schedules (schedule.h), losses and metrics (metrics.h), batches (batches.h), the run's record
// (history.h), checkpoints (checkpoint.h) and pictures (plots.h). Including this header includes them all.
//
// References: PyTorch 1.13 torch.optim (SGD/Adam/AdamW, param groups), torch.nn.functional.cross_entropy
// (label_smoothing, weight), Hugging Face transformers optimization.py (linear/cosine schedules with
// warm-up), Keras EarlyStopping / ModelCheckpoint(save_best_only) semantics.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "graft/batches.h"
#include "graft/checkpoint.h"
#include "graft/errors.h"
#include "graft/history.h"
#include "graft/metrics.h"
#include "graft/optim.h"
#include "graft/plots.h"
#include "graft/precision.h"
#include "graft/schedule.h"

namespace graft {

// The loss, or a weight or BatchNorm statistic after an epoch (they can overflow while the loss stays
// finite), became NaN or infinite; the run stopped and checkpoints/last is the last good epoch.
class NonFiniteLoss : public Error {
 public:
  using Error::Error;
};

class Trainer;
class ProgressBar;
using EpochCallback = std::function<void(Trainer& trainer, EpochResult& result)>;

struct TrainConfig {
  int64_t epochs = 10;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double label_smoothing = 0.0;
  std::vector<double> class_weights;  // empty: all 1
  double grad_clip = 0.0;             // max global gradient norm; 0: off
  uint64_t seed = 42;
  EarlyStoppingConfig early_stopping;  // its monitor also chooses checkpoints/best
  std::string out_dir;                 // run directory; empty: write nothing
  bool resume = false;                 // continue from out_dir/checkpoints/last
  torch::Device device = torch::kCPU;
  // Forward pass and loss under autocast at this precision (graft/precision.h); weights, gradients and
  // optimiser state stay float32.
  Precision precision = Precision::kFloat32;
  std::vector<ParamGroup> param_groups;  // empty: one group of all the model's parameters
  std::vector<EpochCallback> on_epoch_end;
  std::vector<std::string> class_names;  // for reports and pictures
  bool save_checkpoints = true;          // with out_dir
  bool write_plots = true;               // with out_dir: training_curves.svg, confusion_matrix.svg
  bool progress = true;                  // progress bars on `log` (epoch summaries are always printed)
  std::ostream* log = nullptr;           // nullptr: std::cerr
  std::string sample_unit = "img";       // progress bar speed unit ("img/s", "seq/s")
  // classify: inputs -> logits (N, C), labels (N), classification_loss and class metrics;
  // causal-lm: inputs -> logits (N, T, V), labels (N, T), causal_lm_loss, token accuracy and perplexity.
  std::string objective = "classify";
};

class Trainer {
 public:
  using Forward = std::function<torch::Tensor(const torch::Tensor& inputs)>;  // -> logits (N, C)

  // `model` owns the parameters (train()/eval(), state); `forward` maps inputs to logits. The model
  // is moved to config.device.
  Trainer(std::shared_ptr<torch::nn::Module> model, Forward forward, TrainConfig config);
  ~Trainer();

  // Runs the remaining epochs (all, or those after checkpoints/last when resuming). Throws NonFiniteLoss
  // when the loss or a weight becomes NaN/Inf, graft::Error on bad data or configuration. With resume, the
  // returned history's restored epochs carry no val_metrics.
  TrainHistory fit(BatchSource& train, BatchSource* val = nullptr);
  // Metrics of the model on a source, in eval mode without gradients.
  Metrics evaluate(BatchSource& source, const std::string& label = "eval");
  // After fit(): puts the best epoch's weights (checkpoints/best, by the monitored metric) back into the
  // model when a later epoch ran, and says so ("restored epoch 7 of 25: best val_loss 0.3100"); with no
  // best checkpoint (no out_dir, checkpoints off) it keeps the last epoch and says that. Returns the epoch
  // the model now holds.
  int64_t restore_best();
  // A labelled line on training_curves.svg at `epoch` (2.5: between epochs 2 and 3), e.g. a stage switch.
  void add_curve_mark(double epoch, std::string label) {
    history_.marks.push_back({epoch, std::move(label)});
  }

  // Rebuilds the optimiser over new groups (e.g. after unfreezing the backbone in a callback),
  // optionally with new hyper-parameters; the schedule continues at the current step, scaling the new
  // base rates. The old optimiser's state (momentum, Adam moments) is dropped, as Keras' recompile does.
  void set_param_groups(std::vector<ParamGroup> groups,
                        std::optional<OptimizerConfig> optimizer = std::nullopt);

  // Its `optimizer` is null until fit() when nothing was trainable at construction.
  GroupedOptimizer& optimizer() { return optimizer_; }
  const TrainConfig& config() const { return config_; }
  const TrainHistory& history() const { return history_; }
  int64_t global_step() const { return global_step_; }
  torch::nn::Module& model() { return *model_; }

 private:
  EpochResult run_epoch(BatchSource& train, BatchSource* val, int64_t epoch_index);
  bool causal_lm() const { return config_.objective == "causal-lm"; }
  torch::Tensor loss_of(const torch::Tensor& logits, const torch::Tensor& labels) const;
  void accumulate(MetricsAccumulator& accumulator, const torch::Tensor& logits, const torch::Tensor& labels,
                  double loss) const;
  // One pass without gradients; the bar (if any) is left open for the caller's summary.
  Metrics run_eval(BatchSource& source, const std::string& label, std::unique_ptr<ProgressBar>* bar);
  void restore_from_checkpoint();
  TrainerState capture_state() const;
  void rewrite_metrics_csv();
  void append_metrics_csv(const EpochResult& result);
  std::ostream& log() const;
  std::string param_name(const torch::Tensor& tensor) const;
  std::vector<torch::Tensor> trainable_params() const;
  std::string checkpoint_dir(const std::string& which) const;

  std::shared_ptr<torch::nn::Module> model_;
  Forward forward_;
  TrainConfig config_;
  GroupedOptimizer optimizer_;  // no optimizer until fit() when nothing was trainable at construction
  std::vector<ParamGroup> pending_groups_;
  LrSchedule schedule_;
  EarlyStopping early_stopping_;
  TrainHistory history_;
  torch::Tensor class_weights_;
  int64_t global_step_ = 0;
  int64_t epochs_done_ = 0;
  bool finished_ = false;
  uint64_t seed_ = 0;
};

}  // namespace graft
