// `graft summary MODEL [--head ..] [--freeze ..] [--lora ..] [--input 224]`: a Keras-like table.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/lora.h"
#include "graft/summary.h"
#include "graft/transfer.h"

namespace graft::cli {

namespace {

std::string shape_text(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

}  // namespace

void add_summary_command(CLI::App& app) {
  auto* command = app.add_subcommand("summary", "layers, output shapes and (trainable) parameter counts");
  auto args = std::make_shared<ModelArgs>();
  auto input = std::make_shared<int64_t>(0);
  args->add_to(*command, /*with_freeze=*/true);
  auto lora = std::make_shared<std::string>();
  command->add_option("--input", *input, "input image size in pixels (default: the model's)");
  command->add_option("--lora", *lora,
                      "LoRA as graft train --lora takes it (r=16,alpha=16,targets=...): each adapted layer, "
                      "and what trains");
  command->callback([args, input, lora] {
    if (!lora->empty() && !args->freeze.empty())
      throw Error("--freeze " + args->freeze +
                  " does not apply to --lora, which freezes everything but the adapters and the head");
    Backbone model = build_model(*args, /*load_tag=*/false);  // shapes and counts need no weights
    LoraReport report;
    if (!lora->empty()) {
      LoraConfig config = LoraConfig::parse(*lora);
      config.modules_to_save = {head_module_name(*model)};  // the new head trains whole, as in train
      report = apply_lora(*model, config);
    }
    ModelSummary summary = summarize(*model, {*input, *input});
    if (!lora->empty()) {
      auto params = model->named_parameters();
      for (const auto& name : report.adapted)
        summary.notes.push_back("LoRA " + name + ": A " + shape_text(params[name + ".lora_A.weight"]) +
                                ", B " + shape_text(params[name + ".lora_B.weight"]));
      char share[32];
      std::snprintf(share, sizeof share, "%.2f%%",
                    100.0 * static_cast<double>(report.trainable) / static_cast<double>(report.total));
      summary.notes.push_back("LoRA on " + std::to_string(report.adapted.size()) +
                              " layers: " + format_count(report.trainable) + " trainable of " +
                              format_count(report.total) + ", " + share);
    }
    std::cout << summary.to_string();
  });
}

}  // namespace graft::cli
