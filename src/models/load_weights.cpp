// Loading weights into a registered backbone: safetensors with reference names, or, through the
// architecture's name map, the Keras formats (.h5, TF.js model.json).
#include <filesystem>

#include "graft/keras.h"
#include "graft/registry.h"
#include "graft/transfer.h"

namespace graft {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

LoadReport load_weights(BackboneImpl& model, const std::string& path, const WeightsOptions& options) {
  // A TF.js model folder, its model.json, or a Keras .h5: read by its format, mapped by the architecture.
  const std::string model_json = (std::filesystem::path(path) / "model.json").string();
  if (std::filesystem::is_directory(path) && std::filesystem::is_regular_file(model_json)) {
    return load_keras_weights(model, read_keras_file(model_json), options);
  }
  if (ends_with(path, ".json") || ends_with(path, ".h5") || ends_with(path, ".hdf5")) {
    return load_keras_weights(model, read_keras_file(path), options);
  }
  const std::string head = head_module_name(model);
  LoadOptions load;
  load.strict = options.strict;
  load.source_name = path;
  if (options.skip_classifier) {
    if (!head.empty()) load.skip_prefixes.push_back(head);
  } else if (!head.empty() && !model.has_custom_head()) {
    SafeTensorsReader reader(path);
    const std::string weight = head + ".weight";
    if (reader.contains(weight) && reader.info(weight).shape.size() == 2 &&
        reader.info(weight).shape[0] != model.num_classes()) {
      model.reset_classifier(reader.info(weight).shape[0]);
    }
  }
  return load_safetensors(model, path, load);
}

}  // namespace graft
