// Keras models read from foreign files: the Keras .h5 formats (graft/keras_h5.h) and TF.js layers models
// (graft/tfjs.h) both yield a KerasModel, Keras' own view (layer names, configs, weights in Keras
// layout). Loading one into a graft model goes through a per-architecture name map (src/io/keras_convert)
// that renames ("conv1/kernel:0" -> "conv1.weight") and re-lays out (HWIO -> OIHW) every tensor.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "graft/model.h"
#include "graft/registry.h"
#include "graft/weights.h"

namespace graft {

// One layer of a Keras topology (the "layers" list of model_config).
struct KerasLayer {
  std::string name;                  // "conv_dw_1"
  std::string class_name;            // "DepthwiseConv2D"
  nlohmann::json config;             // the layer's config object, as in the file
  std::vector<std::string> inbound;  // names of the layers feeding it, in order
};

// The weights of one layer, in the layer's own order (Keras' weight_names / the manifest's order).
struct KerasLayerWeights {
  std::string layer;     // "conv1_bn"
  NamedTensors tensors;  // Keras names as stored: "conv1_bn/gamma:0" (.h5), "conv1_bn/gamma" (TF.js); float32
};

struct KerasModel {
  std::string source;           // the file read (model.json or .h5)
  std::string format;           // "tfjs-layers", "keras-h5" (full model) or "keras-h5-weights" (weights only)
  std::string keras_version;    // as recorded in the file, "" when absent
  nlohmann::json model_config;  // {"class_name": ..., "config": ...}; null for a weights-only file
  std::vector<KerasLayer> layers;          // the topology in model order; empty for a weights-only file
  std::vector<KerasLayerWeights> weights;  // layers that own weights, in file order

  // Every tensor with its Keras name, in file order.
  NamedTensors named_weights() const;
  // The topology's layer of that name, nullptr when absent (or no topology).
  const KerasLayer* find_layer(const std::string& name) const;
};

// Parses a Keras model_config ({"class_name": "Functional"|"Model"|"Sequential", "config": ...}) into its
// layers. Understands Keras 2 inbound nodes ([[["conv1", 0, 0, {}]]]) and the Keras 3 / TF.js form
// ({"args": [{"config": {"keras_history": ["conv1", 0, 0]}}]}); Sequential layers feed each other in
// order. Throws FormatError naming `file` and the layer on malformed entries.
std::vector<KerasLayer> parse_keras_layers(const nlohmann::json& model_config, const std::string& file);

// Reads a Keras file by its kind: a TF.js model.json, or a Keras .h5 / .hdf5 (full model or weights).
KerasModel read_keras_file(const std::string& path);

// The model's tensors with graft names and layouts, as the name map of model.arch() turns them out.
// Layers the map does not know keep their Keras names (load_state_dict reports them as unexpected).
// Throws SpecError when graft has no Keras name map for the architecture.
NamedTensors keras_to_graft(const BackboneImpl& model, const KerasModel& keras);

// Loads Keras weights into a graft model through its architecture's name map. BatchNorm epsilon and
// momentum are taken from the layer configs when the file has a topology. When the file's classifier
// has another class count, the classifier is reset to it (as load_weights does). Strict loading throws
// graft::Error listing each misfit by Keras layer and weight name with both shapes (the file's, in Keras
// layout, and the model's, in Keras layout too) before anything is copied.
LoadReport load_keras_weights(BackboneImpl& model, const KerasModel& keras,
                              const WeightsOptions& options = {});
// read_keras_file() + load_keras_weights(), for the two source formats.
LoadReport load_tfjs_weights(BackboneImpl& model, const std::string& model_json,
                             const WeightsOptions& options = {});
LoadReport load_keras_h5_weights(BackboneImpl& model, const std::string& path,
                                 const WeightsOptions& options = {});

}  // namespace graft
