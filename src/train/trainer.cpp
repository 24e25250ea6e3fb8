// The training loop, independent of any architecture: a module for parameters and state, a forward
// function giving logits, and batch sources. Per epoch: train with the progress bar, validate, append
// metrics.csv, save checkpoints/last (and checkpoints/best on improvement), apply early stopping.
//
// Reproducibility: fit() seeds torch's global generator and the batch sources; the checkpoint carries
// the generator state, optimiser state, schedule step and early-stopping counters, so that a run
// resumed from checkpoints/last ends with exactly the weights of an uninterrupted run (CPU).
// Keras semantics for EarlyStopping (patience, min_delta) and ModelCheckpoint(save_best_only).
#include "graft/trainer.h"

#include <torch/nn/utils/clip_grad.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "graft/files.h"
#include "graft/progress.h"
#include "layers/conv_bn.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

constexpr const char* kMetricsHeader =
    "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_top5,lr,seconds";

const std::vector<std::string> kMonitors = {"val_loss",     "val_accuracy", "val_top5",
                                            "val_macro_f1", "train_loss",   "train_accuracy"};

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

std::string csv_cell(const std::optional<double>& value, const char* pattern) {
  return value ? format(pattern, *value) : std::string();
}

std::string csv_row(const EpochResult& r, bool perplexity) {
  std::ostringstream row;
  row << r.epoch << ',' << format("%.6f", r.train_loss) << ',' << format("%.6f", r.train_accuracy) << ','
      << csv_cell(r.val_loss, "%.6f") << ',' << csv_cell(r.val_accuracy, "%.6f") << ','
      << csv_cell(r.val_top5, "%.6f") << ',' << format("%.6g", r.lr) << ',' << format("%.3f", r.seconds);
  if (perplexity) row << ',' << (r.val_loss ? format("%.4f", std::exp(*r.val_loss)) : std::string());
  row << '\n';
  return row.str();
}

std::vector<uint8_t> generator_state(torch::Device device) {
  at::Generator generator = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(generator.mutex());
  const torch::Tensor state = generator.get_state().contiguous();
  const uint8_t* data = state.data_ptr<uint8_t>();
  return std::vector<uint8_t>(data, data + state.numel());
}

