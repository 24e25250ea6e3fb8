// Hugging Face transformers support shared by BERT, GPT-2 and ViT (transformers v4.31): activations
// (activations.py ACT2FN), the classification loss of the *ForSequenceClassification /
// *ForImageClassification heads, building and loading a model folder by its config.json's architecture, and
// from_pretrained's weight-name handling (modeling_utils.py _load_pretrained_model: base-model prefix added
// or removed, gamma/beta renamed, non-persistent buffers of older files ignored, tied embeddings).
// The config.json readers are beside their models: BertConfig's in bert.cpp, GPT2Config's in gpt2.cpp,
// ViTConfig's in vit.cpp, with the keys they share (configuration_utils.py PretrainedConfig, also read here
// for a checkpoint's label count) in hf_config.h / hf_config.cpp.
#include "graft/transformers.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "graft/bert.h"
#include "graft/distilbert.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/llama.h"
#include "graft/roberta.h"
#include "graft/strings.h"
#include "graft/vit.h"
#include "models/hf_config.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

bool starts_with_module(const std::string& name, const std::string& prefix) {
  return name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
         name[prefix.size()] == '.';
}

// Buffers Hugging Face keeps out of the state dict since v4.31 but older files hold; from_pretrained drops
// them (model.named_buffers() minus the state dict's keys).
bool is_non_persistent_buffer(const std::string& name) {
  return glob_match("*embeddings.position_ids", name) || glob_match("*embeddings.token_type_ids", name) ||
         glob_match("*h.[0-9]*.attn.bias", name) || glob_match("*h.[0-9]*.attn.masked_bias", name) ||
         glob_match("*rotary_emb.inv_freq", name);
}

// One class graft builds from a Hugging Face config.
struct HfArchitecture {
  const char* name;         // "BertForSequenceClassification"
  const char* model_type;   // "bert"
  const char* base_prefix;  // "bert": Hugging Face's base_model_prefix
  const char* head;         // module replaced in transfer ("classifier"); "" for none
  std::function<std::shared_ptr<torch::nn::Module>(const json&, const std::string&, int64_t)> build;
};

