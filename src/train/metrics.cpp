// The classification loss and the metrics of a pass: loss, top-1/top-5 accuracy, confusion matrix
// (rows: true class, columns: predicted), per-class precision/recall/F1 and macro F1, with
// scikit-learn's zero_division=0 convention (an undefined ratio is 0, never NaN).
#include <torch/nn/functional/loss.h>

#include <cmath>
#include <cstdio>
#include <sstream>

#include "graft/trainer.h"

namespace graft {
namespace {

void check_batch(const torch::Tensor& logits, const torch::Tensor& labels, const char* where) {
  if (logits.dim() != 2)
    throw Error(std::string(where) + ": logits must be (N, C), got shape " + shape_str(logits.sizes().vec()));
  if (labels.dim() != 1 || labels.size(0) != logits.size(0))
    throw Error(std::string(where) + ": labels must be (N) with N = " + std::to_string(logits.size(0)) +
                ", got shape " + shape_str(labels.sizes().vec()));
  if (labels.scalar_type() != torch::kLong)
    throw Error(std::string(where) + ": labels must be int64 class indices, got " +
                std::string(c10::toString(labels.scalar_type())));
}

void check_label_range(const torch::Tensor& labels, int64_t num_classes, const char* where) {
  if (labels.numel() == 0) return;
  const int64_t low = labels.min().item<int64_t>(), high = labels.max().item<int64_t>();
  if (low < 0 || high >= num_classes)
    throw Error(std::string(where) + ": label " + std::to_string(low < 0 ? low : high) + " is outside [0, " +
                std::to_string(num_classes) + "); the model has " + std::to_string(num_classes) +
                " outputs: check the head's class count and the labels");
}

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string pad_left(const std::string& text, size_t width) {
  return text.size() >= width ? text : std::string(width - text.size(), ' ') + text;
}

std::string pad_right(const std::string& text, size_t width) {
  return text.size() >= width ? text : text + std::string(width - text.size(), ' ');
}

}  // namespace

torch::Tensor classification_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                  double label_smoothing, const torch::Tensor& class_weights) {
  check_batch(logits, labels, "loss");
  check_label_range(labels, logits.size(1), "loss");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    throw Error("label_smoothing must lie in [0, 1], got " + std::to_string(label_smoothing));
  namespace F = torch::nn::functional;
  auto options = F::CrossEntropyFuncOptions().label_smoothing(label_smoothing);
  if (class_weights.defined()) {
    if (class_weights.dim() != 1 || class_weights.size(0) != logits.size(1))
      throw Error("class_weights has " + std::to_string(class_weights.numel()) +
                  " entries, expected one per class (" + std::to_string(logits.size(1)) + ")");
    options.weight(class_weights.to(logits.device(), logits.scalar_type()));
  }
  return F::cross_entropy(logits, labels, options);
}

MetricsAccumulator::MetricsAccumulator(int64_t num_classes) {
  if (num_classes < 0) throw Error("num_classes must be >= 0");
  set_classes(num_classes);
}

void MetricsAccumulator::set_classes(int64_t num_classes) {
  if (num_classes > kMaxClasses)
    throw Error("metrics: " + std::to_string(num_classes) + " classes, more than graft's limit of " +
                std::to_string(kMaxClasses));
  num_classes_ = num_classes;
}

