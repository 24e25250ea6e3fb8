// TF.js layers models (model.json + binary weight shards), as tfjs-converter writes them and
// tfjs-layers / tfjs-core io (weights_loader.ts, io_utils.ts decodeWeights) read them.
//
// model.json: {"format": "layers-model" (optional), "modelTopology": {"model_config": {Keras config}} or
// {"class_name": ..., "config": ...}, "weightsManifest": [{"paths": ["group1-shard1of1", ...],
// "weights": [{"name": "conv2d_1/kernel", "shape": [3, 3, 3, 16], "dtype": "float32",
// "quantization": {"dtype": "uint8"|"uint16", "min": m, "scale": s} | {"dtype": "float16"}}, ...]}, ...]}.
// The shards of a group are one byte stream cut into files; its weights follow each other in that
// stream in manifest order, each stored in its quantized dtype (little-endian).
#pragma once
#include <string>

#include "graft/keras.h"

namespace graft {

// Reads model.json and every shard it lists (paths relative to model.json's folder). Weights come out
// as float32 tensors in Keras layout, dequantised exactly as TF.js does (uint8/uint16: v * scale + min,
// float16: widened), grouped by layer (the part of the name before the last '/'). Throws FormatError
// naming model.json or the shard, and the weight, on anything malformed: bad JSON, no manifest, a
// graph model, a missing or truncated shard, an unknown dtype, a shape that does not fit the bytes.
KerasModel read_tfjs_model(const std::string& model_json);

}  // namespace graft
