// Loading reference-named safetensors weights into a registered backbone.
#include "graft/registry.h"
#include "graft/transfer.h"

namespace graft {

LoadReport load_weights(BackboneImpl& model, const std::string& path, const WeightsOptions& options) {
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
