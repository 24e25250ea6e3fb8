// LoRA adapters with PEFT's semantics and files (graft/lora.h).
#include "graft/lora.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "graft/bert.h"
#include "graft/distilbert.h"
#include "graft/errors.h"
#include "graft/files.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/llama.h"
#include "graft/roberta.h"
#include "graft/strings.h"
#include "graft/vit.h"
#include "layers/lora.h"
#include "models/resnet.h"

namespace graft {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kPeftPrefix = "base_model.model.";  // PEFT's wrapper in front of every name

// The layer under a module name that LoRA can adapt: (in, out) of a Linear, of a Conv1D whose weight is
// stored (in, out), or of a Conv2d (channels); {0, 0} for another type.
std::pair<int64_t, int64_t> adaptable_shape(torch::nn::Module& module) {
  if (auto* linear = module.as<torch::nn::Linear>()) return {linear->weight.size(1), linear->weight.size(0)};
  if (auto* conv1d = module.as<Conv1DImpl>()) return {conv1d->weight.size(0), conv1d->weight.size(1)};
  if (auto* conv = module.as<torch::nn::Conv2d>())
    return {conv->options.in_channels(), conv->options.out_channels()};
  return {0, 0};
}

bool is_linear(torch::nn::Module& module) {
  return module.as<torch::nn::Linear>() || module.as<Conv1DImpl>();
}

// Whether the model adds the branch of a layer held by `parent` (whose own parent is `grandparent`, or
// null). Linear: the modules whose forward runs their Linear layers through graft::linear (the BERT and
// ViT blocks, their poolers, BERT's classifier, RoBERTa's head, DistilBERT's attention, FFN and head, the
// Llama family's attention and MLP and its heads). Conv2d:
// ResNet's, which run every convolution through conv_bn (layers/conv_bn.h), the stem, the blocks and their
// downsample Sequentials. A layer elsewhere (a Sequential, an image head) would keep a branch that never
// runs, so it is refused.
bool runs_branch(const torch::nn::Module& parent, const torch::nn::Module* grandparent, bool conv) {
  if (conv) {
    const auto block = [](const torch::nn::Module* m) {
      return dynamic_cast<const resnet::BasicBlockImpl*>(m) || dynamic_cast<const resnet::BottleneckImpl*>(m);
    };
    return block(&parent) || dynamic_cast<const ResNetImpl*>(&parent) ||
           (dynamic_cast<const torch::nn::SequentialImpl*>(&parent) && block(grandparent));
  }
  return dynamic_cast<const BertSelfAttentionImpl*>(&parent) ||
         dynamic_cast<const BertSelfOutputImpl*>(&parent) ||
         dynamic_cast<const BertIntermediateImpl*>(&parent) || dynamic_cast<const BertOutputImpl*>(&parent) ||
         dynamic_cast<const BertPoolerImpl*>(&parent) ||
         dynamic_cast<const BertForSequenceClassificationImpl*>(&parent) ||
         dynamic_cast<const ViTSelfAttentionImpl*>(&parent) ||
         dynamic_cast<const ViTSelfOutputImpl*>(&parent) ||
         dynamic_cast<const ViTIntermediateImpl*>(&parent) || dynamic_cast<const ViTOutputImpl*>(&parent) ||
         dynamic_cast<const ViTPoolerImpl*>(&parent) || dynamic_cast<const LlamaAttentionImpl*>(&parent) ||
         dynamic_cast<const LlamaMLPImpl*>(&parent) || dynamic_cast<const LlamaForCausalLMImpl*>(&parent) ||
         dynamic_cast<const LlamaForSequenceClassificationImpl*>(&parent) ||
         dynamic_cast<const RobertaClassificationHeadImpl*>(&parent) ||
         dynamic_cast<const DistilBertSelfAttentionImpl*>(&parent) ||
         dynamic_cast<const DistilBertFFNImpl*>(&parent) ||
         dynamic_cast<const DistilBertForSequenceClassificationImpl*>(&parent);
}

// Why a Conv2d cannot take PEFT's branch, or "" when it can: PEFT v0.5's lora_A is a plain convolution of
// the base's kernel, stride and padding, so groups, dilation and a padding mode of its own do not fit.
std::string conv_misfit(const torch::nn::Conv2dImpl& conv) {
  const auto& o = conv.options;
  if (o.groups() != 1) return "a grouped (depthwise) convolution, groups " + std::to_string(o.groups());
  if ((*o.dilation())[0] != 1 || (*o.dilation())[1] != 1) return "a dilated convolution";
  if (!c10::get_if<torch::ExpandingArray<2>>(&o.padding()))
    return "a convolution with 'same' or 'valid' padding";
  if (!c10::get_if<torch::enumtype::kZeros>(&o.padding_mode()))
    return "a convolution that pads other than with zeros";
  return "";
}

torch::Tensor& base_weight(torch::nn::Module& module) {
  if (auto* linear = module.as<torch::nn::Linear>()) return linear->weight;
  if (auto* conv1d = module.as<Conv1DImpl>()) return conv1d->weight;
  if (auto* conv = module.as<torch::nn::Conv2d>()) return conv->weight;
  throw Error("LoRA: a module that is neither a Linear, a Conv1D nor a Conv2d has no branch");
}

// The branch beside a layer, initialised as PEFT does.
std::pair<LoraDown, LoraUp> make_branch(torch::nn::Module& module, const LoraConfig& config) {
  const auto [in, out] = adaptable_shape(module);
  LoraDown down{nullptr};
  LoraUp up{nullptr};
  if (auto* conv = module.as<torch::nn::Conv2d>()) {
    const auto& o = conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const auto vec = [](const torch::ExpandingArray<2>& a) {
      return std::vector<int64_t>(a->begin(), a->end());
    };
    down = LoraDown(in, config.r, vec(o.kernel_size()), vec(o.stride()), vec(padding), config.dropout);
    up = LoraUp(config.r, out, config.scaling(), /*conv=*/true);
  } else {
    down = LoraDown(in, config.r, config.dropout);
    up = LoraUp(config.r, out, config.scaling());
  }
  if (config.init == "gaussian") {
    torch::NoGradGuard no_grad;
    down->weight.normal_(0.0, 1.0 / static_cast<double>(config.r));
  }
  const torch::Tensor& weight = base_weight(module);
  down->to(weight.device(), weight.scalar_type());
  up->to(weight.device(), weight.scalar_type());
  return {down, up};
}

// Whether the name is a module to save or lies inside one ("classifier" holds "classifier.dense.weight"
// and "bert.classifier.weight").
bool in_any(const std::string& name, const std::vector<std::string>& modules) {
  const std::string dotted = "." + name + ".";
  for (const auto& module : modules)
    if (dotted.find("." + module + ".") != std::string::npos) return true;
  return false;
}

std::vector<std::string> string_list(const json& value, const std::string& file, const std::string& key) {
  std::vector<std::string> out;
  if (value.is_null()) return out;
  if (!value.is_array())
    throw FormatError(file, key + ": expected a list of module names, got " + json_excerpt(value, 80));
  for (const auto& item : value) {
    if (!item.is_string())
      throw FormatError(file, key + ": expected module names, got " + json_excerpt(item, 80));
    out.push_back(item.get<std::string>());
  }
  return out;
}

// The modules trained and saved whole: the configuration's, and for a sequence classifier its head, as
// PEFT's PeftModelForSequenceClassification adds "classifier" and "score" (its saved config keeps null).
std::vector<std::string> saved_modules(const LoraConfig& config) {
  std::vector<std::string> modules = config.modules_to_save;
  if (config.task_type == "SEQ_CLS")
    for (const char* head : {"classifier", "score"})
      if (std::find(modules.begin(), modules.end(), head) == modules.end()) modules.push_back(head);
  return modules;
}

// Whether an adapter trains (and saves) the parameter: a branch's matrix, a tensor of a module saved whole,
// or a bias config.bias names (lora_only: of the adapted layers).
bool adapter_owns(const std::string& name, const LoraConfig& config,
                  const std::vector<std::string>& whole_modules, const std::set<std::string>& adapted) {
  const size_t dot = name.rfind('.');
  const std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
  const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
  const bool branch =
      owner == "lora_A" || owner == "lora_B" || ends_with(owner, ".lora_A") || ends_with(owner, ".lora_B");
  const bool bias =
      leaf == "bias" && (config.bias == "all" || (config.bias == "lora_only" && adapted.count(owner)));
  return branch || bias || in_any(owner, whole_modules);
}

// graft's heads are Sequentials (the default `avg,dense:C` is fc = Sequential(Linear)). A module saved whole
// that holds one layer, at index 0, and nothing else is named in the adapter file as that layer: `fc.weight`,
// not `fc.0.weight`, as a torchvision model whose fc was replaced by a Linear names it (how Python users give
// one new classes for PEFT). Returns graft's prefix -> the file's ("fc.0." -> "fc.").
std::map<std::string, std::string> one_layer_heads(torch::nn::Module& model,
                                                   const std::vector<std::string>& whole_modules) {
  std::map<std::string, std::string> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (!in_any(item.key(), whole_modules)) continue;
    const auto children = item.value()->named_children();
    if (children.size() == 1 && children.begin()->key() == "0" &&
        item.value()->named_parameters(/*recurse=*/false).is_empty())
      out[item.key() + ".0."] = item.key() + ".";
  }
  return out;
}

