// Keras-like model summary built from the backbone's forward steps.
#include "graft/summary.h"

#include <iomanip>
#include <sstream>

namespace graft {

std::string format_count(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

namespace {

// Elements of the fixed parameters named `prefix` or under `prefix.` (all of them for "").
int64_t count_fixed(BackboneImpl& model, const std::string& prefix) {
  int64_t total = 0;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (!prefix.empty() && name != prefix && name.rfind(prefix + ".", 0) != 0) continue;
    if (model.is_fixed_parameter(name)) total += item.value().numel();
  }
  return total;
}

}  // namespace

ModelSummary summarize(BackboneImpl& model, std::array<int64_t, 2> input_hw) {
  ModelSummary summary;
  summary.title = model.arch() + (model.has_custom_head() ? " (custom head)" : "");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  // (1, 3, H, W); a video backbone's is a (1, 3, T, H, W) clip.
  torch::Tensor x = example_input(model.default_cfg(), input_hw);
  for (const auto& step : model.all_steps()) {
    x = step.fn(x);
    SummaryRow row{step.name,
                   step.type,
                   {},
                   count_parameters(model, step.name),
                   count_parameters(model, step.name, /*trainable_only=*/true)};
    row.fixed_params = count_fixed(model, step.name);
    for (int64_t d = 1; d < x.dim(); ++d) row.output_shape.push_back(x.size(d));
    summary.rows.push_back(std::move(row));
  }
  model.train(was_training);
  summary.total_params = count_parameters(model);
  summary.trainable_params = count_parameters(model, "", /*trainable_only=*/true);
  bool any_frozen_bn = false;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const auto& module = item.value();
    if (dynamic_cast<torch::nn::BatchNorm2dImpl*>(module.get()) ||
        dynamic_cast<torch::nn::BatchNorm1dImpl*>(module.get()) ||
        dynamic_cast<torch::nn::BatchNorm3dImpl*>(module.get())) {
      for (const auto& p : module->named_parameters(false)) {
        // A fixed weight (Keras BatchNormalization without gamma) is no frozen layer.
        if (model.is_fixed_parameter(item.key() + "." + p.key())) continue;
        any_frozen_bn = any_frozen_bn || !p.value().requires_grad();
      }
    }
  }
  if (const int64_t fixed = count_fixed(model, ""); fixed > 0) {
    summary.notes.push_back("BatchNorm: " + format_count(fixed) +
                            " of the non-trainable params are BatchNorm weights held fixed (Keras' "
                            "BatchNormalization without gamma, i.e. 1)");
  }
  if (any_frozen_bn) {
    summary.notes.push_back(model.frozen_bn_trains()
                                ? "BatchNorm: frozen BatchNorm layers still update their running statistics "
                                  "in training (--bn-train-frozen)"
                                : "BatchNorm: frozen BatchNorm layers use their running statistics "
                                  "(inference mode), as Keras does");
  }
  return summary;
}

std::string ModelSummary::to_string() const {
  auto shape = [](const std::vector<int64_t>& s) {
    std::string out = "(None";
    for (auto d : s) out += ", " + std::to_string(d);
    return out + ")";
  };
  size_t name_width = 24;
  for (const auto& row : rows) name_width = std::max(name_width, row.name.size() + row.type.size() + 6);
  const size_t width = name_width + 24 + 14 + 10;
  std::ostringstream out;
  out << "Model: \"" << title << "\"\n" << std::string(width, '_') << "\n";
  out << std::left << std::setw(name_width) << " Layer (type)" << std::setw(24) << "Output Shape"
      << std::setw(14) << "Param #"
      << "Trainable\n";
  out << std::string(width, '=') << "\n";
  for (const auto& row : rows) {
    const std::string trainable = row.params == 0                                         ? "-"
                                  : row.trainable_params == row.params - row.fixed_params ? "Y"
                                  : row.trainable_params == 0                             ? "N"
                                                                                          : "partial";
    out << std::left << std::setw(name_width) << (" " + row.name + " (" + row.type + ")") << std::setw(24)
        << shape(row.output_shape) << std::setw(14) << format_count(row.params) << trainable << "\n";
  }
  out << std::string(width, '=') << "\n";
  out << "Total params: " << format_count(total_params) << "\n";
  out << "Trainable params: " << format_count(trainable_params) << "\n";
  out << "Non-trainable params: " << format_count(total_params - trainable_params) << "\n";
  for (const auto& note : notes) out << note << "\n";
  out << std::string(width, '_') << "\n";
  return out.str();
}

}  // namespace graft
