// LoRA adapters with Hugging Face PEFT's semantics and files (PEFT v0.5 and later, tuners/lora): which
// layers a configuration targets, the branches added beside them (layers/lora.h), what trains, merging
// into the base weights and back, and the adapter as PEFT saves it (adapter_config.json +
// adapter_model.safetensors), so that an adapter made by graft loads in Python and one made in Python
// loads in graft.
//
// Adapted today: torch::nn::Linear layers that run through graft::linear (BERT, ViT), GPT-2's Conv1D
// (fan_in_fan_out, as PEFT handles it) and ResNet's Conv2d layers (through conv_bn; an adapted convolution
// is folded with its BatchNorm only once merged). A target of another layer type, or a grouped or dilated
// convolution, is refused by name.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "graft/weights.h"

namespace graft {

struct LoraConfig {
  int64_t r = 8;
  double alpha = 8.0;
  double dropout = 0.0;  // on the branch's input only, while training
  // PEFT's target_modules. A list: a module whose name equals an entry or ends in "." + entry. A single
  // string (target_regex): a regular expression the whole name must match. "all-linear": every Linear but
  // the output layer.
  std::vector<std::string> target_modules;
  std::string target_regex;
  bool all_linear = false;
  bool use_rslora = false;       // scaling alpha / sqrt(r) instead of alpha / r
  std::string init = "default";  // default: A Kaiming-uniform (a = sqrt(5)), B 0; gaussian: A ~ N(0, (1/r)^2)
  std::string bias = "none";     // none | all | lora_only: which biases train (and are saved)
  bool fan_in_fan_out = false;   // the base stores its weight (in, out), as GPT-2's Conv1D does
  std::vector<std::string> modules_to_save;  // trained whole and saved whole (the new head)
  std::string task_type;                     // PEFT's, e.g. SEQ_CLS or CAUSAL_LM; "" none
  std::string base_model_name_or_path;

  double scaling() const;
  // Throws graft::Error naming the field: r > 0, alpha > 0, dropout in [0, 1), bias and init known, a
  // target given.
  void check() const;
  // graft's flag: "r=16,alpha=16,dropout=0.1,targets=query,value[,rslora][,init=gaussian][,bias=none]".
  // Words after targets= that hold no '=' are more targets; "targets=re:<regex>" is a regular expression,
  // "targets=all-linear" every Linear but the output layer.
  static LoraConfig parse(const std::string& spec);
  // adapter_config.json as PEFT writes it; `file` names it in errors. Fields of a newer PEFT are refused
  // by name unless they hold the value that changes nothing.
  static LoraConfig from_json(const nlohmann::json& config, const std::string& file);
  nlohmann::json to_json() const;
};

// Whether the configuration targets the module of that name (PEFT's matching; all-linear is decided by
// apply_lora, which knows the layer types).
bool lora_targets(const LoraConfig& config, const std::string& module_name);

struct LoraReport {
  std::vector<std::string> adapted;  // module names, in the model's order
  int64_t trainable = 0, total = 0;  // parameter counts (numbers, not tensors)
};

// Adds a branch beside every layer the configuration targets and leaves trainable only the branches, the
// modules to save and the biases config.bias names. Throws graft::Error naming the target that matches
// nothing, or the module of a type graft does not adapt. The model keeps its device and dtype.
LoraReport apply_lora(torch::nn::Module& model, const LoraConfig& config);

// The layers of the model that have a LoRA branch, in the model's order.
std::vector<std::string> lora_layers(torch::nn::Module& model);

// The adapter's tensors under PEFT's file names: base_model.model.<path>.lora_A.weight / .lora_B.weight,
// a module to save whole as base_model.model.<path>.<name>, biases as config.bias says.
NamedTensors lora_adapter_tensors(torch::nn::Module& model, const LoraConfig& config);

// Writes dir/adapter_config.json and dir/adapter_model.safetensors (each atomically; the folder is made).
void save_lora_adapter(torch::nn::Module& model, const LoraConfig& config, const std::string& dir);

// Reads a PEFT adapter folder (or its adapter_config.json), applies its configuration to the model and
// loads its tensors; refuses a tensor the model has no place for, or of another shape, naming it.
LoraConfig load_lora_adapter(torch::nn::Module& model, const std::string& dir);

// The branches added into the base weights in float32 (merge_and_unload without the unload: the
// branches stay, marked merged, so that unmerge_lora can take them out again). Returns the layers merged.
std::vector<std::string> merge_lora(torch::nn::Module& model);
std::vector<std::string> unmerge_lora(torch::nn::Module& model);
// merge_lora, then the branches removed (PEFT's merge_and_unload): a plain model, which can take another
// adapter. Returns the layers merged.
std::vector<std::string> merge_and_unload_lora(torch::nn::Module& model);

// PEFT adapter folders onto a base (`--adapter DIR`, as many as given): one kept apart (its branches run
// beside the base), or, with merge, each merged into the base in turn and unloaded. Several without merge
// are refused (graft runs one adapter's branches at a time). Returns what each adapter is, for the log.
std::vector<std::string> apply_adapters(torch::nn::Module& model, const std::vector<std::string>& dirs,
                                        bool merge);

}  // namespace graft
