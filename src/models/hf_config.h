// The config.json reading that the Hugging Face models share (transformers v4.31 configuration_utils.py
// PretrainedConfig): typed keys with the config class's defaults, the keys of PretrainedConfig graft uses,
// and the activation and attention-head checks. BertConfig, GPT2Config and ViTConfig read their own keys with
// these in bert.cpp, gpt2.cpp and vit.cpp.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/transformers.h"

namespace graft {

using json = nlohmann::json;

// The largest value graft builds for a size key of config.json: far above every published model (vocabularies
// of a few hundred thousand, widths of 12,288, 96 layers), far below what would exhaust memory.
int64_t size_limit(const std::string& key);

// Labels a classifier may have: graft's class limit (kMaxClasses in graft/metrics.h).
constexpr int64_t kMaxLabels = 100000;

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

  // Positive sizes: a zero or negative width is a broken file, said here rather than deep in libtorch; and
  // bounded (size_limit), so that a slip or a hostile file is refused by key before anything is allocated.
  void get_positive(const char* key, int64_t& out) const {
    get(key, out);
    const int64_t limit = size_limit(key);
    if (out <= 0 || out > limit)
      throw FormatError(source_, "key '" + std::string(key) + "' must lie in 1.." + std::to_string(limit) +
                                     ", found " + std::to_string(out));
  }
  void get_probability(const char* key, double& out) const {
    get(key, out);
    if (!(out >= 0.0 && out < 1.0)) {
      throw FormatError(source_, "key '" + std::string(key) + "' must be a probability in [0, 1), found " +
                                     std::to_string(out));
    }
  }

  // LayerNorm's epsilon: 0 or less gives NaN outputs (a square root of a negative variance + eps).
  void get_epsilon(const char* key, double& out) const {
    get(key, out);
    if (!(out > 0.0 && out < 1.0)) {
      throw FormatError(source_, "key '" + std::string(key) +
                                     "' must be LayerNorm's epsilon, a number in (0, 1), found " +
                                     json_excerpt(root_.at(key)));
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
void read_common(const ConfigReader& reader, HfCommonConfig& config, const std::string& model_type);

// config.json's activation `name` (under `key`) must be one hf_activation implements.
void check_activation(const ConfigReader& reader, const char* key, const std::string& name);

// The keys of an encoder that BertConfig and ViTConfig name alike: widths, depth, activation, dropouts,
// LayerNorm epsilon, with the activation and head checks.
template <class EncoderConfig>
void read_encoder_keys(const ConfigReader& reader, EncoderConfig& config) {
  reader.get_positive("hidden_size", config.hidden_size);
  reader.get_positive("num_hidden_layers", config.num_hidden_layers);
  reader.get_positive("num_attention_heads", config.num_attention_heads);
  reader.get_positive("intermediate_size", config.intermediate_size);
  reader.get("hidden_act", config.hidden_act);
  check_activation(reader, "hidden_act", config.hidden_act);
  reader.get_probability("hidden_dropout_prob", config.hidden_dropout_prob);
  reader.get_probability("attention_probs_dropout_prob", config.attention_probs_dropout_prob);
  reader.get_epsilon("layer_norm_eps", config.layer_norm_eps);
  check_heads(reader, config.hidden_size, "hidden_size", config.num_attention_heads, "num_attention_heads");
}

// The attention width `hidden` must split evenly over `heads`.
void check_heads(const ConfigReader& reader, int64_t hidden, const char* hidden_key, int64_t heads,
                 const char* heads_key);

// Inputs of the text models, checked where they enter (BertModel, GPT2Model) so that a bad one is named
// instead of failing deep in libtorch ("index out of range in self"). `model` names the model in messages.
// Token ids: an integer tensor of at least one token per row, every id in [0, rows) of the embedding they
// index (`what`: input_ids, token_type_ids).
void check_token_ids(const torch::Tensor& ids, int64_t rows, const std::string& model, const char* what);
// torch.finfo(dtype).min: the additive mask value of Hugging Face's attention.
double lowest_of(torch::ScalarType dtype);
// An attention mask of 0s (padding) and 1s (attended); other values would scale the softmax silently.
void check_attention_mask(const torch::Tensor& mask, const std::string& model);

}  // namespace graft
