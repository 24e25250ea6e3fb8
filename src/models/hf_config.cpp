// The config.json keys the Hugging Face models share: see hf_config.h.
#include "models/hf_config.h"

#include <exception>
#include <limits>
#include <map>
#include <vector>

namespace graft {

int64_t size_limit(const std::string& key) {
  static const std::map<std::string, int64_t> limits = {{"vocab_size", int64_t{1} << 24},
                                                        {"hidden_size", int64_t{1} << 16},
                                                        {"n_embd", int64_t{1} << 16},
                                                        {"num_hidden_layers", 1024},
                                                        {"n_layer", 1024},
                                                        {"num_attention_heads", 1024},
                                                        {"n_head", 1024},
                                                        {"num_key_value_heads", 1024},
                                                        {"head_dim", int64_t{1} << 16},
                                                        {"intermediate_size", int64_t{1} << 20},
                                                        {"max_position_embeddings", int64_t{1} << 20},
                                                        {"n_positions", int64_t{1} << 20},
                                                        {"type_vocab_size", 1024},
                                                        {"image_size", int64_t{1} << 14},
                                                        {"patch_size", int64_t{1} << 14},
                                                        {"num_channels", 64}};
  const auto it = limits.find(key);
  return it == limits.end() ? int64_t{1} << 31 : it->second;
}

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
    if (static_cast<int64_t>(labels.size()) > kMaxLabels)
      reader.fail("id2label", "at most " + std::to_string(kMaxLabels) + " labels", labels);
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
    if (n < 0 || n > kMaxLabels)
      reader.fail("num_labels", "an integer in 0.." + std::to_string(kMaxLabels), root.at("num_labels"));
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

void check_token_ids(const torch::Tensor& ids, int64_t rows, const std::string& model, const char* what) {
  if (!ids.defined()) return;
  if (!c10::isIntegralType(ids.scalar_type(), /*includeBool=*/false))
    throw Error(model + ": " + what + " holds " + std::string(c10::toString(ids.scalar_type())) +
                " values; expected integer token ids");
  if (ids.dim() >= 2 && ids.size(-1) == 0)
    throw Error(model + ": " + what + " is an empty sequence (length 0); give at least one token");
  if (ids.numel() == 0) return;
  const auto [lo, hi] = torch::aminmax(ids);
  const int64_t low = lo.item<int64_t>(), high = hi.item<int64_t>();
  if (low < 0 || high >= rows) {
    const int64_t bad = low < 0 ? low : high;
    throw Error(model + ": " + what + " holds id " + std::to_string(bad) + ", outside the embedding's " +
                std::to_string(rows) + " entries (ids 0.." + std::to_string(rows - 1) +
                "); the tokenizer or the inputs do not belong to this model");
  }
}

double lowest_of(torch::ScalarType dtype) {
  double lowest = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, dtype, "lowest_of", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  return lowest;
}

void check_attention_mask(const torch::Tensor& mask, const std::string& model) {
  if (!mask.defined() || mask.numel() == 0) return;
  if (mask.ne(0).logical_and(mask.ne(1)).any().item<bool>())
    throw Error(model + ": attention_mask holds values other than 0 (padding) and 1 (attended)");
}

json HfCommonConfig::common_json() const {
  json out = json::object();
  out["model_type"] = model_type;
  out["architectures"] = architectures;
  out["initializer_range"] = initializer_range;
  out["tie_word_embeddings"] = tie_word_embeddings;
  json id2label_json = json::object(), label2id = json::object();
  for (size_t i = 0; i < id2label.size(); ++i) {
    id2label_json[std::to_string(i)] = id2label[i];
    label2id[id2label[i]] = i;
  }
  out["id2label"] = id2label_json;
  out["label2id"] = label2id;
  if (!problem_type.empty()) out["problem_type"] = problem_type;
  return out;
}

}  // namespace graft
