// The config.json keys the Hugging Face models share: see hf_config.h.
#include "models/hf_config.h"

#include <exception>
#include <vector>

namespace graft {

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

}  // namespace graft
