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
void read_common(const ConfigReader& reader, HfCommonConfig& config, const std::string& model_type);

// config.json's activation `name` (under `key`) must be one hf_activation implements.
void check_activation(const ConfigReader& reader, const char* key, const std::string& name);

// The attention width `hidden` must split evenly over `heads`.
void check_heads(const ConfigReader& reader, int64_t hidden, const char* hidden_key, int64_t heads,
                 const char* heads_key);

}  // namespace graft
