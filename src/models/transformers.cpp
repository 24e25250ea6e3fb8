// Hugging Face transformers support shared by BERT, GPT-2 and ViT: config.json readers (transformers
// v4.31 configuration_utils.py PretrainedConfig + configuration_bert.py / configuration_gpt2.py /
// configuration_vit.py defaults), activations (activations.py ACT2FN), the classification loss of the
// *ForSequenceClassification / *ForImageClassification heads, and from_pretrained's weight-name handling
// (modeling_utils.py _load_pretrained_model: base-model prefix added or removed, gamma/beta renamed,
// non-persistent buffers of older files ignored, tied embeddings).
#include "graft/transformers.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "graft/bert.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/strings.h"
#include "graft/vit.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Reads typed keys of one config.json; a key that is absent keeps the default already in the struct.
class ConfigReader {
 public:
  ConfigReader(const json& root, std::string source) : root_(root), source_(std::move(source)) {
    if (!root_.is_object()) throw FormatError(source_, "expected a JSON object of configuration keys");
  }

  bool has(const char* key) const { return root_.contains(key) && !root_.at(key).is_null(); }

  void get(const char* key, int64_t& out) const {
    if (!root_.contains(key)) return;
    const json& value = root_.at(key);
    if (!value.is_number_integer()) fail(key, "an integer", value);
    out = value.get<int64_t>();
  }
  void get(const char* key, double& out) const {
    if (!root_.contains(key)) return;
    const json& value = root_.at(key);
    if (!value.is_number()) fail(key, "a number", value);
    out = value.get<double>();
  }
  void get(const char* key, bool& out) const {
    if (!root_.contains(key)) return;
    const json& value = root_.at(key);
    if (!value.is_boolean()) fail(key, "true or false", value);
    out = value.get<bool>();
  }
  void get(const char* key, std::string& out) const {
    if (!root_.contains(key) || root_.at(key).is_null()) return;  // null: the default ("" / HF's None)
    const json& value = root_.at(key);
    if (!value.is_string()) fail(key, "a string", value);
    out = value.get<std::string>();
  }
  // Keys Hugging Face allows to be null (n_inner, classifier_dropout, pad_token_id).
  template <class T>
  void get(const char* key, std::optional<T>& out) const {
    if (!root_.contains(key)) return;
    if (root_.at(key).is_null()) {
      out.reset();
      return;
    }
    T value{};
    get(key, value);
    out = value;
  }

  // Positive sizes: a zero or negative width is a broken file, said here rather than deep in libtorch.
  void get_positive(const char* key, int64_t& out) const {
    get(key, out);
    if (out <= 0)
      throw FormatError(source_, "key '" + std::string(key) + "' must be > 0, found " + std::to_string(out));
  }
  void get_probability(const char* key, double& out) const {
    get(key, out);
    if (!(out >= 0.0 && out < 1.0)) {
      throw FormatError(source_, "key '" + std::string(key) + "' must be a probability in [0, 1), found " +
                                     std::to_string(out));
    }
  }

  [[noreturn]] void fail(const char* key, const std::string& expected, const json& value) const {
    throw FormatError(
        source_, "key '" + std::string(key) + "' must be " + expected + ", found " + json_excerpt(value));
  }
  [[noreturn]] void unsupported(const char* key, const std::string& why) const {
    throw FormatError(source_,
                      "key '" + std::string(key) + "' is " + json_excerpt(root_.at(key)) + ": " + why);
  }

  const json& root() const { return root_; }
  const std::string& source() const { return source_; }

 private:
  const json& root_;
  std::string source_;
};

