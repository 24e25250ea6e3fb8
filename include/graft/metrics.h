// Losses and classification metrics (src/train/metrics.cpp): cross-entropy as
// torch.nn.functional.cross_entropy (label_smoothing, weight), the causal-LM loss, accuracy, F1, confusion.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graft/causal_lm.h"  // causal_lm_loss, which the metrics of a language model use

namespace graft {

// Mean cross-entropy of logits (N, C) against int64 labels (N), as
// torch.nn.functional.cross_entropy(logits, labels, weight=class_weights, label_smoothing=eps):
//   l_i = (1 - eps) * w[y_i] * -log p_i[y_i] + eps / C * sum_c w[c] * -log p_i[c],
//   loss = sum_i l_i / sum_i w[y_i]  (plain mean without weights).
// class_weights: undefined or (C) float.
torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                  double label_smoothing = 0.0, const torch::Tensor& class_weights = {});

// Classes a classifier may have (ImageNet-21k has 21,841): more is refused by name.
constexpr int64_t kMaxClasses = 100000;
// Classes up to which Metrics holds the dense confusion matrix, and reports and pictures show it; above,
// C x C cells would dwarf the run (25,000 classes: 5 GB), and only the per-class figures are kept.
constexpr int64_t kMaxConfusionClasses = 200;

struct Metrics {
  int64_t samples = 0;       // examples, or predicted tokens for token-level metrics
  bool token_level = false;  // causal LM: accuracy of next-token predictions, no classes
  int64_t num_classes = 0;
  double loss = 0.0;                            // mean over samples
  double accuracy = 0.0;                        // top-1
  std::optional<double> top5;                   // only when num_classes > 5
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]; empty above kMaxConfusionClasses
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
  // Sparse confusion counts, (true, predicted) -> count: at most one cell per sample, whatever the class
  // count. Per class: support (true), predicted, correct.
  std::map<std::pair<int64_t, int64_t>, int64_t> cells_;
  void set_classes(int64_t num_classes);
};

// Per-class table (precision, recall, F1, support), macro/weighted averages, accuracy, then the
// confusion matrix (up to kMaxConfusionClasses). Missing class names are shown as their index.
std::string metrics_report(const Metrics& metrics, const std::vector<std::string>& class_names = {});

}  // namespace graft
