// graft's training core, independent of any architecture: optimisers over parameter groups with
// discriminative learning rates, learning-rate schedules with warm-up, the classification loss,
// metrics, checkpoints that survive a crash, SVG pictures of a run, and the Trainer that ties them.
//
// References: PyTorch 1.13 torch.optim (SGD/Adam/AdamW, param groups), torch.nn.functional.cross_entropy
// (label_smoothing, weight), Hugging Face transformers optimization.py (linear/cosine schedules with
// warm-up), Keras EarlyStopping / ModelCheckpoint(save_best_only) semantics.
#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graft/errors.h"

namespace graft {

// ---------------------------------------------------------------------------------------------------
// Optimisers (src/train/optim.cpp)

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

// ---------------------------------------------------------------------------------------------------
// Learning-rate schedules (src/train/schedule.cpp). Steps are optimiser steps, counted from 0.

struct ScheduleConfig {
  std::string name = "constant";  // constant | step | cosine | linear
  int64_t warmup_steps = 0;       // linear warm-up over the first W steps...
  double warmup_start = 0.0;      // ...from this factor (step 0) to 1 (step W)
  int64_t step_size = 1;          // step: multiply by gamma every step_size epochs (or steps)
  bool step_size_in_epochs = true;
  double gamma = 0.1;       // step
  double min_factor = 0.0;  // cosine: the floor, as a fraction of the base rate
};

// Factor applied to every base rate at `step` of a run of `total_steps` steps:
//   warm(step) * shape(step), warm = warmup_start + (1 - warmup_start) * step / W for step < W, else 1;
//   constant: 1;  step: gamma ^ floor(step / step_size_steps) (counted from step 0, warm-up included);
//   cosine: min + (1 - min) * (1 + cos(pi * p)) / 2;  linear: 1 - p  (Hugging Face's recipe),
//   with p = clamp((step - W) / (total_steps - W), 0, 1) the progress after warm-up.
// steps_per_epoch converts an epoch step_size to steps. Throws graft::Error on an unknown name.
double lr_factor(const ScheduleConfig& config, int64_t step, int64_t total_steps,
                 int64_t steps_per_epoch = 1);

// A schedule bound to a run's length.
class LrSchedule {
 public:
  LrSchedule() = default;
  LrSchedule(ScheduleConfig config, int64_t total_steps, int64_t steps_per_epoch);  // validates
  double factor(int64_t step) const;
  const ScheduleConfig& config() const { return config_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  ScheduleConfig config_;
  int64_t total_steps_ = 1;
  int64_t steps_per_epoch_ = 1;
};

// The per-step update: every group's rate = base_lr * schedule.factor(step).
void set_lr(GroupedOptimizer& optimizer, const LrSchedule& schedule, int64_t step);

// ---------------------------------------------------------------------------------------------------
// Loss (src/train/metrics.cpp)

// Mean cross-entropy of logits (N, C) against int64 labels (N), as
// torch.nn.functional.cross_entropy(logits, labels, weight=class_weights, label_smoothing=eps):
//   l_i = (1 - eps) * w[y_i] * -log p_i[y_i] + eps / C * sum_c w[c] * -log p_i[c],
//   loss = sum_i l_i / sum_i w[y_i]  (plain mean without weights).
// class_weights: undefined or (C) float.
torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                  double label_smoothing = 0.0, const torch::Tensor& class_weights = {});

// Mean next-token cross-entropy of a causal language model, as Hugging Face's GPT2LMHeadModel computes it:
// logits (N, T, V) at position t predict labels[:, t + 1]; labels equal to -100 (padding) are left out.
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels);

// ---------------------------------------------------------------------------------------------------
// Metrics (src/train/metrics.cpp)

struct Metrics {
  int64_t samples = 0;       // examples, or predicted tokens for token-level metrics
  bool token_level = false;  // causal LM: accuracy of next-token predictions, no classes
  int64_t num_classes = 0;
  double loss = 0.0;                            // mean over samples
  double accuracy = 0.0;                        // top-1
  std::optional<double> top5;                   // only when num_classes > 5
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  std::vector<double> precision, recall, f1;    // per class; 0 where undefined
  std::vector<int64_t> support;                 // true samples per class
  double macro_f1 = 0.0;
  double perplexity() const;  // exp(loss): the language-model figure
};

