// The graft subcommands: each file adds one to the CLI11 app.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "graft/model.h"
#include "graft/precision.h"

namespace graft::cli {

// Options every command that builds a model shares.
struct ModelArgs {
  std::string model;         // ARCH[.TAG]
  std::string weights;       // safetensors file with reference names, or a Hub repository ORG/NAME
  std::string head;          // head spec
  std::string freeze;        // freeze spec
  int64_t num_classes = -1;  // -1: the tag's
  bool strict = true;
  bool bn_train_frozen = false;
  std::vector<std::string> adapters;  // PEFT adapter folders on top of the weights
  bool merge = false;                 // merge the adapters into the weights (several need it)
  void add_to(CLI::App& command, bool with_freeze);
};

// The PEFT adapters of --adapter onto a built model (graft/lora.h apply_adapters); says each on stderr.
void apply_adapter_args(const ModelArgs& args, torch::nn::Module& model);

// --adapter DIR (repeatable, each an existing folder) and --merge, as every command that loads a model
// takes them; `on` says what the adapters go on, for the help.
void add_adapter_options(CLI::App& command, std::vector<std::string>& adapters, bool& merge,
                         const std::string& on);
// The adapters of --adapter onto a run's loaded model (graft/task.h add_run_adapters); says each on stderr.
void apply_run_adapters(torch::nn::Module& model, const std::vector<std::string>& classes,
                        const std::vector<std::string>& adapters, bool merge);

// --precision fp32|bf16|fp16|auto (graft/precision.h) of a command that runs a model; default fp32.
void add_precision_option(CLI::App& command, std::string& precision);

// What --weights accepts: an existing file or folder, or a Hugging Face Hub repository ORG/NAME[@REV]
// (downloaded into the Hugging Face cache when used; graft/hub.h resolve_weights).
CLI::Validator weights_source();

// Builds the model, loads weights, applies head and freeze. The weights: --weights; else, with load_tag,
// an ARCH.TAG's pretrained weights (or an error saying how to get them), and a bare ARCH is random, said
// once. Without load_tag (summary: shapes and counts need no weights) only --weights loads.
Backbone build_model(const ModelArgs& args, bool load_tag = true);

void add_info_command(CLI::App& app);
void add_models_command(CLI::App& app);
void add_summary_command(CLI::App& app);
void add_forward_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_predict_command(CLI::App& app);
void add_features_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_pull_command(CLI::App& app);

}  // namespace graft::cli
