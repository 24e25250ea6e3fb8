// The record of a run (src/train/trainer.cpp): epochs, history, and early stopping with Keras'
// EarlyStopping semantics.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "graft/metrics.h"

namespace graft {

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

// A moment of a run worth a line across its training curves ("stage 2", "kept").
struct CurveMark {
  double epoch = 0;  // 2.5: between epochs 2 and 3
  std::string label;
};

struct TrainHistory {
  std::vector<EpochResult> epochs;
  std::vector<CurveMark> marks;  // drawn on training_curves.svg; not saved in checkpoints
  int64_t best_epoch = 0;        // 0: none
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
  // The weights a run ends with: the best epoch's by `monitor` (restored from checkpoints/best, as Keras'
  // restore_best_weights=True) or the last epoch's.
  std::string keep = "best";  // best | last
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

}  // namespace graft
