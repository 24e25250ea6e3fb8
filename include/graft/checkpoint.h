// Checkpoints that survive a crash (src/train/checkpoint.cpp).
#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "graft/files.h"  // write_file_atomic, which checkpoints are written with
#include "graft/history.h"
#include "graft/optim.h"

namespace graft {

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
  std::string precision = "fp32";  // graft/precision.h's name of the run's forward precision
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

void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace graft
