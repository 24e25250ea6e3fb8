// Learning-rate schedules with warm-up (src/train/schedule.cpp), as Hugging Face transformers
// optimization.py (linear, cosine) and torch.optim.lr_scheduler (step).
#pragma once
#include <cstdint>
#include <string>

#include "graft/optim.h"

namespace graft {

// Steps are optimiser steps, counted from 0.

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

}  // namespace graft
