// TF.js layers-model reader: model.json (Keras topology + weightsManifest) and its binary shards.
// Follows tfjs-core 4.22 src/io/weights_loader.ts (a group's shards are concatenated in order, weights
// laid out back to back in manifest order) and src/io/io_utils.ts decodeWeights (uint8/uint16:
// v * scale + min computed in double and stored as float32; float16 widened exactly).
#include "graft/tfjs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/strings.h"
#include "io/js_bundle.h"
#include "io/tfjs.h"

namespace graft {
namespace tfjs {
namespace {

using nlohmann::json;

constexpr uintmax_t kMaxModelJsonBytes = 64u << 20;       // the topology; real ones are < 1 MiB
constexpr int64_t kMaxWeightElements = int64_t{1} << 36;  // per tensor; guards the shape product

// Bytes per element of a dtype as stored in a shard; 0 when TF.js has no such weight dtype.
size_t dtype_size(const std::string& dtype) {
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "uint16" || dtype == "float16") return 2;
  if (dtype == "uint8" || dtype == "bool") return 1;
  return 0;
}

double finite_number(const json& object, const char* key, const std::string& where) {
  if (!object.contains(key) || !object[key].is_number()) {
    throw FormatError(where, std::string("quantization needs a number '") + key + "'");
  }
  const double value = object[key].get<double>();
  if (!std::isfinite(value))
    throw FormatError(where, std::string("quantization '") + key + "' is not finite");
  return value;
}

}  // namespace

int64_t WeightSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t WeightSpec::stored_bytes() const {
  return static_cast<size_t>(numel()) * dtype_size(stored_dtype);
}

WeightSpec parse_weight_spec(const json& entry, const std::string& where) {
  if (!entry.is_object())
    throw FormatError(where, "a weights entry is not an object: " + json_excerpt(entry));
  if (!entry.contains("name") || !entry["name"].is_string() || entry["name"].get<std::string>().empty()) {
    throw FormatError(where, "a weights entry has no name: " + json_excerpt(entry));
  }
  WeightSpec spec;
  spec.name = entry["name"].get<std::string>();
  const std::string at = where + ", weight '" + spec.name + "'";

  if (!entry.contains("shape") || !entry["shape"].is_array()) throw FormatError(at, "no \"shape\" array");
  int64_t numel = 1;
  for (const json& dim : entry["shape"]) {
    if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
      throw FormatError(at, "shape " + json_excerpt(entry["shape"]) + " must hold non-negative integers");
    }
    const int64_t d = dim.get<int64_t>();
    if (d > 0 && numel > kMaxWeightElements / d) {
      throw FormatError(at, "shape " + json_excerpt(entry["shape"]) + " has more than 2^36 elements");
    }
    numel *= d;
    spec.shape.push_back(d);
  }

  if (!entry.contains("dtype") || !entry["dtype"].is_string()) throw FormatError(at, "no \"dtype\" string");
  spec.dtype = entry["dtype"].get<std::string>();
  if (spec.dtype != "float32") {
    throw FormatError(at, "dtype '" + spec.dtype + "' is not supported",
                      "graft reads float32 weights, optionally quantized to uint8, uint16 or float16");
  }
  spec.stored_dtype = spec.dtype;

  if (entry.contains("quantization") && !entry["quantization"].is_null()) {
    const json& q = entry["quantization"];
    if (!q.is_object() || !q.contains("dtype") || !q["dtype"].is_string()) {
      throw FormatError(at, "\"quantization\" must be an object with a \"dtype\": " + json_excerpt(q));
    }
    spec.stored_dtype = q["dtype"].get<std::string>();
    if (spec.stored_dtype == "uint8" || spec.stored_dtype == "uint16") {
      spec.min = finite_number(q, "min", at);
      spec.scale = finite_number(q, "scale", at);
    } else if (spec.stored_dtype != "float16") {
      throw FormatError(at, "unknown quantization dtype '" + spec.stored_dtype + "'",
                        "TF.js quantizes to uint8, uint16 or float16");
    }
    if (q.contains("original_dtype") && q["original_dtype"] != "float32") {
      throw FormatError(
          at, "quantization original_dtype " + json_excerpt(q["original_dtype"]) + " is not supported");
    }
  }
  return spec;
}

float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN, payload kept
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: normalise the mantissa; every one is a normal float.
    exponent = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

