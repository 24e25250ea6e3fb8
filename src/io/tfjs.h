// Internals of the TF.js reader, exposed for unit tests: one manifest entry and its decoding.
#pragma once
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace graft::tfjs {

// One entry of a weight group's "weights" list.
struct WeightSpec {
  std::string name;            // "conv2d_1/kernel"
  std::vector<int64_t> shape;  // Keras layout, e.g. HWIO
  std::string dtype;           // logical dtype: "float32" (also "int32", "bool", read as float32)
  std::string
      stored_dtype;  // bytes in the shard: dtype, or the quantization dtype ("uint8", "uint16", "float16")
  double min = 0.0, scale = 1.0;  // affine dequantisation for uint8 / uint16

  int64_t numel() const;
  size_t stored_bytes() const;  // numel * size of stored_dtype
};

// Parses one manifest entry; `where` (model.json and the group) prefixes error messages.
WeightSpec parse_weight_spec(const nlohmann::json& entry, const std::string& where);

// Decodes stored_bytes() bytes at `data` into a float32 tensor of spec.shape.
torch::Tensor decode_weight(const uint8_t* data, const WeightSpec& spec);

// model.json (or a JavaScript-bundled model.min.js) parsed; throws FormatError naming the file.
nlohmann::json read_model_json(const std::string& file);
// Every weight of root's weightsManifest, read from the shards next to `file` and dequantised, in
// manifest order (float32, Keras / TF layout).
std::vector<std::pair<std::string, torch::Tensor>> read_manifest_weights(const nlohmann::json& root,
                                                                         const std::string& file);

// IEEE-754 binary16 -> binary32, exact (subnormals, infinities and NaN included).
float half_to_float(uint16_t half);

}  // namespace graft::tfjs