void MetricsAccumulator::add(const torch::Tensor& logits_in, const torch::Tensor& labels_in,
                             double batch_loss) {
  check_batch(logits_in, labels_in, "metrics");
  if (token_level_) throw Error("metrics: class-level batch given to a token-level accumulator");
  torch::NoGradGuard no_grad;
  if (num_classes_ == 0) set_classes(logits_in.size(1));
  if (logits_in.size(1) != num_classes_)
    throw Error("metrics: logits have " + std::to_string(logits_in.size(1)) + " classes, expected " +
                std::to_string(num_classes_));
  const int64_t n = logits_in.size(0);
  if (n == 0) return;
  const torch::Tensor logits = logits_in.detach();
  const torch::Tensor labels = labels_in.to(logits.device());
  check_label_range(labels, num_classes_, "metrics");

  const torch::Tensor predicted = logits.argmax(1);
  // One cell per sample, never a C x C table per batch.
  const torch::Tensor truth_cpu = labels.to(torch::kCPU, torch::kLong).contiguous();
  const torch::Tensor predicted_cpu = predicted.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* truth = truth_cpu.data_ptr<int64_t>();
  const int64_t* guess = predicted_cpu.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) ++cells_[{truth[i], guess[i]}];
  correct_ += predicted.eq(labels).sum().item<int64_t>();
  if (num_classes_ > 5) {
    const torch::Tensor top5 = std::get<1>(logits.topk(5, /*dim=*/1));
    correct_top5_ += top5.eq(labels.unsqueeze(1)).any(1).sum().item<int64_t>();
  }
  samples_ += n;
  loss_sum_ += batch_loss * static_cast<double>(n);
}

double Metrics::perplexity() const {
  return std::exp(loss);
}

void MetricsAccumulator::add_tokens(const torch::Tensor& logits, const torch::Tensor& labels_in,
                                    double batch_loss) {
  if (num_classes_ != 0) throw Error("metrics: token-level batch given to a class-level accumulator");
  token_level_ = true;
  torch::NoGradGuard no_grad;
  const int64_t steps = logits.size(1) - 1;
  if (steps <= 0) return;
  const torch::Tensor predicted = logits.detach().narrow(1, 0, steps).argmax(-1);
  const torch::Tensor labels = labels_in.to(logits.device()).narrow(1, 1, steps);
  const torch::Tensor counted = labels.ne(-100);
  const int64_t n = counted.sum().item<int64_t>();
  correct_ += (predicted.eq(labels) & counted).sum().item<int64_t>();
  samples_ += n;
  loss_sum_ += batch_loss * static_cast<double>(n);
}

Metrics MetricsAccumulator::result() const {
  Metrics m;
  m.samples = samples_;
  m.token_level = token_level_;
  m.num_classes = num_classes_;
  m.loss = mean_loss();
  m.accuracy = accuracy();
  if (num_classes_ > 5)
    m.top5 = samples_ ? static_cast<double>(correct_top5_) / static_cast<double>(samples_) : 0.0;
  const size_t c = static_cast<size_t>(num_classes_);
  std::vector<int64_t> predicted(c, 0), correct(c, 0);
  m.support.assign(c, 0);
  if (num_classes_ <= kMaxConfusionClasses) m.confusion.assign(c, std::vector<int64_t>(c, 0));
  for (const auto& [cell, count] : cells_) {
    const auto [t, p] = cell;
    m.support[size_t(t)] += count;
    predicted[size_t(p)] += count;
    if (t == p) correct[size_t(t)] += count;
    if (!m.confusion.empty()) m.confusion[size_t(t)][size_t(p)] = count;
  }
  m.precision.assign(c, 0.0), m.recall.assign(c, 0.0), m.f1.assign(c, 0.0);
  double f1_sum = 0.0;
  for (size_t k = 0; k < c; ++k) {
    const int64_t predicted_k = predicted[k];
    const double tp = static_cast<double>(correct[k]);
    m.precision[k] = predicted_k ? tp / static_cast<double>(predicted_k) : 0.0;
    m.recall[k] = m.support[k] ? tp / static_cast<double>(m.support[k]) : 0.0;
    const double sum = m.precision[k] + m.recall[k];
    m.f1[k] = sum > 0 ? 2.0 * m.precision[k] * m.recall[k] / sum : 0.0;
    f1_sum += m.f1[k];
  }
  m.macro_f1 = c ? f1_sum / static_cast<double>(c) : 0.0;
  return m;
}