void set_generator_state(torch::Device device, const std::vector<uint8_t>& bytes) {
  at::Generator generator = at::globalContext().defaultGenerator(device);
  torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

std::string epoch_summary(const EpochResult& r, int64_t epochs, const std::string& monitor, bool perplexity) {
  std::ostringstream line;
  line << "epoch " << r.epoch << '/' << epochs << "  loss " << format("%.4f", r.train_loss) << " acc "
       << format("%.4f", r.train_accuracy);
  if (r.val_loss) line << "  val_loss " << format("%.4f", *r.val_loss);
  if (r.val_accuracy) line << " val_acc " << format("%.4f", *r.val_accuracy);
  if (r.val_top5) line << " val_top5 " << format("%.4f", *r.val_top5);
  if (perplexity && r.val_loss) line << " val_ppl " << format("%.2f", std::exp(*r.val_loss));
  line << "  lr " << format("%.3g", r.lr) << "  " << format("%.1f", r.seconds) << 's';
  if (r.improved) line << "  (best " << monitor << ')';
  return line.str();
}

// " (the last good checkpoint, epoch N, is in DIR)" when the run has one.
std::string last_good_checkpoint_note(const TrainConfig& config, int64_t epochs_done,
                                      const std::string& last_dir) {
  if (config.out_dir.empty() || !config.save_checkpoints || epochs_done <= 0) return "";
  return " (the last good checkpoint, epoch " + std::to_string(epochs_done) + ", is in " + last_dir + ")";
}

// The first parameter or buffer holding NaN or Inf, as "parameter 'name' is nan"; empty when all are finite.
// The loss can stay finite while the weights overflow (at a huge rate BatchNorm's running_var goes to inf and
// the network predicts a constant): such a state must not become a checkpoint.
std::string first_non_finite(const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  auto check = [](const char* kind, const std::string& name, const torch::Tensor& t) -> std::string {
    if (!t.is_floating_point() || torch::isfinite(t).all().item<bool>()) return "";
    return std::string(kind) + " '" + name + "' is " + (torch::isnan(t).any().item<bool>() ? "nan" : "inf");
  };
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    if (auto found = check("parameter", item.key(), item.value()); !found.empty()) return found;
  for (const auto& item : model.named_buffers(/*recurse=*/true))
    if (auto found = check("buffer", item.key(), item.value()); !found.empty()) return found;
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Early stopping

EarlyStopping::EarlyStopping(const EarlyStoppingConfig& config) : config_(config) {
  if (std::find(kMonitors.begin(), kMonitors.end(), config_.monitor) == kMonitors.end())
    throw Error("unknown monitor '" + config_.monitor +
                "'; expected val_loss, val_accuracy, val_top5, val_macro_f1, train_loss or train_accuracy");
  if (config_.mode == "auto")
    minimise_ = config_.monitor.find("loss") != std::string::npos;
  else if (config_.mode == "min" || config_.mode == "max")
    minimise_ = config_.mode == "min";
  else
    throw Error("unknown early-stopping mode '" + config_.mode + "'; expected min, max or auto");
  if (config_.patience < 0) throw Error("early-stopping patience must be >= 0");
  if (!(config_.min_delta >= 0)) throw Error("early-stopping min_delta must be >= 0");
}

bool EarlyStopping::update(double value) {
  // As Keras: better by more than min_delta (the first finite value is always the new best).
  bool improved = false;
  if (std::isfinite(value)) {
    if (!has_best_)
      improved = true;
    else
      improved = minimise_ ? value < best_ - config_.min_delta : value > best_ + config_.min_delta;
  }
  if (improved) {
    has_best_ = true, best_ = value, wait_ = 0;
  } else {
    ++wait_;
  }
  return improved;
}

double monitored_value(const EpochResult& r, const std::string& monitor) {
  auto need = [&](const std::optional<double>& value) {
    if (!value)
      throw Error("monitor '" + monitor + "' has no value at epoch " + std::to_string(r.epoch) +
                  " (no validation data, or fewer than 6 classes for val_top5)");
    return *value;
  };
  if (monitor == "val_loss") return need(r.val_loss);
  if (monitor == "val_accuracy") return need(r.val_accuracy);
  if (monitor == "val_top5") return need(r.val_top5);
  if (monitor == "val_macro_f1") return need(r.val_macro_f1);
  if (monitor == "train_loss") return r.train_loss;
  if (monitor == "train_accuracy") return r.train_accuracy;
  throw Error("unknown monitor '" + monitor + "'");
}

// ---------------------------------------------------------------------------------------------------
// In-memory batches

TensorBatchSource::TensorBatchSource(torch::Tensor inputs, torch::Tensor labels, int64_t batch_size,
                                     bool shuffle, bool drop_last)
    : inputs_(std::move(inputs)),
      labels_(std::move(labels)),
      batch_size_(batch_size),
      shuffle_(shuffle),
      drop_last_(drop_last) {
  if (!inputs_.defined() || inputs_.dim() < 1)
    throw Error("TensorBatchSource: inputs must be a tensor (N, ...)");
  if (!labels_.defined() || labels_.dim() < 1 || labels_.size(0) != inputs_.size(0))
    throw Error("TensorBatchSource: labels must be (N) or (N, T) with N = " +
                std::to_string(inputs_.size(0)));
  if (c10::isFloatingType(labels_.scalar_type()))
    throw Error("TensorBatchSource: labels must be integer class indices");
  labels_ = labels_.to(torch::kLong);
  if (batch_size_ <= 0) throw Error("TensorBatchSource: batch_size must be > 0");
}

size_t TensorBatchSource::num_batches() {
  const int64_t n = inputs_.size(0);
  return static_cast<size_t>(drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_);
}

void TensorBatchSource::start_epoch(int64_t epoch) {
  const int64_t n = inputs_.size(0);
  order_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order_[static_cast<size_t>(i)] = i;
  if (shuffle_) {
    // Fisher-Yates with an explicit draw, so the order depends only on (seed, epoch), not on the
    // standard library's std::shuffle.
    std::seed_seq seq{static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32),
                      static_cast<uint32_t>(epoch),
                      static_cast<uint32_t>(static_cast<uint64_t>(epoch) >> 32)};
    std::mt19937_64 rng(seq);
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng() % i]);
  }
  cursor_ = 0;
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> TensorBatchSource::next() {
  if (order_.size() != static_cast<size_t>(inputs_.size(0))) start_epoch(0);
  const size_t remaining = order_.size() - cursor_;
  if (remaining == 0 || (drop_last_ && remaining < static_cast<size_t>(batch_size_))) return std::nullopt;
  const size_t count = std::min(remaining, static_cast<size_t>(batch_size_));
  const torch::Tensor index =
      torch::tensor(std::vector<int64_t>(order_.begin() + static_cast<std::ptrdiff_t>(cursor_),
                                         order_.begin() + static_cast<std::ptrdiff_t>(cursor_ + count)),
                    torch::kLong);
  cursor_ += count;
  return std::make_pair(inputs_.index_select(0, index), labels_.index_select(0, index));
}