// A parameter's name in the adapter file (without PEFT's prefix).
std::string file_name(const std::string& name, const std::map<std::string, std::string>& heads) {
  for (const auto& [ours, theirs] : heads)
    if (name.rfind(ours, 0) == 0) return theirs + name.substr(ours.size());
  return name;
}

std::string number_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace

double LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

void LoraConfig::check() const {
  if (r <= 0) throw Error("LoRA r must be positive, got " + std::to_string(r));
  if (!(alpha > 0) || !std::isfinite(alpha))
    throw Error("LoRA alpha must be positive, got " + number_text(alpha));
  if (!(dropout >= 0 && dropout < 1))
    throw Error("LoRA dropout must be in [0, 1), got " + number_text(dropout));
  if (bias != "none" && bias != "all" && bias != "lora_only")
    throw Error("LoRA bias '" + bias + "': expected none, all or lora_only");
  if (init != "default" && init != "gaussian")
    throw Error("LoRA init '" + init + "': expected default or gaussian");
  if (target_modules.empty() && target_regex.empty() && !all_linear)
    throw Error("LoRA: no targets (give targets=NAME[,NAME...], targets=re:REGEX or targets=all-linear)");
  if (!target_regex.empty()) {
    try {
      std::regex check(target_regex);
    } catch (const std::regex_error& e) {
      throw Error("LoRA targets: '" + target_regex + "' is not a regular expression: " + e.what());
    }
  }
}