torch::Tensor decode_weight(const uint8_t* data, const WeightSpec& spec) {
  torch::Tensor out = torch::empty(spec.shape, torch::kFloat32);
  float* values = out.data_ptr<float>();
  const int64_t n = spec.numel();
  if (n == 0) return out;  // an empty weight may sit at the end of an empty buffer
  // Shards are little-endian, as is every machine graft runs on (x86-64, aarch64).
  if (spec.stored_dtype == "float32") {
    std::memcpy(values, data, static_cast<size_t>(n) * sizeof(float));
  } else if (spec.stored_dtype == "float16") {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t half;
      std::memcpy(&half, data + 2 * i, 2);
      values[i] = half_to_float(half);
    }
  } else if (spec.stored_dtype == "uint8") {
    for (int64_t i = 0; i < n; ++i) values[i] = static_cast<float>(data[i] * spec.scale + spec.min);
  } else if (spec.stored_dtype == "uint16") {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, data + 2 * i, 2);
      values[i] = static_cast<float>(v * spec.scale + spec.min);
    }
  } else {
    throw Error("tfjs::decode_weight: stored dtype '" + spec.stored_dtype + "' of '" + spec.name + "'");
  }
  return out;
}

}  // namespace tfjs

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_text(const std::string& path) {
  const uint64_t size = regular_file_size(path, "TF.js model.json");  // a folder is said as one
  if (size > tfjs::kMaxModelJsonBytes) {
    throw FormatError(path, "is " + std::to_string(size) + " bytes; a TF.js model.json is at most 64 MiB");
  }
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) throw FormatError(path, "cannot be read");
  return text;
}

// One weight group: its shard files and the weights laid out across them.
struct Group {
  size_t index = 0;  // 1-based, as tfjs-converter numbers groupN-shardMofK
  std::vector<std::string> paths;
  std::vector<uintmax_t> sizes;
  // Shards shipped as JavaScript bundles (nsfwjs' group1-shard1of1.min.js) are unwrapped when listed;
  // empty for plain binary shards, which are read when the group is decoded.
  std::vector<std::vector<uint8_t>> unwrapped;
  std::vector<bool> bundled;
  std::vector<tfjs::WeightSpec> weights;
};

// Checks that the shards hold exactly the bytes the manifest describes. A short group is blamed on its
// last shard (the concatenated stream runs out there), naming the first weight that does not fit.
void check_group_bytes(const Group& group, const std::string& model_json) {
  uintmax_t available = 0;
  for (uintmax_t size : group.sizes) available += size;
  const uintmax_t before_last = available - group.sizes.back();
  uintmax_t needed = 0;
  for (const auto& spec : group.weights) needed += spec.stored_bytes();
  if (available < needed) {
    uintmax_t end = 0;
    size_t first_short = 0;
    for (; first_short < group.weights.size(); ++first_short) {
      end += group.weights[first_short].stored_bytes();
      if (end > available) break;
    }
    const tfjs::WeightSpec& spec = group.weights[first_short];
    std::ostringstream what;
    what << "expected " << needed - before_last << " bytes for '" << spec.name << "'"
         << (first_short + 1 < group.weights.size() ? " and the weights after it" : "") << ", file has "
         << group.sizes.back();
    std::ostringstream hint;
    hint << "truncated: weight group " << group.index << " of " << model_json << " needs " << needed
         << " bytes for " << group.weights.size() << " weight(s), its " << group.paths.size()
         << " shard file(s) hold " << available;
    throw FormatError(group.paths.back(), what.str(), hint.str());
  }
  if (available > needed) {
    std::ostringstream what;
    what << "has " << (available - needed) << " bytes more than weight group " << group.index << " of "
         << model_json << " describes (" << needed << " bytes for " << group.weights.size() << " weight(s))";
    throw FormatError(group.paths.back(), what.str(), "the manifest does not belong to these shards");
  }
}

std::vector<uint8_t> read_group_bytes(const Group& group) {
  uintmax_t total = 0;
  for (uintmax_t size : group.sizes) total += size;
  std::vector<uint8_t> bytes(static_cast<size_t>(total));
  size_t offset = 0;
  for (size_t i = 0; i < group.paths.size(); ++i) {
    if (group.bundled[i]) {
      std::copy(group.unwrapped[i].begin(), group.unwrapped[i].end(),
                bytes.begin() + static_cast<ptrdiff_t>(offset));
      offset += group.unwrapped[i].size();
      continue;
    }
    std::ifstream in(group.paths[i], std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(bytes.data() + offset),
                 static_cast<std::streamsize>(group.sizes[i]))) {
      throw FormatError(group.paths[i],
                        "cannot be read (" + std::to_string(group.sizes[i]) + " bytes expected)");
    }
    offset += static_cast<size_t>(group.sizes[i]);
  }
  return bytes;
}

bool is_bundle(const std::string& path) {
  return path.size() >= 3 && path.compare(path.size() - 3, 3, ".js") == 0;
}

std::string layer_of(const std::string& weight_name) {
  const size_t slash = weight_name.rfind('/');
  return slash == std::string::npos ? weight_name : weight_name.substr(0, slash);
}

}  // namespace

