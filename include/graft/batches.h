// Where a Trainer gets its batches (src/train/trainer.cpp): the interface and batches from tensors.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace graft {

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

}  // namespace graft
