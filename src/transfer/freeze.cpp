// Freeze specs: which pretrained parameters stay fixed during training. The head (the custom head, or
// the freshly reset last classifier layer) is never frozen by a spec: it is what transfer learning trains.
#include "graft/errors.h"
#include "graft/strings.h"
#include "graft/transfer.h"

namespace graft {
std::vector<std::string> backbone_layers(BackboneImpl& model) {
  return module_layers(model, head_module_name(model));
}

std::vector<std::string> module_layers(const torch::nn::Module& model, const std::string& head) {
  std::vector<std::string> layers;
  // Parameters held by the model itself (ViT's cls_token) form the first layer, named "".
  if (!model.parameters(/*recurse=*/false).empty()) layers.push_back("");
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (item.value()->parameters(/*recurse=*/false).empty()) continue;
    if (is_dotted_prefix(item.key(), head)) continue;
    layers.push_back(item.key());
  }
  return layers;
}

FreezeReport apply_freeze(BackboneImpl& model, const std::string& spec) {
  FreezeReport report = apply_freeze(static_cast<torch::nn::Module&>(model), spec, head_module_name(model));
  model.train(model.is_training());  // re-apply the BatchNorm policy to the new frozen set
  return report;
}

namespace {

// A freeze spec read against the model: which of its layers the terms freeze (all, last:N, until:NAME) and
// the globs over parameter names. Throws SpecError naming a term that is malformed or matches nothing.
struct FreezeTerms {
  std::vector<bool> layer_frozen;
  std::vector<std::string> globs;
};
FreezeTerms read_freeze_terms(const std::string& spec, const std::vector<std::string>& layers,
                              const torch::OrderedDict<std::string, torch::Tensor>& params) {
  std::vector<bool> layer_frozen(layers.size(), false);
  std::vector<std::string> globs;
  std::string term;
  std::stringstream stream(spec);
  while (std::getline(stream, term, ',')) {
    term = trim(term);
    if (term.empty() || term == "none") continue;
    if (term == "all") {
      std::fill(layer_frozen.begin(), layer_frozen.end(), true);
    } else if (term.rfind("last:", 0) == 0) {
      const std::string count = term.substr(5);
      size_t used = 0;
      long long n = -1;
      try {
        n = std::stoll(count, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != count.size() || n < 0) {
        throw SpecError("freeze spec term '" + term +
                        "': expected last:N with N >= 0 (layers left trainable)");
      }
      // Keras' layers[:-N]: everything but the last N layers is frozen.
      const size_t keep = std::min<size_t>(static_cast<size_t>(n), layers.size());
      for (size_t i = 0; i + keep < layers.size(); ++i) layer_frozen[i] = true;
    } else if (term.rfind("until:", 0) == 0) {
      const std::string name = term.substr(6);
      size_t first = layers.size();
      for (size_t i = 0; i < layers.size(); ++i) {
        if (is_dotted_prefix(layers[i], name)) {
          first = i;
          break;
        }
      }
      if (first == layers.size()) {
        throw SpecError("freeze spec term '" + term + "': no layer named '" + name +
                        "' (first layers: " + (layers.empty() ? std::string("none") : layers.front()) +
                        ", ...; see `graft summary` for the names)");
      }
      for (size_t i = 0; i < first; ++i) layer_frozen[i] = true;
    } else {
      bool matched = false;
      for (const auto& item : params) matched = matched || glob_match(term, item.key());
      if (!matched) {
        throw SpecError("freeze spec term '" + term +
                        "' matches no parameter; expected all, none, last:N, until:NAME or a glob over "
                        "parameter names such as '" +
                        (layers.empty() ? std::string("layer1") : layers.front()) +
                        ".*' (this model's; `graft summary` lists the names)");
      }
      globs.push_back(term);
    }
  }
  return {layer_frozen, globs};
}

}  // namespace

FreezeReport apply_freeze(torch::nn::Module& model, const std::string& spec, const std::string& head) {
  const std::vector<std::string> layers = module_layers(model, head);
  auto params = model.named_parameters(/*recurse=*/true);
  const auto [layer_frozen, globs] = read_freeze_terms(spec, layers, params);

  // Only backbones declare fixed parameters (Keras BatchNorm without gamma); text models have none.
  const auto* backbone = dynamic_cast<const BackboneImpl*>(&model);
  FreezeReport report;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layer_frozen[i]) report.frozen_layers.push_back(layers[i]);
  }
  for (auto& item : params) {
    const std::string& name = item.key();
    // The parameter's owning layer is the longest layer name that prefixes it.
    bool frozen = false;
    if (!is_dotted_prefix(name, head)) {
      for (size_t i = 0; i < layers.size() && !frozen; ++i) {
        const std::string& layer = layers[i];
        const bool owns = layer.empty() ? name.find('.') == std::string::npos
                                        : name.rfind(layer + ".", 0) == 0 &&
                                              name.find('.', layer.size() + 1) == std::string::npos;
        if (owns) frozen = layer_frozen[i];
      }
      for (const auto& glob : globs) frozen = frozen || glob_match(glob, name);
    }
    if (backbone && backbone->is_fixed_parameter(name)) {  // a constant of the architecture, never trained
      item.value().set_requires_grad(false);
      report.fixed_parameters += 1;
      continue;
    }
    item.value().set_requires_grad(!frozen);
    (frozen ? report.frozen_parameters : report.trainable_parameters) += 1;
  }
  return report;
}

}  // namespace graft
