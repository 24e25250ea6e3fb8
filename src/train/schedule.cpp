// Learning-rate schedules as pure functions of the optimiser step, applied before every step.
// Shapes follow PyTorch's StepLR and Hugging Face transformers' optimization.py
// (get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup), with a linear warm-up from
// warmup_start (Goyal et al. 2017, "Accurate, Large Minibatch SGD") and a cosine floor (timm's lr_min).
#include <cmath>

#include "graft/trainer.h"

namespace graft {
namespace {

constexpr double kPi = 3.14159265358979323846;

void check_schedule(const ScheduleConfig& config) {
  if (config.name != "constant" && config.name != "step" && config.name != "cosine" &&
      config.name != "linear")
    throw Error("unknown schedule '" + config.name + "'; expected constant, step, cosine or linear");
  if (config.warmup_steps < 0)
    throw Error("warmup_steps must be >= 0, got " + std::to_string(config.warmup_steps));
  if (!(config.warmup_start >= 0.0 && config.warmup_start <= 1.0))
    throw Error("warmup_start must lie in [0, 1], got " + std::to_string(config.warmup_start));
  if (config.name == "step" && config.step_size <= 0)
    throw Error("step schedule: step_size must be > 0, got " + std::to_string(config.step_size));
  if (config.name == "step" && !(config.gamma > 0.0))
    throw Error("step schedule: gamma must be > 0, got " + std::to_string(config.gamma));
  if (!(config.min_factor >= 0.0 && config.min_factor <= 1.0))
    throw Error("cosine schedule: min_factor must lie in [0, 1], got " + std::to_string(config.min_factor));
}

}  // namespace

double lr_factor(const ScheduleConfig& config, int64_t step, int64_t total_steps, int64_t steps_per_epoch) {
  check_schedule(config);
  const int64_t warmup = config.warmup_steps;
  double warm = 1.0;
  if (step < warmup)
    warm = config.warmup_start +
           (1.0 - config.warmup_start) * static_cast<double>(step) / static_cast<double>(warmup);

  double shape = 1.0;
  if (config.name == "step") {
    const int64_t size =
        config.step_size * (config.step_size_in_epochs ? std::max<int64_t>(1, steps_per_epoch) : 1);
    shape = std::pow(config.gamma, static_cast<double>(std::max<int64_t>(0, step) / size));
  } else if (config.name == "cosine" || config.name == "linear") {
    const int64_t decay_steps = total_steps - warmup;
    double progress =
        decay_steps > 0 ? static_cast<double>(step - warmup) / static_cast<double>(decay_steps) : 1.0;
    progress = std::min(1.0, std::max(0.0, progress));
    if (config.name == "cosine")
      shape = config.min_factor + (1.0 - config.min_factor) * 0.5 * (1.0 + std::cos(kPi * progress));
    else
      shape = 1.0 - progress;
  }
  return warm * shape;
}

LrSchedule::LrSchedule(ScheduleConfig config, int64_t total_steps, int64_t steps_per_epoch)
    : config_(std::move(config)), total_steps_(total_steps), steps_per_epoch_(steps_per_epoch) {
  check_schedule(config_);
  if (total_steps_ <= 0) throw Error("schedule needs total_steps > 0, got " + std::to_string(total_steps_));
  if (steps_per_epoch_ <= 0)
    throw Error("schedule needs steps_per_epoch > 0, got " + std::to_string(steps_per_epoch_));
}

double LrSchedule::factor(int64_t step) const {
  return lr_factor(config_, step, total_steps_, steps_per_epoch_);
}

void set_lr(GroupedOptimizer& optimizer, const LrSchedule& schedule, int64_t step) {
  scale_lr(optimizer, schedule.factor(step));
}

}  // namespace graft