LoraConfig LoraConfig::parse(const std::string& spec) {
  LoraConfig config;
  config.target_modules.clear();
  bool in_targets = false;
  std::stringstream stream(spec);
  std::string item;
  const auto number = [&](const std::string& key, const std::string& text) {
    try {
      size_t used = 0;
      const double value = std::stod(text, &used);
      if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    throw Error("--lora " + key + "=" + text + ": expected a number");
  };
  while (std::getline(stream, item, ',')) {
    item = trim(item);
    if (item.empty()) throw Error("--lora " + spec + ": an empty item (two commas in a row?)");
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      if (item == "rslora") {
        config.use_rslora = true;
      } else if (in_targets) {
        config.target_modules.push_back(item);
      } else {
        throw Error("--lora " + spec + ": '" + item +
                    "' is not key=value (r, alpha, dropout, targets, init, bias) "
                    "or rslora");
      }
      continue;
    }
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    in_targets = key == "targets";
    if (key == "r") {
      const double r = number(key, value);
      if (r != std::floor(r)) throw Error("--lora r=" + value + ": expected a whole number");
      config.r = static_cast<int64_t>(r);
    } else if (key == "alpha") {
      config.alpha = number(key, value);
    } else if (key == "dropout") {
      config.dropout = number(key, value);
    } else if (key == "init") {
      config.init = value;
    } else if (key == "bias") {
      config.bias = value;
    } else if (key == "targets") {
      if (value == "all-linear")
        config.all_linear = true;
      else if (value.rfind("re:", 0) == 0)
        config.target_regex = value.substr(3);
      else if (!value.empty())
        config.target_modules.push_back(value);
    } else {
      throw Error("--lora " + spec + ": unknown key '" + key +
                  "' (r, alpha, dropout, targets, init, bias, rslora)");
    }
  }
  config.check();
  return config;
}