// ---------------------------------------------------------------------------------------------------
// Trainer

Trainer::Trainer(std::shared_ptr<torch::nn::Module> model, Forward forward, TrainConfig config)
    : model_(std::move(model)),
      forward_(std::move(forward)),
      config_(std::move(config)),
      early_stopping_(config_.early_stopping),
      seed_(config_.seed) {
  if (!model_) throw Error("Trainer: no model");
  if (!forward_) throw Error("Trainer: no forward function");
  if (config_.objective != "classify" && config_.objective != "causal-lm")
    throw Error("Trainer: objective '" + config_.objective + "': expected classify or causal-lm");
  model_->to(config_.device);
  if (!config_.class_weights.empty())
    class_weights_ = torch::tensor(config_.class_weights, torch::kDouble).to(torch::kFloat);
  std::vector<ParamGroup> groups = config_.param_groups;
  if (groups.empty()) groups.push_back({model_->parameters(/*recurse=*/true), 1.0, "all"});
  bool any_trainable = false;
  for (const auto& group : groups)
    for (const auto& p : group.params) any_trainable = any_trainable || (p.defined() && p.requires_grad());
  if (any_trainable) {
    set_param_groups(std::move(groups), config_.optimizer);
  } else {
    // A Trainer used only to evaluate a wholly frozen model needs no optimiser; fit() builds it (and
    // reports that nothing is trainable) if it is ever called.
    for (const auto& group : groups)
      for (const auto& p : group.params) param_name(p);
    optimizer_.config = config_.optimizer;
    pending_groups_ = std::move(groups);
  }
}

Trainer::~Trainer() = default;

std::ostream& Trainer::log() const {
  return config_.log ? *config_.log : std::cerr;
}

std::string Trainer::param_name(const torch::Tensor& tensor) const {
  for (const auto& item : model_->named_parameters(/*recurse=*/true))
    if (item.value().unsafeGetTensorImpl() == tensor.unsafeGetTensorImpl()) return item.key();
  throw Error("a parameter group holds a tensor of shape " + shape_str(tensor.sizes().vec()) +
              " that is not a parameter of the model given to the Trainer");
}

std::vector<torch::Tensor> Trainer::trainable_params() const {
  std::vector<torch::Tensor> params;
  for (const auto& group : optimizer_.optimizer->param_groups())
    for (const auto& p : group.params()) params.push_back(p);
  return params;
}

std::string Trainer::checkpoint_dir(const std::string& which) const {
  return (fs::path(config_.out_dir) / "checkpoints" / which).string();
}

void Trainer::set_param_groups(std::vector<ParamGroup> groups, std::optional<OptimizerConfig> optimizer) {
  for (const auto& group : groups)
    for (const auto& p : group.params) param_name(p);  // throws for a stranger
  optimizer_ = build_optimizer(optimizer.value_or(optimizer_.config), groups);
  if (schedule_.total_steps() > 0 && global_step_ > 0) set_lr(optimizer_, schedule_, global_step_);
}