// Sizes of config.json that the weights file's header fixes: {key, tensor name (its suffix after the base
// model's prefix), dimension}. Checked before the model is built, so that a config that disagrees with its
// weights (100,000 layers beside a 3-layer file, a vocabulary of 10^12) is refused by key at once rather
// than after allocating it.
struct SizeCheck {
  const char* key;
  const char* tensor;
  size_t dim;
};
const std::map<std::string, std::vector<SizeCheck>>& size_checks() {
  static const std::vector<SizeCheck> bert = {
      // BERT's names, RoBERTa's and XLM-R's too
      {"vocab_size", "embeddings.word_embeddings.weight", 0},
      {"hidden_size", "embeddings.word_embeddings.weight", 1},
      {"max_position_embeddings", "embeddings.position_embeddings.weight", 0},
      {"type_vocab_size", "embeddings.token_type_embeddings.weight", 0},
      {"intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0}};
  static const std::map<std::string, std::vector<SizeCheck>> table = {
      {"bert", bert},
      {"roberta", bert},
      {"xlm-roberta", bert},
      {"distilbert",
       {{"vocab_size", "embeddings.word_embeddings.weight", 0},
        {"dim", "embeddings.word_embeddings.weight", 1},
        {"max_position_embeddings", "embeddings.position_embeddings.weight", 0},
        {"hidden_dim", "transformer.layer.0.ffn.lin1.weight", 0}}},
      {"gpt2",
       {{"vocab_size", "wte.weight", 0}, {"n_embd", "wte.weight", 1}, {"n_positions", "wpe.weight", 0}}},
      {"vit",
       {{"hidden_size", "embeddings.cls_token", 2},
        {"intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0}}},
      {"llama",
       {{"vocab_size", "embed_tokens.weight", 0},
        {"hidden_size", "embed_tokens.weight", 1},
        {"intermediate_size", "layers.0.mlp.gate_proj.weight", 0}}},
      {"qwen2",
       {{"vocab_size", "embed_tokens.weight", 0},
        {"hidden_size", "embed_tokens.weight", 1},
        {"intermediate_size", "layers.0.mlp.gate_proj.weight", 0}}}};
  return table;
}

void check_sizes_against_weights(const json& root, const std::string& config_path,
                                 const std::string& model_type, const SafeTensorsSet& reader) {
  const std::string& weights_path = reader.path();  // the headers only: the data stays mapped, unread
  const auto find = [&](const std::string& suffix) -> const TensorInfo* {
    for (const TensorInfo& t : reader.tensors())
      if (t.name == suffix || ends_with(t.name, "." + suffix)) return &t;
    return nullptr;
  };
  const auto refuse = [&](const std::string& key, int64_t value, const std::string& held) {
    throw FormatError(config_path, "key '" + key + "' is " + std::to_string(value) + " but " + weights_path +
                                       " holds " + held +
                                       "; the config and the weights do not belong together");
  };
  const auto it = size_checks().find(model_type);
  if (it != size_checks().end()) {
    for (const SizeCheck& check : it->second) {
      if (!root.contains(check.key) || !root.at(check.key).is_number_integer()) continue;  // the reader says
      const TensorInfo* tensor = find(check.tensor);
      if (!tensor || tensor->shape.size() <= check.dim) continue;  // a strict load names what is missing
      const int64_t value = root.at(check.key).get<int64_t>();
      if (value != tensor->shape[check.dim])
        refuse(check.key, value, tensor->name + " of shape " + shape_str(tensor->shape));
    }
  }
  // The depth: the numbered blocks the file holds (encoder.layer.N, h.N, layers.N, transformer.layer.N).
  const bool gpt2 = model_type == "gpt2", llama = model_type == "llama" || model_type == "qwen2",
             distilbert = model_type == "distilbert";
  const char* key = gpt2 ? "n_layer" : distilbert ? "n_layers" : "num_hidden_layers";
  const std::regex block(gpt2         ? R"((^|\.)h\.([0-9]+)\.)"
                         : llama      ? R"((^|\.)layers\.([0-9]+)\.)"
                         : distilbert ? R"((^|\.)transformer\.layer\.([0-9]+)\.)"
                                      : R"((^|\.)encoder\.layer\.([0-9]+)\.)");
  int64_t blocks = 0;
  for (const TensorInfo& t : reader.tensors()) {
    std::smatch match;
    if (std::regex_search(t.name, match, block) && match[2].length() < 7)
      blocks = std::max<int64_t>(blocks, std::stoll(match[2]) + 1);
  }
  if (blocks > 0 && root.contains(key) && root.at(key).is_number_integer() &&
      root.at(key).get<int64_t>() != blocks)
    refuse(key, root.at(key).get<int64_t>(), std::to_string(blocks) + " layers");
}

template <class Config>
Config parse_with_labels(const json& root, const std::string& source, int64_t num_labels) {
  Config config = Config::from_json(root, source);
  if (num_labels >= 0 && num_labels != config.num_labels()) {
    config.id2label.clear();
    config.set_num_labels(num_labels);
  }
  return config;
}

const std::vector<HfArchitecture>& architectures() {
  static const std::vector<HfArchitecture> table = {
      {"BertModel", "bert", "bert", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<BertModelImpl>(parse_with_labels<BertConfig>(j, s, n));
       }},
      {"BertForSequenceClassification", "bert", "bert", "classifier",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<BertForSequenceClassificationImpl>(parse_with_labels<BertConfig>(j, s, n));
       }},
      // RoBERTa and XLM-R: BERT's encoder with RoBERTa's positions (BertConfig of model_type roberta).
      {"RobertaModel", "roberta", "roberta", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<BertModelImpl>(parse_with_labels<BertConfig>(j, s, n));
       }},
      {"RobertaForSequenceClassification", "roberta", "roberta", "classifier",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<RobertaForSequenceClassificationImpl>(
             parse_with_labels<BertConfig>(j, s, n));
       }},
      {"XLMRobertaModel", "xlm-roberta", "roberta", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<BertModelImpl>(parse_with_labels<BertConfig>(j, s, n));
       }},
      {"XLMRobertaForSequenceClassification", "xlm-roberta", "roberta", "classifier",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<RobertaForSequenceClassificationImpl>(
             parse_with_labels<BertConfig>(j, s, n));
       }},
      {"DistilBertModel", "distilbert", "distilbert", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<DistilBertModelImpl>(parse_with_labels<DistilBertConfig>(j, s, n));
       }},
      {"DistilBertForSequenceClassification", "distilbert", "distilbert", "classifier",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<DistilBertForSequenceClassificationImpl>(
             parse_with_labels<DistilBertConfig>(j, s, n));
       }},
      {"GPT2Model", "gpt2", "transformer", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<GPT2ModelImpl>(parse_with_labels<GPT2Config>(j, s, n));
       }},
      {"GPT2LMHeadModel", "gpt2", "transformer", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<GPT2LMHeadModelImpl>(parse_with_labels<GPT2Config>(j, s, n));
       }},
      {"ViTModel", "vit", "vit", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<ViTModelImpl>(parse_with_labels<ViTConfig>(j, s, n));
       }},
      {"ViTForImageClassification", "vit", "vit", "classifier",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<ViTForImageClassificationImpl>(parse_with_labels<ViTConfig>(j, s, n));
       }},
      // One implementation for the Llama family: Qwen2's classes are Llama's with its config.
      {"LlamaModel", "llama", "model", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaModelImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
      {"LlamaForCausalLM", "llama", "model", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaForCausalLMImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
      {"LlamaForSequenceClassification", "llama", "model", "score",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaForSequenceClassificationImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
      {"Qwen2Model", "qwen2", "model", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaModelImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
      {"Qwen2ForCausalLM", "qwen2", "model", "",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaForCausalLMImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
      {"Qwen2ForSequenceClassification", "qwen2", "model", "score",
       [](const json& j, const std::string& s, int64_t n) {
         return std::make_shared<LlamaForSequenceClassificationImpl>(parse_with_labels<LlamaConfig>(j, s, n));
       }},
  };
  return table;
}

std::string known_architectures() {
  std::string out;
  for (const auto& a : architectures()) out += (out.empty() ? "" : ", ") + std::string(a.name);
  return out;
}

}  // namespace

void HfCommonConfig::set_num_labels(int64_t n) {
  const size_t old = id2label.size();
  id2label.resize(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (size_t i = old; i < id2label.size(); ++i) id2label[i] = "LABEL_" + std::to_string(i);
}

void refuse_token_types(const TextInputs& inputs, const char* model) {
  if (inputs.token_type_ids.defined())
    throw Error(std::string(model) +
                ": token_type_ids are not an input of this model (it has no segment embeddings); leave them "
                "undefined");
}

Activation hf_activation(const std::string& name, const std::string& where) {
  // sqrt(2 / pi), as activations.py computes it (math.sqrt(2.0 / math.pi)).
  static const double kSqrt2OverPi = std::sqrt(2.0 / 3.14159265358979323846);
  if (name == "gelu") return [](const torch::Tensor& x) { return torch::gelu(x); };
  if (name == "gelu_new") {
    // NewGELUActivation (the original GPT-2's tanh approximation), in its own operation order.
    return [](const torch::Tensor& x) {
      return 0.5 * x * (1.0 + torch::tanh(kSqrt2OverPi * (x + 0.044715 * torch::pow(x, 3.0))));
    };
  }
  if (name == "gelu_pytorch_tanh") return [](const torch::Tensor& x) { return torch::gelu(x, "tanh"); };
  if (name == "gelu_fast") {
    return [](const torch::Tensor& x) {
      return 0.5 * x * (1.0 + torch::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
    };
  }
  if (name == "quick_gelu") return [](const torch::Tensor& x) { return x * torch::sigmoid(1.702 * x); };
  if (name == "relu") return [](const torch::Tensor& x) { return torch::relu(x); };
  if (name == "relu6") return [](const torch::Tensor& x) { return torch::hardtanh(x, 0.0, 6.0); };
  if (name == "silu" || name == "swish") return [](const torch::Tensor& x) { return torch::silu(x); };
  if (name == "tanh") return [](const torch::Tensor& x) { return torch::tanh(x); };
  if (name == "sigmoid") return [](const torch::Tensor& x) { return torch::sigmoid(x); };
  if (name == "mish") return [](const torch::Tensor& x) { return torch::mish(x); };
  if (name == "linear") return [](const torch::Tensor& x) { return x; };
  throw Error(
      where + ": activation '" + name +
      "' is not implemented; expected one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, "
      "relu, relu6, silu, swish, tanh, sigmoid, mish, linear");
}

torch::Tensor hf_classification_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                     const std::string& problem_type) {
  const int64_t num_labels = logits.size(-1);
  std::string type = problem_type;
  if (type.empty()) {
    const bool integral = labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt;
    type = num_labels == 1 ? "regression"
           : integral      ? "single_label_classification"
                           : "multi_label_classification";
  }
  namespace F = torch::nn::functional;
  if (type == "regression") {
    const torch::Tensor target = labels.to(logits.scalar_type());
    if (num_labels == 1) return F::mse_loss(logits.squeeze(), target.squeeze());
    return F::mse_loss(logits, target);
  }
  if (type == "single_label_classification") {
    return F::cross_entropy(logits.view({-1, num_labels}), labels.view({-1}).to(torch::kLong));
  }
  if (type == "multi_label_classification") {
    return F::binary_cross_entropy_with_logits(logits, labels.to(logits.scalar_type()));
  }
  throw Error("problem_type '" + problem_type +
              "': expected regression, single_label_classification or multi_label_classification");
}

namespace {

LoadReport load_hf_weights_from(torch::nn::Module& model, const SafeTensorsSet& reader,
                                const std::string& base_prefix, const LoadOptions& options) {
  const std::string& file = reader.path();
  std::set<std::string> model_names;
  for (const auto& item : state_dict(model)) model_names.insert(item.first);
  bool model_has_prefix = false, file_has_prefix = false;
  for (const auto& name : model_names)
    model_has_prefix = model_has_prefix || starts_with_module(name, base_prefix);
  for (const auto& info : reader.tensors())
    file_has_prefix = file_has_prefix || starts_with_module(info.name, base_prefix);
  auto skipped_on_purpose = [&](const std::string& name) {
    for (const auto& prefix : options.skip_prefixes) {
      if (name == prefix || starts_with_module(name, prefix)) return true;
    }
    return false;
  };

  std::vector<std::string> skipped;
  NamedTensors renamed;
  renamed.reserve(reader.tensors().size());
  for (const TensorInfo& info : reader.tensors()) {
    std::string name = info.name;
    // Old TensorFlow-converted checkpoints name LayerNorm parameters gamma and beta.
    if (ends_with(name, ".gamma")) name = name.substr(0, name.size() - 6) + ".weight";
    if (ends_with(name, ".beta")) name = name.substr(0, name.size() - 5) + ".bias";
    if (model_has_prefix && !file_has_prefix) {
      // A base-model checkpoint loaded into a model with a head: its names gain the prefix where the
      // model has them (a tensor of another head keeps its name and is reported).
      if (model_names.count(base_prefix + "." + name)) name = base_prefix + "." + name;
    } else if (file_has_prefix && !model_has_prefix) {
      if (!starts_with_module(name, base_prefix)) {  // the checkpoint's head: the base model has none
        skipped.push_back(info.name);
        continue;
      }
      name = name.substr(base_prefix.size() + 1);
    }
    const bool in_model = model_names.count(name) != 0;
    // Buffers Hugging Face no longer saves, and the LM head tied to the input embeddings (the model
    // reads wte itself): dropped without reading them.
    // So is a pooler the built model has none of (roberta-base holds one; RobertaForSequenceClassification
    // reads the first token instead, and transformers leaves it unused too).
    if (!in_model &&
        (is_non_persistent_buffer(name) || name == "lm_head.weight" || glob_match("*pooler.dense.*", name))) {
      skipped.push_back(info.name);
      continue;
    }
    // Only tensors that will be copied are read; the others enter the report by name and shape, held by
    // a placeholder that owns no memory.
    const torch::ScalarType dtype = safetensors_scalar_type(info.dtype);
    torch::Tensor tensor = in_model && !skipped_on_purpose(name)
                               ? reader.load(info.name)
                               : torch::zeros({}, torch::TensorOptions().dtype(dtype)).expand(info.shape);
    renamed.emplace_back(std::move(name), std::move(tensor));
  }
  LoadOptions load = options;
  if (load.source_name.empty() || load.source_name == LoadOptions().source_name) load.source_name = file;
  LoadReport report = load_state_dict(model, renamed, load);
  report.skipped.insert(report.skipped.end(), skipped.begin(), skipped.end());
  return report;
}

}  // namespace

LoadReport load_hf_weights(torch::nn::Module& model, const std::string& file, const std::string& base_prefix,
                           const LoadOptions& options) {
  return load_hf_weights_from(model, SafeTensorsSet(file), base_prefix, options);
}

namespace {

// The class to build for a config.json: options.architecture, else architectures[0], else the base model of
// model_type. *checkpoint_class receives architectures[0] ("" when absent).
const HfArchitecture& choose_architecture(const json& root, const std::string& config_path,
                                          const HfLoadOptions& options, std::string* checkpoint_class_out) {
  // The checkpoint's class, and the class to build.
  std::string checkpoint_class;
  if (root.contains("architectures") && root["architectures"].is_array() && !root["architectures"].empty() &&
      root["architectures"][0].is_string()) {
    checkpoint_class = root["architectures"][0].get<std::string>();
  }
  std::string model_type;
  if (root.contains("model_type") && root["model_type"].is_string())
    model_type = root["model_type"].get<std::string>();
  std::string wanted = options.architecture.empty() ? checkpoint_class : options.architecture;
  const HfArchitecture* arch = nullptr;
  for (const auto& a : architectures()) {
    if (a.name == wanted) arch = &a;
  }
  if (!arch && options.architecture.empty() && checkpoint_class.empty()) {
    // No class named: the base model of the model type.
    for (const auto& a : architectures()) {
      if (a.model_type == model_type && std::string(a.head).empty() && !arch) arch = &a;
    }
    if (!arch) {
      throw FormatError(
          config_path,
          model_type.empty() ? "key 'model_type' is missing" : "key 'model_type' is \"" + model_type + "\"",
          "graft builds " + known_architectures());
    }
  }
  if (!arch) {
    throw Error((options.architecture.empty() ? config_path + ": architectures[0] is '" + wanted + "'"
                                              : "architecture '" + wanted + "'") +
                ", which graft does not build; graft builds " + known_architectures() +
                " (choose one with HfLoadOptions::architecture / --architecture to take this checkpoint's "
                "base model)");
  }
  if (!model_type.empty() && model_type != arch->model_type) {
    throw FormatError(config_path, "key 'model_type' is \"" + model_type + "\", but " + arch->name +
                                       " is a \"" + arch->model_type + "\" model");
  }
  *checkpoint_class_out = checkpoint_class;
  return *arch;
}

}  // namespace

HfModel build_hf_model(const std::string& config_path, const HfLoadOptions& options) {
  HfModel out;
  out.config_path = config_path;
  const json root = read_json_file(config_path);
  if (!root.is_object()) throw FormatError(config_path, "expected a JSON object of configuration keys");
  std::string checkpoint_class;
  const HfArchitecture& arch = choose_architecture(root, config_path, options, &checkpoint_class);
  out.model_type = arch.model_type;
  out.architecture = arch.name;
  out.module = arch.build(root, config_path, options.num_labels);
  return out;
}

HfModel load_hf_model(const std::string& path, const HfLoadOptions& options) {
  HfModel out;
  if (fs::is_directory(path)) {
    out.config_path = (fs::path(path) / "config.json").string();
    out.weights_path = (fs::path(path) / "model.safetensors").string();
    // A sharded checkpoint: model-0000x-of-0000y.safetensors, read through their index.
    if (!fs::exists(out.weights_path) && fs::exists(fs::path(path) / "model.safetensors.index.json"))
      out.weights_path = (fs::path(path) / "model.safetensors.index.json").string();
    if (!fs::exists(out.weights_path)) {
      std::string hint = "expected a Hugging Face model folder with config.json and model.safetensors";
      if (fs::exists(fs::path(path) / "pytorch_model.bin")) {
        hint =
            "only pytorch_model.bin (a pickle) is there; graft reads safetensors: save the model with "
            "save_pretrained(..., safe_serialization=True) or take the hub's model.safetensors";
      }
      throw Error(path + ": no model.safetensors (" + hint + ")");
    }
  } else if (fs::is_regular_file(path)) {
    out.weights_path = path;
    out.config_path = (fs::path(path).parent_path() / "config.json").string();
  } else {
    throw Error(path +
                ": no such file or folder (expected a Hugging Face model folder or its model.safetensors)");
  }
  if (!fs::exists(out.config_path)) {
    throw Error(out.config_path +
                ": not found; a Hugging Face model needs its config.json beside the weights");
  }
  const json root = read_json_file(out.config_path);
  if (!root.is_object()) throw FormatError(out.config_path, "expected a JSON object of configuration keys");
  std::string checkpoint_class;
  const HfArchitecture* arch = &choose_architecture(root, out.config_path, options, &checkpoint_class);
  out.model_type = arch->model_type;
  out.architecture = arch->name;
  // The weights' headers, read once for the size checks, the head and the load (the data stays mapped).
  const SafeTensorsSet weights(out.weights_path);
  if (options.strict) check_sizes_against_weights(root, out.config_path, out.model_type, weights);
  out.module = arch->build(root, out.config_path, options.num_labels);
  // A BERT-shaped base model from a checkpoint without a pooler (RoBERTa's classifiers and masked-LM
  // files): no pooler, where transformers would start a random one.
  if (auto* encoder = dynamic_cast<BertModelImpl*>(out.module.get()); encoder && encoder->pooler) {
    const bool has_pooler =
        std::any_of(weights.tensors().begin(), weights.tensors().end(),
                    [](const TensorInfo& t) { return ends_with(t.name, "pooler.dense.weight"); });
    if (!has_pooler) {
      encoder->unregister_module("pooler");
      encoder->pooler = nullptr;  // pooler_output stays undefined
    }
  }

  // Hugging Face's transfer case: another class than the checkpoint's, or a new number of labels. The new
  // head starts fresh; the checkpoint's own head (tensors outside the base model) is skipped.
  // The checkpoint's label count as PretrainedConfig reads it: id2label, else num_labels, else 2.
  HfCommonConfig checkpoint;
  checkpoint.set_num_labels(2);
  read_common(ConfigReader(root, out.config_path), checkpoint, arch->model_type);
  const int64_t checkpoint_labels = checkpoint.num_labels();
  const bool new_labels = options.num_labels >= 0 && options.num_labels != checkpoint_labels;
  const bool transfer = (!checkpoint_class.empty() && checkpoint_class != arch->name) || new_labels;
  LoadOptions load;
  load.strict = options.strict;
  load.source_name = out.weights_path;
  if (transfer && std::string(arch->head).size() > 0) load.skip_prefixes.push_back(arch->head);
  if (transfer) {
    // Tensors of the checkpoint's head that are not part of the built model: skipped, not unexpected.
    std::set<std::string> model_names;
    for (const auto& item : state_dict(*out.module)) model_names.insert(item.first);
    const std::string base = arch->base_prefix;
    const auto skip = [&](const std::string& name) {
      const std::string top = name.substr(0, name.find('.'));
      if (std::find(load.skip_prefixes.begin(), load.skip_prefixes.end(), top) == load.skip_prefixes.end())
        load.skip_prefixes.push_back(top);
    };
    for (const auto& info : weights.tensors()) {
      const bool in_base = starts_with_module(info.name, base) || model_names.count(base + "." + info.name) ||
                           model_names.count(info.name);
      if (!in_base && info.name.find('.') != std::string::npos) skip(info.name);
    }
    // And the built model's modules outside the base that the checkpoint lacks: the rest of the new head
    // (DistilBERT's pre_classifier beside its classifier, from a masked-LM checkpoint), left fresh.
    const bool has_head = std::any_of(model_names.begin(), model_names.end(), [&](const std::string& name) {
      return starts_with_module(name, base);
    });
    for (const std::string& name : model_names)
      if (has_head && !starts_with_module(name, base) && !weights.contains(name) &&
          name.find('.') != std::string::npos)
        skip(name);
  }
  out.report = load_hf_weights_from(*out.module, weights, arch->base_prefix, load);
  return out;
}

}  // namespace graft