LoraConfig LoraConfig::from_json(const json& j, const std::string& file) {
  if (!j.is_object()) throw FormatError(file, "expected a JSON object (PEFT's adapter_config.json)");
  // PEFT v0.5's fields, and the later ones graft reads or that change nothing at the value shown.
  static const std::set<std::string> known = {"peft_type",
                                              "task_type",
                                              "inference_mode",
                                              "base_model_name_or_path",
                                              "revision",
                                              "r",
                                              "target_modules",
                                              "lora_alpha",
                                              "lora_dropout",
                                              "fan_in_fan_out",
                                              "bias",
                                              "modules_to_save",
                                              "init_lora_weights",
                                              "layers_to_transform",
                                              "layers_pattern",
                                              "auto_mapping",
                                              "use_rslora",
                                              "rank_pattern",
                                              "alpha_pattern",
                                              "use_dora",
                                              "megatron_config",
                                              "megatron_core",
                                              "loftq_config",
                                              "layer_replication"};
  for (const auto& item : j.items())
    if (!known.count(item.key()))
      throw FormatError(file, "field '" + item.key() + "' is not one graft knows (a newer PEFT?)",
                        "graft reads LoRA adapters of PEFT v0.5 and the fields listed in graft/lora.h");
  const auto neutral = [&](const char* key, bool ok, const std::string& what) {
    if (j.contains(key) && !ok)
      throw FormatError(file, std::string(key) + " = " + json_excerpt(j.at(key), 80) + ": " + what +
                                  " is not supported by graft");
  };
  const auto empty_or_null = [&](const char* key) {
    const json& v = j.at(key);
    return v.is_null() || (v.is_object() && v.empty()) || (v.is_array() && v.empty());
  };
  if (j.value("peft_type", std::string("LORA")) != "LORA")
    throw FormatError(file,
                      "peft_type " + json_excerpt(j.at("peft_type"), 40) + ": graft reads LORA adapters");
  neutral("layers_to_transform", j.contains("layers_to_transform") && j.at("layers_to_transform").is_null(),
          "LoRA on some layers only");
  neutral("layers_pattern", j.contains("layers_pattern") && j.at("layers_pattern").is_null(),
          "a layers pattern");
  neutral("rank_pattern", j.contains("rank_pattern") && empty_or_null("rank_pattern"), "a rank per layer");
  neutral("alpha_pattern", j.contains("alpha_pattern") && empty_or_null("alpha_pattern"),
          "an alpha per layer");
  neutral("use_dora", j.contains("use_dora") && j.at("use_dora") == false, "DoRA");
  neutral("layer_replication", j.contains("layer_replication") && j.at("layer_replication").is_null(),
          "layer replication");
  neutral("loftq_config", j.contains("loftq_config") && empty_or_null("loftq_config"),
          "LoftQ initialisation");
  neutral("megatron_config", j.contains("megatron_config") && j.at("megatron_config").is_null(),
          "Megatron layers");

  LoraConfig config;
  try {
    config.r = j.value("r", int64_t{8});
    config.alpha = j.value("lora_alpha", 8.0);
    config.dropout = j.value("lora_dropout", 0.0);
    config.fan_in_fan_out = j.value("fan_in_fan_out", false);
    config.bias = j.value("bias", std::string("none"));
    config.use_rslora = j.value("use_rslora", false);
    config.task_type =
        j.contains("task_type") && j.at("task_type").is_string() ? j.at("task_type").get<std::string>() : "";
    config.base_model_name_or_path =
        j.contains("base_model_name_or_path") && j.at("base_model_name_or_path").is_string()
            ? j.at("base_model_name_or_path").get<std::string>()
            : "";
  } catch (const json::exception& e) {
    throw FormatError(file, std::string("a field of the wrong type: ") + e.what());
  }
  const json init = j.value("init_lora_weights", json(true));
  if (init == true || init == false)
    config.init = "default";  // false (random B) only matters before training; the weights are loaded
  else if (init == "gaussian")
    config.init = "gaussian";
  else
    throw FormatError(
        file, "init_lora_weights = " + json_excerpt(init, 40) + ": expected true, false or \"gaussian\"");
  const json targets = j.value("target_modules", json(nullptr));
  if (targets.is_string()) {
    if (targets == "all-linear")
      config.all_linear = true;
    else
      config.target_regex = targets.get<std::string>();
  } else {
    config.target_modules = string_list(targets, file, "target_modules");
  }
  config.modules_to_save = string_list(j.value("modules_to_save", json(nullptr)), file, "modules_to_save");
  try {
    config.check();
  } catch (const Error& e) {
    throw FormatError(file, e.what());
  }
  return config;
}

