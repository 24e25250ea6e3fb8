// `graft summary MODEL [--head ..] [--freeze ..] [--lora ..] [--adapter DIR] [--input 224]`: a Keras-like
// table for a registry model; for a Hugging Face folder, its parts' parameter counts. With --lora (or
// --adapter) each adapted layer and the share that trains.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "graft/causal_lm.h"
#include "graft/errors.h"
#include "graft/lora.h"
#include "graft/summary.h"
#include "graft/transfer.h"
#include "graft/transformers.h"

namespace graft::cli {

namespace {

std::string shape_text(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

// A module's class as the summary shows it: graft::BertEncoderImpl as BertEncoder, torch::nn::LinearImpl
// as Linear.
std::string type_name(const torch::nn::Module& module) {
  std::string name = module.name();
  const size_t colon = name.rfind("::");
  if (colon != std::string::npos) name = name.substr(colon + 2);
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) name.resize(name.size() - 4);
  return name;
}

// The modules a configuration trains whole beside its adapters, as `graft train --lora` gives them.
LoraConfig lora_for(const std::string& spec, const std::vector<std::string>& whole,
                    const std::string& task_type) {
  LoraConfig config = LoraConfig::parse(spec);
  config.modules_to_save = whole;
  config.task_type = task_type;
  return config;
}

// One line per adapted layer (its A and B shapes), then how much trains.
std::vector<std::string> lora_lines(torch::nn::Module& model) {
  std::vector<std::string> lines;
  const std::vector<std::string> layers = lora_layers(model);
  auto params = model.named_parameters();
  for (const auto& name : layers)
    lines.push_back("LoRA " + name + ": A " + shape_text(params[name + ".lora_A.weight"]) + ", B " +
                    shape_text(params[name + ".lora_B.weight"]));
  if (layers.empty()) return lines;
  const int64_t total = count_parameters(model), trainable = count_parameters(model, "", true);
  char share[32];
  std::snprintf(share, sizeof share, "%.2f%%",
                100.0 * static_cast<double>(trainable) / static_cast<double>(total));
  lines.push_back("LoRA on " + std::to_string(layers.size()) + " layers: " + format_count(trainable) +
                  " trainable of " + format_count(total) + ", " + share);
  return lines;
}

// A Hugging Face folder, built from its config.json (counts need no weights): a row per part (the base
// model's parts, then the head), the totals, and the adapters.
void summarize_hf(const ModelArgs& args, const std::string& lora) {
  for (const auto& [flag, given] : {std::pair<std::string, bool>{"--head", !args.head.empty()},
                                    {"--num-classes", args.num_classes >= 0},
                                    {"--freeze", !args.freeze.empty()},
                                    {"--weights", !args.weights.empty()}})
    if (given) throw Error(flag + " applies to registry models; " + args.model + " is a Hugging Face folder");
  HfModel hf = build_hf_model((std::filesystem::path(args.model) / "config.json").string());
  torch::nn::Module& model = *hf.module;
  apply_adapter_args(args, model);
  if (!lora.empty()) {  // what graft train --lora trains whole beside the adapters, by PEFT's task types
    std::vector<std::string> whole;
    std::string task_type;
    if (hf.architecture.find("ForSequenceClassification") != std::string::npos) task_type = "SEQ_CLS";
    if (std::dynamic_pointer_cast<CausalLMImpl>(hf.module)) task_type = "CAUSAL_LM";
    if (hf.architecture == "ViTForImageClassification") whole = {"classifier"};
    apply_lora(model, lora_for(lora, whole, task_type));
  }
  std::printf("Model: \"%s\" (%s)\n", hf.architecture.c_str(), hf.config_path.c_str());
  std::printf(" %-52s %14s  %s\n", "Part (type)", "Param #", "Trainable");
  for (const auto& child : model.named_children()) {
    // The base model ("bert", "roberta", "distilbert", "transformer", "vit", "model") by its parts; the rest
    // (the head) as it is.
    const bool base = child.key() == hf.model_type || child.key() == "roberta" ||
                      child.key() == "transformer" || child.key() == "model";
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> rows;
    if (base)
      for (const auto& part : child.value()->named_children())
        rows.emplace_back(child.key() + "." + part.key(), part.value());
    else
      rows.emplace_back(child.key(), child.value());
    for (const auto& [name, module] : rows) {
      const int64_t params = count_parameters(*module), trainable = count_parameters(*module, "", true);
      std::printf(" %-52s %14s  %s\n", (name + " (" + type_name(*module) + ")").c_str(),
                  format_count(params).c_str(),
                  params == 0           ? "-"
                  : trainable == params ? "Y"
                  : trainable           ? "partly"
                                        : "N");
    }
  }
  std::printf("Total params: %s\nTrainable params: %s\n", format_count(count_parameters(model)).c_str(),
              format_count(count_parameters(model, "", true)).c_str());
  for (const auto& line : lora_lines(model)) std::printf("%s\n", line.c_str());
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
    if (!lora->empty() && !args->adapters.empty())
      throw Error("give --lora (a new adapter) or --adapter (one made before), not both");
    if (std::filesystem::is_regular_file(std::filesystem::path(args->model) / "config.json")) {
      summarize_hf(*args, *lora);
      return;
    }
    Backbone model = build_model(*args, /*load_tag=*/false);  // shapes and counts need no weights
    if (!lora->empty()) apply_lora(*model, lora_for(*lora, {head_module_name(*model)}, ""));  // head whole
    ModelSummary summary = summarize(*model, {*input, *input});
    for (const auto& line : lora_lines(*model)) summary.notes.push_back(line);
    std::cout << summary.to_string();
  });
}

}  // namespace graft::cli