TrainerState Trainer::capture_state() const {
  TrainerState s;
  s.epoch = epochs_done_;
  s.global_step = global_step_;
  s.has_best = early_stopping_.has_best();
  s.best_metric = early_stopping_.best();
  s.best_epoch = history_.best_epoch;
  s.epochs_without_improvement = early_stopping_.wait();
  s.finished = finished_;
  s.seed = seed_;
  s.precision = precision_name(config_.precision);
  s.history = history_.epochs;
  for (auto& r : s.history) r.val_metrics.reset();
  s.rng_state = generator_state(torch::kCPU);
  s.rng_device = config_.device.str();
  if (!config_.device.is_cpu()) s.device_rng_state = generator_state(config_.device);
  s.optimizer = optimizer_.config;
  const auto& torch_groups = optimizer_.optimizer->param_groups();
  for (size_t g = 0; g < torch_groups.size(); ++g) {
    TrainerState::Group group{optimizer_.group_names[g],
                              optimizer_.lr_mults[g],
                              {},
                              g < optimizer_.no_weight_decay.size() && optimizer_.no_weight_decay[g]};
    for (const auto& p : torch_groups[g].params()) group.params.push_back(param_name(p));
    s.groups.push_back(std::move(group));
  }
  for (const auto& item : model_->named_parameters(/*recurse=*/true))
    if (item.value().requires_grad()) s.trainable.push_back(item.key());
  return s;
}

void Trainer::restore_from_checkpoint() {
  const std::string dir = checkpoint_dir("last");
  const std::optional<std::string> found = find_checkpoint(dir);
  if (!found) {
    if (fs::exists(dir))
      throw Error("cannot resume: checkpoint '" + dir +
                  "' is incomplete (trainer.json missing or a file has the wrong size) and no previous "
                  "complete checkpoint lies beside it; remove it to start over");
    log() << "resume: no checkpoint in " << dir << ", starting from epoch 1\n";
    return;
  }
  const TrainerState state = read_trainer_state(*found);
  load_checkpoint_model(*found, *model_);

  // requires_grad as saved: a callback may have unfrozen layers after the run was configured.
  const std::unordered_set<std::string> trainable(state.trainable.begin(), state.trainable.end());
  std::unordered_map<std::string, torch::Tensor> by_name;
  for (auto& item : model_->named_parameters(/*recurse=*/true)) {
    item.value().set_requires_grad(trainable.count(item.key()) > 0);
    by_name.emplace(item.key(), item.value());
  }
  std::vector<ParamGroup> groups;
  for (const auto& saved : state.groups) {
    ParamGroup group{{}, saved.lr_mult, saved.name, saved.no_weight_decay};
    for (const auto& name : saved.params) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error("cannot resume from '" + *found + "': its optimiser holds parameter '" + name +
                    "', which the model does not have; the model differs from the one trained");
      group.params.push_back(it->second);
    }
    groups.push_back(std::move(group));
  }
  optimizer_ = build_optimizer(state.optimizer, groups);
  load_checkpoint_optimizer(*found, *model_, *optimizer_.optimizer);

  epochs_done_ = state.epoch;
  global_step_ = state.global_step;
  finished_ = state.finished;
  if (state.seed != seed_)
    log() << "resume: the checkpoint was trained with seed " << state.seed
          << ", continuing with it (config says " << seed_ << ")\n";
  seed_ = state.seed;
  // The same precision as before, so that the resumed run repeats the uninterrupted one.
  if (state.precision != precision_name(config_.precision)) {
    log() << "resume: the checkpoint was trained at --precision " << state.precision << ", continuing at it"
          << " (config says " << precision_name(config_.precision) << ")\n";
    config_.precision = state.precision == "bf16"   ? Precision::kBFloat16
                        : state.precision == "fp16" ? Precision::kFloat16
                                                    : Precision::kFloat32;
  }
  history_ = TrainHistory{};
  history_.epochs = state.history;
  history_.best_epoch = state.best_epoch;
  history_.best_metric = state.best_metric;
  early_stopping_.restore(state.has_best, state.best_metric, state.epochs_without_improvement);
  if (!state.rng_state.empty()) set_generator_state(torch::kCPU, state.rng_state);
  if (!config_.device.is_cpu() && !state.device_rng_state.empty() && state.rng_device == config_.device.str())
    set_generator_state(config_.device, state.device_rng_state);
  log() << "resumed from " << *found << " after epoch " << epochs_done_ << " (step " << global_step_ << ")\n";

  // Killed between writing checkpoints/last and checkpoints/best of an improving epoch: last says that
  // epoch is the best, best holds an older one (or none). Both were written from the same model, optimiser
  // and state, all restored now, so best is rewritten from them as the finished epoch would have.
  if (config_.save_checkpoints && state.has_best && state.best_epoch == state.epoch && state.epoch > 0) {
    const std::string best_dir = checkpoint_dir("best");
    const std::optional<std::string> best = find_checkpoint(best_dir);
    if (!best || read_trainer_state(*best).epoch != state.epoch) {
      log() << "resume: " << best_dir << " is older than epoch " << state.epoch
            << ", the best so far (the run stopped while writing it); writing it again\n";
      save_checkpoint(best_dir, *model_, optimizer_.optimizer.get(), state);
    }
  }
}

