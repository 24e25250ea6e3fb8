// The model registry: "arch.tag" names (resnet50.tv_in1k) mapped to a builder and the pretrained
// configuration of each tag. The table of architectures is data: each architecture's file registers its
// entries (register_resnet in src/models/resnet.cpp, ...), and src/models/registry.cpp lists them in order.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "graft/model.h"

namespace graft {

struct ModelEntry {
  std::string arch;         // "resnet50"
  std::string family;       // "resnet"
  std::string description;  // one line
  std::function<Backbone(int64_t num_classes)> build;
  std::vector<PretrainedCfg> tags;  // first one is the default
};

struct ModelName {
  std::string arch;
  std::string tag;  // empty when none given
  static ModelName parse(const std::string& text);
};

const std::vector<ModelEntry>& model_entries();
// Throws SpecError listing close names when arch is unknown.
const ModelEntry& find_model(const std::string& arch);

// Builds the architecture with the tag's config (or the default tag's) attached. No weights are
// loaded: random initialisation, as torchvision's constructors give. num_classes < 0 means the tag's.
// A tag with its own head (PretrainedCfg::head) gets that head when num_classes < 0.
Backbone create_model(const std::string& name, int64_t num_classes = -1);

// Where fetched weights live: $GRAFT_CACHE, else $XDG_CACHE_HOME/graft, else ~/.cache/graft.
std::string cache_dir();
// The cached weights file of a tag (cache_dir() / cfg.cache_file); "" when graft cannot fetch the tag.
std::string pretrained_file(const PretrainedCfg& cfg);

}  // namespace graft

// Weights loading needs LoadReport (graft/weights.h), which is heavier than the table above.
#include "graft/weights.h"

namespace graft {

struct WeightsOptions {
  bool strict = true;            // every tensor must match (see LoadOptions)
  bool skip_classifier = false;  // leave the head (head_module_name) as initialised: it is being replaced
  size_t listed = SIZE_MAX;      // a misfit's message: names listed of each kind (LoadOptions)
  std::string hint;              // ... and what to do about it (LoadOptions)
};

// Loads a safetensors file with reference names into the model. When the file's last classifier layer
// has another number of classes than the model, the classifier is reset to the file's count first (a
// fine-tuned 10-class file loads into a 1000-class build). Returns the report; strict throws on misfit.
LoadReport load_weights(BackboneImpl& model, const std::string& path, const WeightsOptions& options = {});

// The weights file of the model's tag (timm's pretrained=True): graft's cache for weights graft fetches
// itself (PretrainedCfg::cache_file), or the Hugging Face cache for a Hub source ("hf-hub:ORG/NAME",
// pulled when it is not there and the network is). Throws graft::Error with the one command or flag that
// gets them when they are not to be had; never falls back to random weights.
std::string pretrained_weights_file(const BackboneImpl& model);
// load_weights of pretrained_weights_file.
LoadReport load_pretrained(BackboneImpl& model, const WeightsOptions& options = {});

}  // namespace graft
