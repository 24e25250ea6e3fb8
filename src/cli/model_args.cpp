// Model construction shared by every command: registry name, weights, head, freeze.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/lora.h"
#include "graft/registry.h"
#include "graft/task.h"
#include "graft/transfer.h"

namespace graft::cli {

void ModelArgs::add_to(CLI::App& command, bool with_freeze) {
  command.add_option("model", model, "architecture or ARCH.TAG, e.g. resnet50 or resnet50.tv_in1k")
      ->required();
  command
      .add_option("--weights", weights,
                  "weights: safetensors with reference (torchvision) names, a Keras .h5, a TF.js model.json, "
                  "or a Hugging Face Hub repository ORG/NAME[@REV]")
      ->check(weights_source());
  command.add_option("--head", head, "new head spec, e.g. avg,dropout:0.2,dense:512:relu,dense:10");
  command.add_option("--num-classes", num_classes, "reset the classifier to this many classes");
  command.add_flag("!--no-strict", strict, "load weights even when names or shapes do not all match");
  add_adapter_options(command, adapters, merge, "the weights");
  if (with_freeze) {
    command.add_option("--freeze", freeze, "freeze spec: all, none, last:N, until:NAME or globs");
    command.add_flag("--bn-train-frozen", bn_train_frozen,
                     "let frozen BatchNorm layers update running statistics (default: inference mode)");
  }
}

CLI::Validator weights_source() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        std::error_code ec;
        if (std::filesystem::exists(value, ec) || looks_like_hub_repo(value)) return "";
        return "no such file or folder: " + value + " (nor a Hugging Face repository ORG/NAME[@REV])";
      },
      "PATH|ORG/NAME[@REV]");
}

Backbone build_model(const ModelArgs& args, bool load_tag) {
  Backbone model = create_model(args.model);
  WeightsOptions options;
  options.strict = args.strict;
  options.hint = "--no-strict loads what fits";
  // A new head or class count replaces the classifier: its pretrained weights are not wanted.
  options.skip_classifier = !args.head.empty() || args.num_classes >= 0;
  if (!args.weights.empty()) {
    LoadReport report = load_weights(*model, resolve_weights(args.weights), options);
    if (!report.ok()) std::cerr << "graft: warning: " << report.to_string() << "\n";
  } else if (load_tag && !ModelName::parse(args.model).tag.empty()) {
    // ARCH.TAG names pretrained weights: they load, or the command stops saying how to get them.
    LoadReport report = load_pretrained(*model, options);
    if (!report.ok()) std::cerr << "graft: warning: " << report.to_string() << "\n";
  } else if (load_tag) {
    std::cerr << "graft: random initialisation: " << args.model
              << " names no pretrained weights (a tag does; see `graft models " << model->arch() << "`)\n";
  }
  if (args.num_classes >= 0) model->reset_classifier(args.num_classes);
  if (!args.head.empty()) model->set_head(HeadSpec::parse(args.head));
  model->set_frozen_bn_trains(args.bn_train_frozen);
  if (!args.freeze.empty() && !args.adapters.empty())
    throw Error("--freeze does not apply with --adapter, which freezes everything but the adapter");
  apply_adapter_args(args, *model);
  if (!args.freeze.empty()) apply_freeze(*model, args.freeze);
  return model;
}

void add_adapter_options(CLI::App& command, std::vector<std::string>& adapters, bool& merge,
                         const std::string& on) {
  command
      .add_option("--adapter", adapters,
                  "a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as PEFT or "
                  "graft train --lora saves it) on " +
                      on + "; several with --merge")
      ->check(CLI::ExistingDirectory)
      ->allow_extra_args(false);  // one folder each time: what follows is the command's own (images)
  command.add_flag("--merge", merge, "merge the --adapter(s) into " + on + ", each in turn");
}

void add_precision_option(CLI::App& command, std::string& precision) {
  command
      .add_option("--precision", precision,
                  "fp32; bf16: mixed precision (convolutions and matrix products in bf16, the rest float32); "
                  "auto: bf16 where the device multiplies it natively")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "auto"}));
}

void apply_run_adapters(torch::nn::Module& model, const std::vector<std::string>& classes,
                        const std::vector<std::string>& adapters, bool merge) {
  for (const auto& line : add_run_adapters(model, classes, adapters, merge)) std::cerr << line << "\n";
}

void apply_adapter_args(const ModelArgs& args, torch::nn::Module& model) {
  if (args.merge && args.adapters.empty()) throw Error("--merge merges --adapter folders: give one or more");
  for (const auto& line : apply_adapters(model, args.adapters, args.merge)) std::cerr << line << "\n";
}

}  // namespace graft::cli
