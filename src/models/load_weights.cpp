// Loading weights into a registered backbone: safetensors with reference names, or, through the
// architecture's name map, the Keras formats (.h5, TF.js model.json).
#include <filesystem>

#include "graft/errors.h"
#include "graft/head.h"
#include "graft/hub.h"
#include "graft/keras.h"
#include "graft/registry.h"
#include "graft/strings.h"

namespace graft {
LoadReport load_weights(BackboneImpl& model, const std::string& path, const WeightsOptions& options) {
  // A TF.js model folder, its model.json, or a Keras .h5: read by its format, mapped by the architecture.
  if (std::filesystem::is_directory(path)) return load_keras_weights(model, read_keras_file(path), options);
  if (ends_with(path, ".json") || ends_with(path, ".js") || ends_with(path, ".h5") ||
      ends_with(path, ".hdf5")) {
    return load_keras_weights(model, read_keras_file(path), options);
  }
  const std::string head = head_module_name(model);
  LoadOptions load;
  load.strict = options.strict;
  load.source_name = path;
  load.listed = options.listed;
  load.hint = options.hint;
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

std::string pretrained_weights_file(const BackboneImpl& model) {
  const PretrainedCfg& cfg = model.default_cfg();
  const std::string name = model.arch() + "." + cfg.tag;
  const std::string file = pretrained_file(cfg);
  if (!file.empty()) {
    if (!std::filesystem::is_regular_file(file))
      throw Error(name + ": pretrained weights not found at " + file + "; fetch them once with `" +
                  cfg.fetch_command + "` (source: " + cfg.source + "), or pass --weights FILE");
    return file;
  }
  const std::string hub = "hf-hub:";
  if (cfg.source.rfind(hub, 0) == 0) return resolve_weights(cfg.source.substr(hub.size()));
  throw Error(
      name + ": graft cannot fetch these weights itself (source: " + cfg.source +
      "); give them with --weights FILE (safetensors with torchvision's names, a Keras .h5 or a TF.js "
      "model), or start " +
      model.arch() +
      " from random weights (the architecture alone, or train's "
      "--random-init)");
}

LoadReport load_pretrained(BackboneImpl& model, const WeightsOptions& options) {
  return load_weights(model, pretrained_weights_file(model), options);
}

}  // namespace graft