json LoraConfig::to_json() const {
  json j;
  j["peft_type"] = "LORA";
  j["task_type"] = task_type.empty() ? json(nullptr) : json(task_type);
  j["inference_mode"] = false;  // as PEFT saves a trained adapter
  j["base_model_name_or_path"] = base_model_name_or_path;
  j["revision"] = nullptr;
  j["r"] = r;
  j["target_modules"] = all_linear              ? json("all-linear")
                        : !target_regex.empty() ? json(target_regex)
                                                : json(target_modules);
  j["lora_alpha"] = alpha;
  j["lora_dropout"] = dropout;
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["bias"] = bias;
  j["modules_to_save"] = modules_to_save.empty() ? json(nullptr) : json(modules_to_save);
  j["init_lora_weights"] = init == "gaussian" ? json("gaussian") : json(true);
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["auto_mapping"] = nullptr;
  j["use_rslora"] = use_rslora;
  return j;
}

bool lora_targets(const LoraConfig& config, const std::string& name) {
  if (!config.target_regex.empty()) return std::regex_match(name, std::regex(config.target_regex));
  for (const auto& target : config.target_modules)
    if (name == target || ends_with(name, "." + target)) return true;
  return false;
}

LoraReport apply_lora(torch::nn::Module& model, const LoraConfig& config) {
  config.check();
  LoraReport report;
  const std::vector<std::string> whole_modules = saved_modules(config);
  // all-linear leaves out the output layer: the last adaptable layer, or a module to save.
  std::string output_layer;
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> layers;
  std::map<std::string, torch::nn::Module*> by_name{{"", &model}};
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (is_linear(*item.value())) output_layer = item.key();
    layers.emplace_back(item.key(), item.value());
    by_name[item.key()] = item.value().get();
  }
  const auto parent_name = [](const std::string& name) {
    const size_t dot = name.rfind('.');
    return dot == std::string::npos ? std::string() : name.substr(0, dot);
  };
  const auto parent_of = [&](const std::string& name) -> const torch::nn::Module& {
    return *by_name.at(parent_name(name));
  };
  const auto grandparent_of = [&](const std::string& name) -> const torch::nn::Module* {
    return name.find('.') == std::string::npos ? nullptr : by_name.at(parent_name(parent_name(name)));
  };
  // Every layer is chosen and checked before any is changed: a refused configuration leaves the model as
  // it was.
  std::map<std::string, int> hits;  // list targets that matched
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> chosen;
  for (const auto& [name, module] : layers) {
    if (in_any(name, whole_modules)) {  // trained whole, never adapted
      for (const auto& target : config.target_modules)
        if (name == target || ends_with(name, "." + target))
          throw Error("LoRA target '" + target + "' is '" + name +
                      "', which trains whole (a module to save: the new head); PEFT gives it no adapter");
      continue;
    }
    const int64_t in = adaptable_shape(*module).first;
    const bool wanted =
        config.all_linear ? is_linear(*module) && name != output_layer : lora_targets(config, name);
    if (!wanted) continue;
    for (const auto& target : config.target_modules)
      if (name == target || ends_with(name, "." + target)) ++hits[target];
    if (in == 0)
      throw Error("LoRA target '" + name + "' is a " + module->name() +
                  "; graft adapts Linear, Conv2d (and GPT-2's Conv1D) layers only");
    const bool conv = module->as<torch::nn::Conv2d>() != nullptr;
    if ((conv || module->as<torch::nn::Linear>()) &&
        !runs_branch(parent_of(name), grandparent_of(name), conv))
      throw Error("LoRA target '" + name +
                  "': graft adds LoRA to the Linear layers of BERT, ViT and Llama, GPT-2's " +
                  "Conv1D and ResNet's convolutions so far, not to a " + module->name() + " held by a " +
                  parent_of(name).name() + "; train it whole instead (modules_to_save)");
    if (conv) {
      const std::string misfit = conv_misfit(*module->as<torch::nn::Conv2d>());
      if (!misfit.empty())
        throw Error("LoRA target '" + name + "' is " + misfit + ", which PEFT's LoRA does not adapt");
    }
    if (lora_branch(*module).first)
      throw Error("LoRA: '" + name + "' already has a branch (graft applies one adapter at a time)");
    chosen.emplace_back(name, module);
  }
  for (const auto& target : config.target_modules)
    if (!hits.count(target))
      throw Error("LoRA target '" + target +
                  "' matches no module of the model (`graft summary` lists the names)");
  if (chosen.empty()) throw Error("LoRA: the targets match no layer graft can adapt");
  for (const auto& [name, module] : chosen) {
    auto [down, up] = make_branch(*module, config);
    module->register_module("lora_A", down);
    module->register_module("lora_B", up);
    report.adapted.push_back(name);
  }

  // What trains: the branches, the modules to save, and the biases config.bias names.
  std::set<std::string> adapted(report.adapted.begin(), report.adapted.end());
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    const bool trains = adapter_owns(item.key(), config, whole_modules, adapted);
    item.value().set_requires_grad(trains);
    report.total += item.value().numel();
    if (trains) report.trainable += item.value().numel();
  }
  return report;
}