namespace tfjs {

nlohmann::json read_model_json(const std::string& file) {
  json root;
  if (is_bundle(file)) {
    root = js::read_bundled_json(file);  // model.min.js: model.json as a JavaScript literal
  } else {
    root = parse_json(read_text(file), file);
  }
  if (!root.is_object()) throw FormatError(file, "not a TF.js model: the JSON is not an object");
  return root;
}

NamedTensors read_manifest_weights(const json& root, const std::string& file) {
  NamedTensors weights;
  if (!root.contains("weightsManifest")) {
    throw FormatError(file, "no \"weightsManifest\": the file lists no weights",
                      "a model.json needs weightsManifest: [{\"paths\": [...], \"weights\": [...]}]");
  }
  const json& manifest = root["weightsManifest"];
  if (!manifest.is_array()) throw FormatError(file, "\"weightsManifest\" is not an array");

  const fs::path folder = fs::path(file).parent_path();
  std::set<std::string> seen;
  for (size_t g = 0; g < manifest.size(); ++g) {
    const json& entry = manifest[g];
    Group group;
    group.index = g + 1;
    const std::string where = file + ": weightsManifest group " + std::to_string(group.index);
    if (!entry.is_object()) throw FormatError(where, "not an object");
    if (!entry.contains("paths") || !entry["paths"].is_array() || entry["paths"].empty()) {
      throw FormatError(where, "no \"paths\" list of shard files");
    }
    if (!entry.contains("weights") || !entry["weights"].is_array())
      throw FormatError(where, "no \"weights\" list");
    for (const json& weight : entry["weights"]) {
      group.weights.push_back(tfjs::parse_weight_spec(weight, where));
      if (!seen.insert(group.weights.back().name).second) {
        throw FormatError(where, "weight '" + group.weights.back().name + "' appears twice in the manifest");
      }
    }
    for (const json& path : entry["paths"]) {
      if (!path.is_string() || path.get<std::string>().empty()) {
        throw FormatError(where, "a shard path is not a non-empty string: " + json_excerpt(path));
      }
      const std::string name = path.get<std::string>();
      if (name.find("://") != std::string::npos || fs::path(name).is_absolute()) {
        throw FormatError(where, "shard path '" + name + "' is not relative to model.json's folder");
      }
      // An untrusted model.json must not read files outside its folder ("../../.ssh/id_rsa" as weights).
      for (const fs::path& component : fs::path(name)) {
        if (component == "..") {
          throw FormatError(where, "shard path '" + name + "' leaves model.json's folder (it has '..')",
                            "TF.js shards sit beside model.json");
        }
      }
      std::string shard = (folder / name).string();
      std::error_code error;
      const std::string bundle = shard + ".min.js";
      if (!fs::exists(shard, error) && fs::is_regular_file(bundle, error)) {
        group.unwrapped.push_back(js::read_bundled_bytes(bundle));
        group.bundled.push_back(true);
        group.sizes.push_back(group.unwrapped.back().size());
        group.paths.push_back(bundle);
        continue;
      }
      if (!fs::is_regular_file(shard, error)) {
        throw FormatError(shard, "missing",
                          "model.json lists it in weight group " + std::to_string(group.index) +
                              " (first weight '" + (group.weights.empty() ? "" : group.weights.front().name) +
                              "')");
      }
      group.unwrapped.emplace_back();
      group.bundled.push_back(false);
      group.sizes.push_back(fs::file_size(shard, error));
      if (error) throw FormatError(shard, "cannot read its size: " + error.message());
      group.paths.push_back(shard);
    }
    check_group_bytes(group, file);
    const std::vector<uint8_t> bytes = read_group_bytes(group);
    size_t offset = 0;
    for (const auto& spec : group.weights) {
      weights.emplace_back(spec.name, tfjs::decode_weight(bytes.data() + offset, spec));
      offset += spec.stored_bytes();
    }
  }
  return weights;
}

}  // namespace tfjs

KerasModel read_tfjs_model(const std::string& model_json) {
  const std::string& file = model_json;
  const json root = tfjs::read_model_json(file);
  if (root.contains("format") && root["format"] == "graph-model") {
    throw FormatError(file, "a TF.js graph model (format \"graph-model\"), not a layers model",
                      "graph models hold a TensorFlow GraphDef, not a Keras topology: read them with "
                      "graft::TfjsGraphModel (graft forward --weights takes them)");
  }
  if (!root.contains("modelTopology") || !root["modelTopology"].is_object()) {
    throw FormatError(file, "no \"modelTopology\" object: not a TF.js layers model");
  }
  const json& topology = root["modelTopology"];
  if (topology.contains("node")) {
    throw FormatError(
        file, "modelTopology is a TensorFlow graph (it has \"node\"); graft reads layers models only");
  }

  KerasModel model;
  model.source = file;
  model.format = "tfjs-layers";
  if (topology.contains("keras_version") && topology["keras_version"].is_string()) {
    model.keras_version = topology["keras_version"].get<std::string>();
  }
  if (topology.contains("model_config")) {
    model.model_config = topology["model_config"];
  } else if (topology.contains("class_name") && topology.contains("config")) {
    model.model_config = topology;
  } else {
    throw FormatError(file, "modelTopology has neither \"model_config\" nor \"class_name\" + \"config\"");
  }
  model.layers = parse_keras_layers(model.model_config, file);

  for (auto& [name, value] : tfjs::read_manifest_weights(root, file)) {
    const std::string layer = layer_of(name);
    auto it = std::find_if(model.weights.begin(), model.weights.end(),
                           [&](const KerasLayerWeights& w) { return w.layer == layer; });
    if (it == model.weights.end()) {
      model.weights.push_back({layer, {}});
      it = std::prev(model.weights.end());
    }
    it->tensors.emplace_back(name, std::move(value));
  }
  return model;
}

}  // namespace graft