void Trainer::rewrite_metrics_csv() {
  std::string text = std::string(kMetricsHeader) + (causal_lm() ? ",val_perplexity" : "") + "\n";
  for (const auto& r : history_.epochs) text += csv_row(r, causal_lm());
  write_file_atomic((fs::path(config_.out_dir) / "metrics.csv").string(), text);
}

// metrics.csv is the header and one row per epoch of history_, which already ends with `result`: the
// file is rewritten whole (atomically, a few hundred bytes an epoch) rather than appended to, so that a
// kill or a full disk mid-append cannot leave half a row, and a write error names its reason.
void Trainer::append_metrics_csv(const EpochResult& result) {
  if (history_.epochs.empty() || history_.epochs.back().epoch != result.epoch)
    throw Error("metrics.csv: epoch " + std::to_string(result.epoch) + " is not the last of the history");
  rewrite_metrics_csv();
}

torch::Tensor Trainer::loss_of(const torch::Tensor& logits, const torch::Tensor& labels) const {
  if (causal_lm()) return causal_lm_loss(logits, labels);
  return classification_loss(logits, labels, config_.label_smoothing, class_weights_);
}

void Trainer::accumulate(MetricsAccumulator& accumulator, const torch::Tensor& logits,
                         const torch::Tensor& labels, double loss) const {
  if (causal_lm())
    accumulator.add_tokens(logits, labels, loss);
  else
    accumulator.add(logits, labels, loss);
}

Metrics Trainer::run_eval(BatchSource& source, const std::string& label, std::unique_ptr<ProgressBar>* bar) {
  torch::NoGradGuard no_grad;
  BatchNormFolding folding;  // eval mode: every frozen conv + BatchNorm pair runs as one convolution
  const bool was_training = model_->is_training();
  model_->eval();
  const int64_t total = static_cast<int64_t>(source.num_batches());
  if (config_.progress && bar) *bar = std::make_unique<ProgressBar>(label, total, log(), config_.sample_unit);
  source.start_epoch(0);
  MetricsAccumulator accumulator;
  int64_t done = 0;
  while (auto batch = source.next()) {
    const torch::Tensor inputs = batch->first.to(config_.device);
    const torch::Tensor labels = batch->second.to(config_.device);
    torch::Tensor logits;
    double loss = 0;
    {
      Autocast autocast(config_.precision, config_.device);
      logits = forward_(inputs);
      loss = loss_of(logits, labels).item<double>();
    }
    accumulate(accumulator, logits, labels, loss);
    ++done;
    if (bar && *bar)
      (*bar)->update(done, accumulator.samples(), accumulator.mean_loss(), accumulator.accuracy());
  }
  if (was_training) model_->train(true);
  return accumulator.result();
}