// The keys of PretrainedConfig graft uses, and the model_type check.
void read_common(const ConfigReader& reader, HfCommonConfig& config, const std::string& model_type) {
  const json& root = reader.root();
  reader.get("model_type", config.model_type);
  if (!config.model_type.empty() && config.model_type != model_type) {
    reader.unsupported("model_type", "expected \"" + model_type + "\" for this model class");
  }
  config.model_type = model_type;
  if (root.contains("architectures") && !root.at("architectures").is_null()) {
    const json& list = root.at("architectures");
    if (!list.is_array()) reader.fail("architectures", "a list of class names", list);
    config.architectures.clear();
    for (const json& name : list) {
      if (!name.is_string()) reader.fail("architectures", "a list of class names", list);
      config.architectures.push_back(name.get<std::string>());
    }
  }
  // id2label decides num_labels, as in PretrainedConfig.__init__ (a disagreeing num_labels is ignored).
  if (root.contains("id2label") && !root.at("id2label").is_null()) {
    const json& labels = root.at("id2label");
    if (!labels.is_object()) reader.fail("id2label", "an object {\"0\": \"name\", ...}", labels);
    std::vector<std::string> names(labels.size());
    std::vector<bool> seen(labels.size(), false);
    for (const auto& [key, value] : labels.items()) {
      size_t used = 0;
      long long index = -1;
      try {
        index = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != key.size() || index < 0 || index >= static_cast<long long>(names.size()) || seen[index] ||
          !value.is_string()) {
        reader.fail(
            "id2label",
            "an object mapping each index 0 .. " + std::to_string(names.size() - 1) + " to a label name",
            labels);
      }
      seen[index] = true;
      names[index] = value.get<std::string>();
    }
    config.id2label = names;
  } else if (root.contains("num_labels")) {
    int64_t n = 0;
    reader.get("num_labels", n);
    if (n < 0) reader.fail("num_labels", "an integer >= 0", root.at("num_labels"));
    config.id2label.clear();
    config.set_num_labels(n);
  }
  reader.get("problem_type", config.problem_type);
  if (!config.problem_type.empty() && config.problem_type != "regression" &&
      config.problem_type != "single_label_classification" &&
      config.problem_type != "multi_label_classification") {
    reader.unsupported("problem_type",
                       "expected regression, single_label_classification or multi_label_classification");
  }
  reader.get("tie_word_embeddings", config.tie_word_embeddings);
  reader.get("initializer_range", config.initializer_range);
  reader.get("output_hidden_states", config.output_hidden_states);
}

void check_activation(const ConfigReader& reader, const char* key, const std::string& name) {
  if (reader.has(key)) hf_activation(name, reader.source() + ": key '" + key + "'");
}

void check_heads(const ConfigReader& reader, int64_t hidden, const char* hidden_key, int64_t heads,
                 const char* heads_key) {
  if (hidden % heads != 0) {
    throw FormatError(reader.source(), "key '" + std::string(hidden_key) + "' (" + std::to_string(hidden) +
                                           ") must be a multiple of '" + heads_key + "' (" +
                                           std::to_string(heads) + ")");
  }
}

bool starts_with_module(const std::string& name, const std::string& prefix) {
  return name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
         name[prefix.size()] == '.';
}

// Buffers Hugging Face keeps out of the state dict since v4.31 but older files hold; from_pretrained drops
// them (model.named_buffers() minus the state dict's keys).
bool is_non_persistent_buffer(const std::string& name) {
  return glob_match("*embeddings.position_ids", name) || glob_match("*embeddings.token_type_ids", name) ||
         glob_match("*h.[0-9]*.attn.bias", name) || glob_match("*h.[0-9]*.attn.masked_bias", name);
}

// One class graft builds from a Hugging Face config.
struct HfArchitecture {
  const char* name;         // "BertForSequenceClassification"
  const char* model_type;   // "bert"
  const char* base_prefix;  // "bert": Hugging Face's base_model_prefix
  const char* head;         // module replaced in transfer ("classifier"); "" for none
  std::function<std::shared_ptr<torch::nn::Module>(const json&, const std::string&, int64_t)> build;
};

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

BertConfig BertConfig::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  BertConfig config;
  read_common(reader, config, "bert");
  reader.get_positive("vocab_size", config.vocab_size);
  reader.get_positive("hidden_size", config.hidden_size);
  reader.get_positive("num_hidden_layers", config.num_hidden_layers);
  reader.get_positive("num_attention_heads", config.num_attention_heads);
  reader.get_positive("intermediate_size", config.intermediate_size);
  reader.get("hidden_act", config.hidden_act);
  check_activation(reader, "hidden_act", config.hidden_act);
  reader.get_probability("hidden_dropout_prob", config.hidden_dropout_prob);
  reader.get_probability("attention_probs_dropout_prob", config.attention_probs_dropout_prob);
  reader.get_positive("max_position_embeddings", config.max_position_embeddings);
  reader.get_positive("type_vocab_size", config.type_vocab_size);
  reader.get("layer_norm_eps", config.layer_norm_eps);
  reader.get("pad_token_id", config.pad_token_id);
  reader.get("classifier_dropout", config.classifier_dropout);
  check_heads(reader, config.hidden_size, "hidden_size", config.num_attention_heads, "num_attention_heads");
  if (config.pad_token_id && (*config.pad_token_id < 0 || *config.pad_token_id >= config.vocab_size)) {
    reader.unsupported("pad_token_id",
                       "must be a token id below vocab_size (" + std::to_string(config.vocab_size) + ")");
  }
  std::string position_type = "absolute";
  reader.get("position_embedding_type", position_type);
  if (position_type != "absolute") {
    reader.unsupported("position_embedding_type",
                       "graft implements BERT's \"absolute\" position embeddings only");
  }
  bool flag = false;
  reader.get("is_decoder", flag);
  if (flag) reader.unsupported("is_decoder", "graft's BERT is an encoder (no causal mask, no cache)");
  reader.get("add_cross_attention", flag);
  if (flag) reader.unsupported("add_cross_attention", "graft's BERT has no cross-attention");
  return config;
}

