// Reading a run directory's graft.json (written by save_run in run_dir.cpp) into a RunSpec. Kept apart
// from load_run so that the untrusted-file checks run, and are fuzzed (tests/fuzz), without a model.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/run.h"

namespace graft {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uintmax_t kMaxRunJsonBytes = 16u << 20;  // a graft.json is a few KiB; class names dominate
constexpr size_t kMaxClasses = 100000;             // ImageNet-21k has 21,841

template <typename T>
T field(const json& doc, const std::string& key, const std::string& file) {
  if (!doc.contains(key)) throw FormatError(file, "missing field '" + key + "'");
  try {
    return doc.at(key).get<T>();
  } catch (const json::exception& e) {
    throw FormatError(file, "field '" + key + "' has the wrong type (" + doc.at(key).type_name() + ")");
  }
}

// An optional string field: absent or null gives `fallback`, any other non-string is an error.
std::string string_or(const json& doc, const std::string& key, const std::string& fallback,
                      const std::string& file) {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_string())
    throw FormatError(file,
                      "field '" + key + "' has the wrong type (" + it->type_name() + "), expected a string");
  return it->get<std::string>();
}

}  // namespace

RunSpec read_run_spec(const std::string& file) {
  std::error_code error;
  const uintmax_t size = fs::file_size(file, error);
  if (error) throw Error(file + ": cannot read graft.json: " + error.message());
  if (size > kMaxRunJsonBytes) {
    throw FormatError(file, "is " + std::to_string(size) + " bytes, more than the " +
                                std::to_string(kMaxRunJsonBytes) + "-byte limit for a graft.json");
  }
  const json doc = read_json_file(file, kMaxRunJsonBytes);
  if (!doc.is_object()) throw FormatError(file, "expected a JSON object");
  RunSpec spec;
  spec.task = field<std::string>(doc, "task", file);
  if (spec.task != "image-classify") {
    throw FormatError(file,
                      "task '" + spec.task + "' is not supported by this command (expected image-classify)");
  }
  spec.model = field<std::string>(doc, "model", file);
  spec.head = field<std::string>(doc, "head", file);
  spec.freeze = string_or(doc, "freeze", "", file);
  spec.classes = field<std::vector<std::string>>(doc, "classes", file);
  spec.data = string_or(doc, "data", "", file);
  spec.weights_save_id = string_or(doc, "weights_save_id", "", file);
  if (spec.classes.empty()) throw FormatError(file, "field 'classes' is empty");
  if (spec.classes.size() > kMaxClasses) {
    throw FormatError(file, "field 'classes' lists " + std::to_string(spec.classes.size()) +
                                " classes, more than graft's limit of " + std::to_string(kMaxClasses));
  }
  spec.preprocessing = read_preprocessing(field<json>(doc, "preprocessing", file), file);
  return spec;
}

Preprocessing read_preprocessing(const json& pre, const std::string& file) {
  if (!pre.is_object())
    throw FormatError(file,
                      "field 'preprocessing' has the wrong type (" + std::string(pre.type_name()) + ")");
  Preprocessing p;
  p.size = field<int64_t>(pre, "size", file);
  p.crop_pct = field<double>(pre, "crop_pct", file);
  p.mean = field<std::array<double, 3>>(pre, "mean", file);
  p.std = field<std::array<double, 3>>(pre, "std", file);
  p.interpolation = string_or(pre, "interpolation", "bilinear", file);
  if (p.size <= 0 || p.size > 4096 || !(p.crop_pct > 0.0 && p.crop_pct <= 1.0)) {
    throw FormatError(file, "preprocessing size must be in 1..4096 and crop_pct in (0, 1]");
  }
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(p.mean[c]) || !std::isfinite(p.std[c]) || !(p.std[c] > 0.0)) {
      throw FormatError(file, "preprocessing mean and std must be finite numbers, std > 0");
    }
  }
  if (p.interpolation != "bilinear" && p.interpolation != "bilinear-align-corners" &&
      p.interpolation != "bicubic")
    throw FormatError(file, "preprocessing interpolation '" + p.interpolation + "' is not one graft knows",
                      "expected bilinear, bilinear-align-corners or bicubic");
  return p;
}

}  // namespace graft