std::string metrics_report(const Metrics& m, const std::vector<std::string>& class_names) {
  if (m.token_level) {
    return "tokens " + std::to_string(m.samples) + "\nloss " + fixed(m.loss, 4) + "\nperplexity " +
           fixed(m.perplexity(), 2) + "\nnext-token accuracy " + fixed(m.accuracy, 4) + "\n";
  }
  const size_t c = static_cast<size_t>(m.num_classes);
  std::vector<std::string> names(c);
  size_t name_width = std::string("weighted avg").size();
  for (size_t k = 0; k < c; ++k) {
    names[k] = k < class_names.size() && !class_names[k].empty() ? class_names[k] : std::to_string(k);
    name_width = std::max(name_width, names[k].size());
  }
  std::ostringstream out;
  out << pad_right("", name_width) << "  precision     recall         f1    support\n";
  double weighted_p = 0, weighted_r = 0, weighted_f = 0, macro_p = 0, macro_r = 0;
  for (size_t k = 0; k < c; ++k) {
    out << pad_right(names[k], name_width) << pad_left(fixed(m.precision[k], 4), 11)
        << pad_left(fixed(m.recall[k], 4), 11) << pad_left(fixed(m.f1[k], 4), 11)
        << pad_left(std::to_string(m.support[k]), 11) << '\n';
    const double share = m.samples ? static_cast<double>(m.support[k]) / static_cast<double>(m.samples) : 0.0;
    weighted_p += share * m.precision[k], weighted_r += share * m.recall[k], weighted_f += share * m.f1[k];
    macro_p += m.precision[k], macro_r += m.recall[k];
  }
  if (c) macro_p /= static_cast<double>(c), macro_r /= static_cast<double>(c);
  out << '\n'
      << pad_right("accuracy", name_width) << pad_left("", 22) << pad_left(fixed(m.accuracy, 4), 11)
      << pad_left(std::to_string(m.samples), 11) << '\n'
      << pad_right("macro avg", name_width) << pad_left(fixed(macro_p, 4), 11)
      << pad_left(fixed(macro_r, 4), 11) << pad_left(fixed(m.macro_f1, 4), 11)
      << pad_left(std::to_string(m.samples), 11) << '\n'
      << pad_right("weighted avg", name_width) << pad_left(fixed(weighted_p, 4), 11)
      << pad_left(fixed(weighted_r, 4), 11) << pad_left(fixed(weighted_f, 4), 11)
      << pad_left(std::to_string(m.samples), 11) << '\n';
  if (m.top5) out << pad_right("top-5 accuracy", name_width) << "  " << fixed(*m.top5, 4) << '\n';
  out << pad_right("loss", name_width) << "  " << fixed(m.loss, 4) << '\n';

  if (m.confusion.empty() && c > 0) {
    out << "\nconfusion matrix left out: " << c << " classes, more than the " << kMaxConfusionClasses
        << " it is shown for (the per-class figures are above)\n";
    return out.str();
  }
  // Confusion matrix: a column per predicted class, as wide as its name or its largest count.
  out << "\nconfusion matrix (rows: true class, columns: predicted class)\n";
  std::vector<size_t> widths(c);
  for (size_t p = 0; p < c; ++p) {
    widths[p] = names[p].size();
    for (size_t t = 0; t < c; ++t) widths[p] = std::max(widths[p], std::to_string(m.confusion[t][p]).size());
  }
  out << pad_right("", name_width);
  for (size_t p = 0; p < c; ++p) out << "  " << pad_left(names[p], widths[p]);
  out << '\n';
  for (size_t t = 0; t < c; ++t) {
    out << pad_right(names[t], name_width);
    for (size_t p = 0; p < c; ++p) out << "  " << pad_left(std::to_string(m.confusion[t][p]), widths[p]);
    out << '\n';
  }
  return out.str();
}

}  // namespace graft