std::vector<std::string> lora_layers(torch::nn::Module& model) {
  std::vector<std::string> layers;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (lora_branch(*item.value()).first) layers.push_back(item.key());
  return layers;
}

NamedTensors lora_adapter_tensors(torch::nn::Module& model, const LoraConfig& config) {
  NamedTensors out;
  const std::vector<std::string> whole_modules = saved_modules(config);
  const std::vector<std::string> layers = lora_layers(model);
  const std::set<std::string> adapted(layers.begin(), layers.end());
  const auto heads = one_layer_heads(model, whole_modules);
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    if (adapter_owns(item.key(), config, whole_modules, adapted))
      out.emplace_back(kPeftPrefix + file_name(item.key(), heads), item.value().detach().cpu().contiguous());
  return out;
}

void save_lora_adapter(torch::nn::Module& model, const LoraConfig& config, const std::string& dir) {
  fs::create_directories(dir);
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(),
                    lora_adapter_tensors(model, config), {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), config.to_json().dump(2) + "\n");
}

LoraConfig load_lora_adapter(torch::nn::Module& model, const std::string& dir) {
  const fs::path folder = fs::is_directory(dir) ? fs::path(dir) : fs::path(dir).parent_path();
  const std::string config_file = (folder / "adapter_config.json").string();
  const std::string weights_file = (folder / "adapter_model.safetensors").string();
  if (!fs::is_regular_file(config_file))
    throw Error(dir + ": no adapter_config.json (expected a PEFT adapter folder)");
  const LoraConfig config =
      LoraConfig::from_json(read_json_file(config_file, uint64_t{1} << 20), config_file);
  std::map<std::string, bool> trained_before;
  for (const auto& item : model.named_parameters(/*recurse=*/true))
    trained_before[item.key()] = item.value().requires_grad();
  const LoraReport report = apply_lora(model, config);
  // The model's parameters by their names in the file (a one-layer head's by torchvision's, and by graft's
  // as adapters saved before this naming have them).
  std::map<std::string, std::pair<std::string, torch::Tensor>> params;
  const auto heads = one_layer_heads(model, saved_modules(config));
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    params[item.key()] = {item.key(), item.value()};
    params[file_name(item.key(), heads)] = {item.key(), item.value()};
  }
  // Every tensor is checked before any is copied; an adapter that does not fit leaves the model as it was.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;  // (parameter, value)
  try {
    size_t branch_tensors = 0;
    std::set<std::string> supplied;
    for (auto& [key, tensor] : read_safetensors(weights_file)) {
      if (key.rfind(kPeftPrefix, 0) != 0)
        throw FormatError(weights_file,
                          "tensor '" + key + "' does not start with " + kPeftPrefix + " (PEFT's names)");
      const std::string file_key = key.substr(std::string(kPeftPrefix).size());
      auto it = params.find(file_key);
      if (it == params.end()) {
        const std::string& name = file_key;
        const size_t dot = name.find('.');
        if (dot != std::string::npos && params.count(name.substr(dot + 1)))
          throw FormatError(weights_file,
                            "tensor '" + key + "' has no place in the model, whose names lack its '" +
                                name.substr(0, dot + 1) +
                                "' prefix: the adapter was made on a class that wraps this model (such as "
                                "BertForSequenceClassification around BertModel); name that class in "
                                "config.json's architectures");
        throw FormatError(weights_file, "tensor '" + key + "' has no place in the model ('" + name +
                                            "' is not one of its parameters): an adapter of another base?");
      }
      const auto& [name, param] = it->second;
      if (param.sizes() != tensor.sizes())
        throw FormatError(weights_file, "tensor '" + key + "' has shape " + shape_str(tensor.sizes().vec()) +
                                            " where the model's '" + name + "' has " +
                                            shape_str(param.sizes().vec()) + ": an adapter of another base?");
      if (supplied.count(name)) throw FormatError(weights_file, "holds '" + name + "' twice, by two names");
      copies.emplace_back(param, tensor);
      supplied.insert(name);
      branch_tensors += ends_with(name, ".lora_A.weight") || ends_with(name, ".lora_B.weight");
    }
    if (branch_tensors != 2 * report.adapted.size())
      throw FormatError(weights_file, "holds " + std::to_string(branch_tensors) + " LoRA matrices where " +
                                          config_file + " gives the model " +
                                          std::to_string(2 * report.adapted.size()));
    // Whatever the adapter trains is in its file (PEFT saves it all): a head missing would stay random.
    for (const auto& item : model.named_parameters(/*recurse=*/true))
      if (item.value().requires_grad() && !supplied.count(item.key()))
        throw FormatError(weights_file, "holds no " + std::string(kPeftPrefix) + item.key() + ", which " +
                                            config_file + " trains (a module to save, or a bias)");
  } catch (...) {
    for (const auto& item : model.named_modules("", /*include_self=*/false)) {
      if (std::find(report.adapted.begin(), report.adapted.end(), item.key()) == report.adapted.end())
        continue;
      item.value()->unregister_module("lora_A");
      item.value()->unregister_module("lora_B");
    }
    for (auto& item : model.named_parameters(/*recurse=*/true))
      item.value().set_requires_grad(trained_before.at(item.key()));
    throw;
  }
  torch::NoGradGuard no_grad;
  for (auto& [param, value] : copies) param.copy_(value);
  return config;
}