// Accumulates predictions over batches.
class MetricsAccumulator {
 public:
  // num_classes 0: taken from the first batch's logits.
  explicit MetricsAccumulator(int64_t num_classes = 0);
  // logits (N, C), labels (N) int64, batch_loss: the batch's mean loss (weighted by N here).
  void add(const torch::Tensor& logits, const torch::Tensor& labels, double batch_loss);
  // Causal LM: logits (N, T, V), labels (N, T) with -100 for padding, batch_loss the mean over the counted
  // (shifted, unpadded) tokens; samples count those tokens. An accumulator takes one kind of batch only.
  void add_tokens(const torch::Tensor& logits, const torch::Tensor& labels, double batch_loss);
  int64_t samples() const { return samples_; }
  double mean_loss() const { return samples_ ? loss_sum_ / static_cast<double>(samples_) : 0.0; }
  double accuracy() const {
    return samples_ ? static_cast<double>(correct_) / static_cast<double>(samples_) : 0.0;
  }
  Metrics result() const;

 private:
  int64_t num_classes_ = 0;
  bool token_level_ = false;
  int64_t samples_ = 0;
  int64_t correct_ = 0;
  int64_t correct_top5_ = 0;
  double loss_sum_ = 0.0;
  std::vector<int64_t> confusion_;  // num_classes^2, row-major [true][predicted]
};

// Per-class table (precision, recall, F1, support), macro/weighted averages, accuracy, then the
// confusion matrix. Missing class names are shown as their index.
std::string metrics_report(const Metrics& metrics, const std::vector<std::string>& class_names = {});

// ---------------------------------------------------------------------------------------------------
// Batches

// Where a Trainer gets batches: one pass per epoch.
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual size_t num_batches() = 0;
  // Called before each epoch's first next(); an implementation shuffles with (seed, epoch) so that
  // epoch k's order is the same in an interrupted and an uninterrupted run.
  virtual void start_epoch(int64_t epoch) = 0;
  // (inputs, labels int64), or nothing when the epoch is over.
  virtual std::optional<std::pair<torch::Tensor, torch::Tensor>> next() = 0;
  // The run's seed, given by the Trainer before the first epoch.
  virtual void set_seed(uint64_t /*seed*/) {}
};

// Batches from tensors in memory (precomputed features, token ids, tests): inputs (N, ...), labels (N)
// or, per token, (N, T).
// Shuffles per epoch with its own generator seeded by (seed, epoch); torch's global RNG is untouched.
class TensorBatchSource : public BatchSource {
 public:
  TensorBatchSource(torch::Tensor inputs, torch::Tensor labels, int64_t batch_size, bool shuffle,
                    bool drop_last = false);
  size_t num_batches() override;
  void start_epoch(int64_t epoch) override;
  std::optional<std::pair<torch::Tensor, torch::Tensor>> next() override;
  void set_seed(uint64_t seed) override { seed_ = seed; }

 private:
  torch::Tensor inputs_, labels_;
  int64_t batch_size_;
  bool shuffle_, drop_last_;
  uint64_t seed_ = 0;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Run records

// One epoch of a run. Epochs are numbered from 1, as printed and written to metrics.csv.
struct EpochResult {
  int64_t epoch = 0;
  int64_t global_step = 0;  // optimiser steps done at the end of the epoch
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  std::optional<double> val_loss, val_accuracy, val_top5, val_macro_f1;
  double lr = 0.0;        // optimizer lr * schedule factor at the epoch's last step
  double seconds = 0.0;   // wall time of the epoch (train + val)
  bool improved = false;  // the monitored metric improved: checkpoints/best was written
  // Not saved in checkpoints:
  std::optional<Metrics> val_metrics;  // full validation metrics of this epoch
  bool stop_requested = false;         // a callback sets it to end the run after this epoch
};

struct TrainHistory {
  std::vector<EpochResult> epochs;
  int64_t best_epoch = 0;  // 0: none
  double best_metric = 0.0;
  bool stopped_early = false;
  std::string stop_reason;  // one line, empty when all epochs ran
};

// Keras' EarlyStopping rule: a value improves on the best when it is better by more than min_delta;
// after `patience` epochs in a row without improvement the run stops.
struct EarlyStoppingConfig {
  bool enabled = false;
  std::string monitor = "val_loss";  // val_loss | val_accuracy | val_top5 | val_macro_f1 |
                                     // train_loss | train_accuracy (also picks checkpoints/best)
  std::string mode = "auto";         // min | max | auto (min for *loss, max otherwise)
  int64_t patience = 5;
  double min_delta = 0.0;
};

class EarlyStopping {
 public:
  explicit EarlyStopping(const EarlyStoppingConfig& config);  // throws on unknown monitor/mode
  // Records an epoch's value; true when it is an improvement (the new best).
  bool update(double value);
  // After a non-improving epoch, when `patience` of them came in a row (patience 0: the first).
  bool should_stop() const { return config_.enabled && wait_ > 0 && wait_ >= config_.patience; }
  bool has_best() const { return has_best_; }
  double best() const { return best_; }
  int64_t wait() const { return wait_; }  // epochs since the last improvement
  bool minimise() const { return minimise_; }
  const EarlyStoppingConfig& config() const { return config_; }
  void restore(bool has_best, double best, int64_t wait) { has_best_ = has_best, best_ = best, wait_ = wait; }