Metrics Trainer::evaluate(BatchSource& source, const std::string& label) {
  std::unique_ptr<ProgressBar> bar;
  Metrics metrics = run_eval(source, label, &bar);
  std::string summary =
      label + ": loss " + format("%.4f", metrics.loss) + " acc " + format("%.4f", metrics.accuracy);
  if (metrics.top5) summary += " top5 " + format("%.4f", *metrics.top5);
  if (metrics.token_level) summary += " ppl " + format("%.2f", metrics.perplexity());
  summary += " (" + std::to_string(metrics.samples) + " samples)";
  if (bar) bar->finish(summary);
  return metrics;
}

EpochResult Trainer::run_epoch(BatchSource& train, BatchSource* val, int64_t epoch_index) {
  const auto start = std::chrono::steady_clock::now();
  EpochResult result;
  result.epoch = epoch_index + 1;
  model_->train(true);
  train.start_epoch(epoch_index);
  std::unique_ptr<ProgressBar> bar;
  if (config_.progress)
    bar = std::make_unique<ProgressBar>(
        "epoch " + std::to_string(result.epoch) + "/" + std::to_string(config_.epochs),
        static_cast<int64_t>(train.num_batches()), log(), config_.sample_unit);
  MetricsAccumulator accumulator;
  int64_t batches = 0;
  // Frozen conv + BatchNorm pairs (BatchNorm on running statistics) run as one convolution; the cache
  // lives for the epoch, and pairs that train are recomputed each step as they are.
  BatchNormFolding folding;
  while (auto batch = train.next()) {
    const torch::Tensor inputs = batch->first.to(config_.device);
    const torch::Tensor labels = batch->second.to(config_.device);
    set_lr(optimizer_, schedule_, global_step_);
    optimizer_.optimizer->zero_grad();
    torch::Tensor logits, loss;
    {
      Autocast autocast(config_.precision, config_.device);  // the backward pass follows the forward's types
      logits = forward_(inputs);
      loss = loss_of(logits, labels);
    }
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      if (bar) bar->finish("");
      std::string message = std::string("loss is ") + (std::isnan(loss_value) ? "nan" : "inf") +
                            " at epoch " + std::to_string(result.epoch) + " step " +
                            std::to_string(global_step_ + 1) +
                            "; lower --lr, enable --grad-clip, check the data";
      throw NonFiniteLoss(message + last_good_checkpoint_note(config_, epochs_done_, checkpoint_dir("last")));
    }
    loss.backward();
    if (config_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(trainable_params(), config_.grad_clip);
    optimizer_.optimizer->step();
    ++global_step_;
    ++batches;
    accumulate(accumulator, logits.detach(), labels, loss_value);
    if (bar) bar->update(batches, accumulator.samples(), accumulator.mean_loss(), accumulator.accuracy());
  }
  if (batches == 0)
    throw Error("epoch " + std::to_string(result.epoch) + ": the training source gave no batches");
  result.global_step = global_step_;
  result.train_loss = accumulator.mean_loss();
  result.train_accuracy = accumulator.accuracy();
  result.lr = optimizer_.config.lr * schedule_.factor(global_step_ - 1);

  std::unique_ptr<ProgressBar> val_bar;
  if (val) {
    if (bar) bar->finish("");  // keep the train bar's last state on screen
    const Metrics metrics = run_eval(*val, "  val", &val_bar);
    result.val_loss = metrics.loss;
    result.val_accuracy = metrics.accuracy;
    result.val_top5 = metrics.top5;
    result.val_macro_f1 = metrics.macro_f1;
    result.val_metrics = metrics;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.improved = early_stopping_.update(monitored_value(result, early_stopping_.config().monitor));
  const std::string summary =
      epoch_summary(result, config_.epochs, early_stopping_.config().monitor, causal_lm());
  // The summary replaces the last bar on a terminal; in logs it follows it.
  if (val_bar)
    val_bar->finish(summary);
  else if (bar)
    bar->finish(summary);
  else
    log() << summary << '\n' << std::flush;
  return result;
}

namespace {

// A run directory ready for epochs: checkpoints/ created, and the leftovers of an earlier run killed while
// writing removed: files (metrics.csv, model.safetensors) and checkpoint folders (checkpoints/best.tmp-*,
// which only the next improving epoch would otherwise clean up). They are never read; NAME.old-* folders
// stay, they may hold the only complete checkpoint.
void prepare_run_directory(const std::string& out_dir) {
  std::error_code error;
  fs::create_directories(fs::path(out_dir) / "checkpoints", error);
  if (error) throw Error("cannot create run directory '" + out_dir + "': " + error.message());
  remove_stale_temporaries(out_dir);
  for (const auto& entry : fs::directory_iterator(fs::path(out_dir) / "checkpoints", error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("last.tmp-", 0) == 0 || name.rfind("best.tmp-", 0) == 0)
      fs::remove_all(entry.path(), error);
  }
}

std::string early_stop_reason(const EarlyStoppingConfig& es, int64_t epoch, const TrainHistory& history) {
  return "early stopping after epoch " + std::to_string(epoch) + ": " + es.monitor +
         " has not improved by more than " + format("%g", es.min_delta) + " for " +
         std::to_string(es.patience) + " epochs (best " + format("%.4f", history.best_metric) + " at epoch " +
         std::to_string(history.best_epoch) + ")";
}

// The training curves, and the last epoch's confusion matrix and report (fit_and_check rewrites the
// report for the restored best epoch).
void write_final_pictures(const TrainConfig& config, const TrainHistory& history) {
  if (history.epochs.empty()) return;
  const fs::path out = config.out_dir;
  write_training_curves_svg((out / "training_curves.svg").string(), history.epochs, history.marks,
                            config.objective == "causal-lm");
  const auto& last = history.epochs.back().val_metrics;
  if (!last || last->token_level) return;
  write_confusion_matrix_svg((out / "confusion_matrix.svg").string(), *last, config.class_names);
  write_file_atomic((out / "val_report.txt").string(), metrics_report(*last, config.class_names));
}

}  // namespace

TrainHistory Trainer::fit(BatchSource& train, BatchSource* val) {
  if (config_.epochs <= 0) throw Error("epochs must be > 0, got " + std::to_string(config_.epochs));
  const int64_t steps_per_epoch = static_cast<int64_t>(train.num_batches());
  if (steps_per_epoch <= 0) throw Error("the training source has no batches: is the data set empty?");
  schedule_ = LrSchedule(config_.schedule, config_.epochs * steps_per_epoch, steps_per_epoch);

  // Without validation data a val_* monitor falls back to its training counterpart.
  if (!val && config_.early_stopping.monitor.rfind("val_", 0) == 0) {
    EarlyStoppingConfig fallback = config_.early_stopping;
    fallback.monitor = fallback.monitor == "val_loss" ? "train_loss" : "train_accuracy";
    if (config_.early_stopping.enabled)
      log() << "note: no validation data; early stopping monitors " << fallback.monitor << " instead of "
            << config_.early_stopping.monitor << '\n';
    early_stopping_ = EarlyStopping(fallback);
  }

  torch::manual_seed(config_.seed);
  const bool writes = !config_.out_dir.empty();
  if (config_.resume && !writes)
    throw Error("resume needs a run directory (out_dir) holding checkpoints/last");
  if (writes) prepare_run_directory(config_.out_dir);
  if (config_.resume) restore_from_checkpoint();
  if (!optimizer_.optimizer) optimizer_ = build_optimizer(optimizer_.config, pending_groups_);
  if (writes) rewrite_metrics_csv();  // header, plus the resumed history
  train.set_seed(seed_);
  if (val) val->set_seed(seed_);

  if (finished_) {
    log() << "the run in " << config_.out_dir << " already stopped early after epoch " << epochs_done_
          << "; nothing to do\n";
    history_.stopped_early = true;
    return history_;
  }
  if (epochs_done_ >= config_.epochs)
    log() << "the run in " << config_.out_dir << " already has " << epochs_done_ << " of " << config_.epochs
          << " epochs; nothing to do\n";
  for (int64_t epoch_index = epochs_done_; epoch_index < config_.epochs; ++epoch_index) {
    EpochResult result = run_epoch(train, val, epoch_index);
    if (const std::string broken = first_non_finite(*model_); !broken.empty())
      throw NonFiniteLoss(broken + " after epoch " + std::to_string(result.epoch) +
                          " (the weights overflowed, though the loss stayed finite); lower --lr, enable "
                          "--grad-clip, check the data" +
                          last_good_checkpoint_note(config_, epochs_done_, checkpoint_dir("last")));
    if (result.improved) {
      history_.best_epoch = result.epoch;
      history_.best_metric = early_stopping_.best();
    }
    for (auto& callback : config_.on_epoch_end) callback(*this, result);
    history_.epochs.push_back(result);
    epochs_done_ = result.epoch;
    finished_ = early_stopping_.should_stop();
    if (writes) {
      if (config_.save_checkpoints) {
        const auto* optimizer = optimizer_.optimizer.get();
        const TrainerState state = capture_state();
        save_checkpoint(checkpoint_dir("last"), *model_, optimizer, state);
        if (result.improved) save_checkpoint(checkpoint_dir("best"), *model_, optimizer, state);
      }
      append_metrics_csv(result);
      if (config_.write_plots)
        write_training_curves_svg((fs::path(config_.out_dir) / "training_curves.svg").string(),
                                  history_.epochs, history_.marks, causal_lm());
    }
    if (finished_) {
      history_.stopped_early = true;
      history_.stop_reason = early_stop_reason(early_stopping_.config(), result.epoch, history_);
      log() << history_.stop_reason << '\n' << std::flush;
      break;
    }
    if (result.stop_requested) {
      history_.stop_reason = "stopped by a callback after epoch " + std::to_string(result.epoch);
      log() << history_.stop_reason << '\n' << std::flush;
      break;
    }
  }
  // Again after the loop: a run killed after its last checkpoint but before the picture resumes with no
  // epochs left to run.
  if (writes && config_.write_plots) write_final_pictures(config_, history_);
  return history_;
}

void write_val_report(const std::string& out_dir, const Metrics& metrics,
                      const std::vector<std::string>& class_names, std::ostream& log) {
  const std::string report = metrics_report(metrics, class_names);
  if (!metrics.token_level && !metrics.confusion.empty())
    write_confusion_matrix_svg((fs::path(out_dir) / "confusion_matrix.svg").string(), metrics, class_names);
  write_file_atomic((fs::path(out_dir) / "val_report.txt").string(), report);
  log << report;
}

int64_t Trainer::restore_best() {
  const int64_t last = epochs_done_;
  const std::string monitor = early_stopping_.config().monitor;
  const std::optional<std::string> best = config_.out_dir.empty() || !config_.save_checkpoints
                                              ? std::nullopt
                                              : find_checkpoint(checkpoint_dir("best"));
  if (!best || history_.best_epoch <= 0) {
    if (last > 0)
      log() << "the saved model is the last epoch's (" << last << "): no best checkpoint by " << monitor
            << "\n";
    return last;
  }
  if (history_.best_epoch == last) {
    log() << "the saved model is the last epoch's (" << last << "), also the best by " << monitor << " ("
          << format("%.4f", history_.best_metric) << ")\n";
    return last;
  }
  load_checkpoint_model(*best, *model_);
  history_.marks.push_back({static_cast<double>(history_.best_epoch), "kept: best " + monitor});
  if (config_.write_plots)  // best exists, so out_dir does
    write_training_curves_svg((fs::path(config_.out_dir) / "training_curves.svg").string(), history_.epochs,
                              history_.marks, causal_lm());
  log() << "restored epoch " << history_.best_epoch << " of " << last << ": best " << monitor << " "
        << format("%.4f", history_.best_metric) << " (epochs " << history_.best_epoch + 1 << "-" << last
        << " did not improve on it); the saved model and the final report are that epoch's\n";
  return history_.best_epoch;
}

}  // namespace graft