namespace {

std::vector<std::string> set_merged(torch::nn::Module& model, bool merge) {
  std::vector<std::string> changed;
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto [down, up] = lora_branch(*item.value());
    if (!down || !up || up->merged == merge) continue;
    torch::Tensor& weight = base_weight(*item.value());
    torch::Tensor delta = lora_weight_delta(*down, *up).to(torch::kFloat32);
    if (item.value()->as<Conv1DImpl>()) delta = delta.t();  // fan_in_fan_out: the weight is (in, out)
    const torch::Tensor w = weight.to(torch::kFloat32);
    weight.copy_(merge ? w + delta : w - delta);
    up->merged = merge;
    changed.push_back(item.key());
  }
  return changed;
}

}  // namespace

std::vector<std::string> merge_lora(torch::nn::Module& model) {
  return set_merged(model, true);
}
std::vector<std::string> unmerge_lora(torch::nn::Module& model) {
  return set_merged(model, false);
}

std::vector<std::string> merge_and_unload_lora(torch::nn::Module& model) {
  std::vector<std::string> merged = set_merged(model, true);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (!lora_branch(*item.value()).first) continue;
    item.value()->unregister_module("lora_A");
    item.value()->unregister_module("lora_B");
  }
  return merged;
}

std::vector<std::string> apply_adapters(torch::nn::Module& model, const std::vector<std::string>& dirs,
                                        bool merge) {
  if (dirs.size() > 1 && !merge)
    throw Error("--adapter given " + std::to_string(dirs.size()) +
                " times: graft runs one adapter's branches beside a base; add --merge to merge each into "
                "the base in turn");
  std::vector<std::string> said;
  for (const auto& dir : dirs) {
    const LoraConfig config = load_lora_adapter(model, dir);
    std::ostringstream line;
    line << "adapter " << dir << ": LoRA r=" << config.r << " alpha=" << number_text(config.alpha) << " on "
         << lora_layers(model).size() << " layers" << (merge ? ", merged into the base" : "");
    said.push_back(line.str());
    if (merge) merge_and_unload_lora(model);
  }
  return said;
}

}  // namespace graft