 private:
  EarlyStoppingConfig config_;
  bool minimise_ = true;
  bool has_best_ = false;
  double best_ = 0.0;
  int64_t wait_ = 0;
};

// The monitored value of an epoch (throws graft::Error when it is absent, e.g. val_* without val).
double monitored_value(const EpochResult& result, const std::string& monitor);

// ---------------------------------------------------------------------------------------------------
// Checkpoints (src/train/checkpoint.cpp)
//
// A checkpoint is a directory: model.safetensors (parameters and buffers), optimizer.safetensors (the
// optimiser's state by parameter name) and trainer.json (everything else), written last and naming the
// other files with their sizes. Nothing in it is a pickle. See checkpoint.cpp for why a crash at any moment
// leaves the previous one loadable.

struct TrainerState {
  int64_t epoch = 0;        // epochs completed
  int64_t global_step = 0;  // optimiser steps done
  bool has_best = false;
  double best_metric = 0.0;
  int64_t best_epoch = 0;
  int64_t epochs_without_improvement = 0;
  bool finished = false;  // early stopping ended the run
  uint64_t seed = 0;
  std::vector<EpochResult> history;
  std::vector<uint8_t> rng_state;         // torch's default CPU generator
  std::string rng_device = "cpu";         // the training device
  std::vector<uint8_t> device_rng_state;  // its default generator when it is not the CPU
  OptimizerConfig optimizer;
  // The optimiser's groups by parameter name, so that a resumed run rebuilds the same optimiser
  // even after a callback regrouped or unfroze parameters.
  struct Group {
    std::string name;
    double lr_mult = 1.0;
    std::vector<std::string> params;
    bool no_weight_decay = false;
  };
  std::vector<Group> groups;
  std::vector<std::string> trainable;  // names of parameters with requires_grad at save time
};

// Writes a complete checkpoint at `dir`, replacing an existing one only once the new one is whole.
// optimizer may be null (no optimizer.safetensors).
void save_checkpoint(const std::string& dir, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const TrainerState& state);

// The complete checkpoint to load for `dir`: dir itself, or the previous one a crash left beside it
// (dir.old-*); nothing when there is none. Partial temporaries (dir.tmp-*) are never chosen.
std::optional<std::string> find_checkpoint(const std::string& dir);

// Readers for a directory find_checkpoint returned. They throw graft::Error/FormatError naming the
// file and what is wrong.
TrainerState read_trainer_state(const std::string& checkpoint_dir);
void load_checkpoint_model(const std::string& checkpoint_dir, torch::nn::Module& model);
// The optimiser must have been built over `model`'s parameters with the saved groups; its state is
// replaced by the file's, each tensor checked against its parameter's shape and dtype.
void load_checkpoint_optimizer(const std::string& checkpoint_dir, const torch::nn::Module& model,
                               torch::optim::Optimizer& optimizer);

// Writes a whole file at once: temporary file in the same folder, fsync, rename over `path`.
void write_file_atomic(const std::string& path, const std::string& contents);

// ---------------------------------------------------------------------------------------------------
// Pictures (src/train/plots.cpp): hand-written SVG, written atomically.

// Two panels, loss and accuracy per epoch, train (solid) vs val (dashed), with ticks and a legend.
void write_training_curves_svg(const std::string& path, const std::vector<EpochResult>& history);
// Heat map coloured by row-normalised counts (recall), the count in every cell, class names on both axes.
void write_confusion_matrix_svg(const std::string& path, const Metrics& metrics,
                                const std::vector<std::string>& class_names = {});
// The final evaluation of a run's saved model on its validation data: val_report.txt and, for classes,
// confusion_matrix.svg in out_dir (both from the same metrics, so they describe the model that was saved),
// and the report on log.
void write_val_report(const std::string& out_dir, const Metrics& metrics,
                      const std::vector<std::string>& class_names, std::ostream& log);

// ---------------------------------------------------------------------------------------------------
// Trainer (src/train/trainer.cpp)

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