BertConfig BertConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

GPT2Config GPT2Config::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  GPT2Config config;
  read_common(reader, config, "gpt2");
  reader.get_positive("vocab_size", config.vocab_size);
  reader.get_positive("n_positions", config.n_positions);
  reader.get_positive("n_embd", config.n_embd);
  reader.get_positive("n_layer", config.n_layer);
  reader.get_positive("n_head", config.n_head);
  reader.get("n_inner", config.n_inner);
  if (config.n_inner && *config.n_inner <= 0)
    reader.unsupported("n_inner", "must be > 0 or null (4 * n_embd)");
  reader.get("activation_function", config.activation_function);
  check_activation(reader, "activation_function", config.activation_function);
  reader.get_probability("resid_pdrop", config.resid_pdrop);
  reader.get_probability("embd_pdrop", config.embd_pdrop);
  reader.get_probability("attn_pdrop", config.attn_pdrop);
  reader.get("layer_norm_epsilon", config.layer_norm_epsilon);
  reader.get("scale_attn_weights", config.scale_attn_weights);
  reader.get("scale_attn_by_inverse_layer_idx", config.scale_attn_by_inverse_layer_idx);
  reader.get("reorder_and_upcast_attn", config.reorder_and_upcast_attn);
  std::optional<int64_t> token = config.bos_token_id;
  reader.get("bos_token_id", token);
  config.bos_token_id = token.value_or(-1);
  token = config.eos_token_id;
  reader.get("eos_token_id", token);
  config.eos_token_id = token.value_or(-1);
  check_heads(reader, config.n_embd, "n_embd", config.n_head, "n_head");
  bool flag = false;
  reader.get("add_cross_attention", flag);
  if (flag) reader.unsupported("add_cross_attention", "graft's GPT-2 has no cross-attention");
  return config;
}

GPT2Config GPT2Config::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

ViTConfig ViTConfig::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  ViTConfig config;
  read_common(reader, config, "vit");
  reader.get_positive("hidden_size", config.hidden_size);
  reader.get_positive("num_hidden_layers", config.num_hidden_layers);
  reader.get_positive("num_attention_heads", config.num_attention_heads);
  reader.get_positive("intermediate_size", config.intermediate_size);
  reader.get("hidden_act", config.hidden_act);
  check_activation(reader, "hidden_act", config.hidden_act);
  reader.get_probability("hidden_dropout_prob", config.hidden_dropout_prob);
  reader.get_probability("attention_probs_dropout_prob", config.attention_probs_dropout_prob);
  reader.get("layer_norm_eps", config.layer_norm_eps);
  reader.get_positive("image_size", config.image_size);
  reader.get_positive("patch_size", config.patch_size);
  reader.get_positive("num_channels", config.num_channels);
  reader.get("qkv_bias", config.qkv_bias);
  check_heads(reader, config.hidden_size, "hidden_size", config.num_attention_heads, "num_attention_heads");
  if (config.image_size % config.patch_size != 0) {
    throw FormatError(source, "key 'image_size' (" + std::to_string(config.image_size) +
                                  ") must be a multiple of 'patch_size' (" +
                                  std::to_string(config.patch_size) + ")");
  }
  return config;
}

ViTConfig ViTConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
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

LoadReport load_hf_weights(torch::nn::Module& model, const std::string& file, const std::string& base_prefix,
                           const LoadOptions& options) {
  const SafeTensorsReader reader(file);
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
    if (!in_model && (is_non_persistent_buffer(name) || name == "lm_head.weight")) {
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
    if (!fs::exists(out.weights_path)) {
      std::string hint = "expected a Hugging Face model folder with config.json and model.safetensors";
      if (fs::exists(fs::path(path) / "model.safetensors.index.json")) {
        hint =
            "the weights are sharded (model.safetensors.index.json); graft reads a single model.safetensors";
      } else if (fs::exists(fs::path(path) / "pytorch_model.bin")) {
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
  out.module = arch->build(root, out.config_path, options.num_labels);

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
    SafeTensorsReader reader(out.weights_path);
    for (const auto& info : reader.tensors()) {
      const bool in_base = starts_with_module(info.name, base) || model_names.count(base + "." + info.name) ||
                           model_names.count(info.name);
      if (!in_base && info.name.find('.') != std::string::npos) {
        const std::string top = info.name.substr(0, info.name.find('.'));
        if (std::find(load.skip_prefixes.begin(), load.skip_prefixes.end(), top) == load.skip_prefixes.end())
          load.skip_prefixes.push_back(top);
      }
    }
  }
  out.report = load_hf_weights(*out.module, out.weights_path, arch->base_prefix, load);
  return out;
}

}  // namespace graft
