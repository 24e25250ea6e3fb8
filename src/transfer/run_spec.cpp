// Reading a run directory's graft.json, for every task (run_document.h). Kept apart from the loaders so
// that the untrusted-file checks run, and are fuzzed (tests/fuzz, run_json), without a model.
#include <torch/version.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/run_document.h"

namespace graft {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uintmax_t kMaxRunJsonBytes = 16u << 20;  // a graft.json is a few KiB; class names dominate
constexpr size_t kMaxClasses = 100000;             // ImageNet-21k has 21,841
constexpr size_t kMaxClassNameBytes = 4096;

const std::set<std::string>& known_tasks() {
  static const std::set<std::string> tasks{"image-classify", "video-classify", "text-classify", "causal-lm"};
  return tasks;
}

template <typename T>
T field(const json& doc, const std::string& key, const std::string& file, const char* expected) {
  if (!doc.contains(key))
    throw FormatError(file, "missing field '" + key + "'", std::string("expected ") + expected);
  try {
    return doc.at(key).get<T>();
  } catch (const json::exception&) {
    throw FormatError(file, "field '" + key + "' is " + json_excerpt(doc.at(key)),
                      std::string("expected ") + expected);
  }
}

// A name the run directory holds (weights, config, tokenizer files): a plain file name, so that reading a
// run never reaches outside its folder.
void check_file_name(const json& value, const std::string& key, const std::string& file) {
  const std::string name = value.is_string() ? value.get<std::string>() : "";
  if (name.empty() || name == "." || name == ".." || name.find_first_of("/\\") != std::string::npos ||
      name.find('\0') != std::string::npos)
    throw FormatError(file, "field '" + key + "' is " + json_excerpt(value),
                      "expected a file name inside the run directory");
}

std::vector<std::string> read_classes(const json& doc, const std::string& file) {
  if (!doc.contains("classes")) return {};
  const json& value = doc.at("classes");
  if (!value.is_array())
    throw FormatError(file, "field 'classes' is " + json_excerpt(value), "expected a list of names");
  if (value.size() > kMaxClasses)
    throw FormatError(file, "field 'classes' lists " + std::to_string(value.size()) + " classes",
                      "expected at most graft's limit of " + std::to_string(kMaxClasses));
  std::vector<std::string> classes;
  std::set<std::string> seen;
  for (size_t i = 0; i < value.size(); ++i) {
    const json& name = value[i];
    if (!name.is_string() || name.get_ref<const std::string&>().empty() ||
        name.get_ref<const std::string&>().size() > kMaxClassNameBytes)
      throw FormatError(
          file, "classes[" + std::to_string(i) + "] is " + json_excerpt(name),
          "expected a non-empty name of at most " + std::to_string(kMaxClassNameBytes) + " bytes");
    if (!seen.insert(name.get<std::string>()).second)
      throw FormatError(file, "classes[" + std::to_string(i) + "] repeats " + json_excerpt(name),
                        "expected each class named once");
    classes.push_back(name.get<std::string>());
  }
  return classes;
}

}  // namespace

std::string RunDocument::text(const std::string& key) const {
  return field<std::string>(doc, key, file, "a string");
}

std::string RunDocument::text_or(const std::string& key, const std::string& fallback) const {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_string())
    throw FormatError(file, "field '" + key + "' is " + json_excerpt(*it), "expected a string");
  return it->get<std::string>();
}

int64_t RunDocument::integer_or(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi)
    throw FormatError(file, "field '" + key + "' is " + json_excerpt(*it),
                      "expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  return it->get<int64_t>();
}

bool RunDocument::flag_or(const std::string& key, bool fallback) const {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    throw FormatError(file, "field '" + key + "' is " + json_excerpt(*it), "expected true or false");
  return it->get<bool>();
}

RunDocument read_run_document(const std::string& file) {
  std::error_code error;
  const uintmax_t size = fs::file_size(file, error);
  if (error) throw Error(file + ": cannot read graft.json: " + error.message());
  if (size > kMaxRunJsonBytes) {
    throw FormatError(file, "is " + std::to_string(size) + " bytes, more than the " +
                                std::to_string(kMaxRunJsonBytes) + "-byte limit for a graft.json");
  }
  RunDocument run;
  run.file = file;
  run.doc = read_json_file(file, kMaxRunJsonBytes);
  if (!run.doc.is_object()) throw FormatError(file, "is " + json_excerpt(run.doc), "expected a JSON object");
  // Runs from before the format field have none; anything else must be ours, and not from a newer graft.
  const std::string format = run.text_or("format", "graft-run");
  if (format != "graft-run") throw FormatError(file, "format '" + format + "'", "expected graft-run");
  const int64_t version = run.integer_or("format_version", kRunFormatVersion, 1, 1u << 30);
  if (version > kRunFormatVersion)
    throw FormatError(
        file, "format_version " + std::to_string(version) + " was written by a newer graft",
        "expected version " + std::to_string(kRunFormatVersion) + " or older; update graft to read this run");
  run.task = run.text("task");
  if (!known_tasks().count(run.task))
    throw FormatError(file, "task '" + run.task + "' is not one graft knows",
                      "expected image-classify, video-classify, text-classify or causal-lm");
  run.classes = read_classes(run.doc, file);
  run.freeze = run.text_or("freeze", "");
  run.data = run.text_or("data", "");
  run.weights_save_id = run.text_or("weights_save_id", "");
  for (const char* key : {"weights", "config"})
    if (run.doc.contains(key)) check_file_name(run.doc.at(key), key, file);
  if (run.doc.contains("tokenizer")) {
    const json& names = run.doc.at("tokenizer");
    if (!names.is_array())
      throw FormatError(file, "field 'tokenizer' is " + json_excerpt(names), "expected a list of file names");
    for (size_t i = 0; i < names.size(); ++i)
      check_file_name(names[i], "tokenizer[" + std::to_string(i) + "]", file);
  }
  return run;
}

json new_run_document(const std::string& task, const std::vector<std::string>& classes,
                      const std::string& freeze, const std::string& data, const json& training) {
  json doc;
  doc["format"] = "graft-run";
  doc["format_version"] = kRunFormatVersion;
  doc["graft_version"] = GRAFT_VERSION;
  doc["libtorch_version"] = TORCH_VERSION;
  doc["task"] = task;
  doc["classes"] = classes;
  doc["freeze"] = freeze;
  doc["data"] = data;
  doc["training"] = training;
  return doc;
}

std::string run_task(const std::string& dir) {
  const fs::path file = fs::path(dir) / "graft.json";
  std::error_code error;
  if (!fs::is_regular_file(file, error)) return "";
  try {
    return read_run_document(file.string()).task;
  } catch (const Error&) {
    return "";
  }
}

RunSpec read_run_spec(const RunDocument& run) {
  RunSpec spec;
  spec.task = run.task;
  spec.model = run.text("model");
  spec.head = run.text("head");
  spec.freeze = run.freeze;
  spec.classes = run.classes;
  spec.data = run.data;
  spec.weights_save_id = run.weights_save_id;
  if (spec.classes.empty())
    throw FormatError(run.file, "field 'classes' is empty or missing", "expected the class names");
  spec.preprocessing =
      read_preprocessing(field<json>(run.doc, "preprocessing", run.file, "an object"), run.file);
  return spec;
}

RunSpec read_run_spec(const std::string& file) {
  const RunDocument run = read_run_document(file);
  if (run.task != "image-classify") {
    throw FormatError(file, "task '" + run.task + "' is not supported by this command",
                      "expected image-classify");
  }
  return read_run_spec(run);
}

VideoRunSpec read_video_run_spec(const RunDocument& run) {
  VideoRunSpec spec;
  spec.model = run.text("model");
  spec.temporal = run.text_or("temporal", "");
  if (run.classes.size() < 2)
    throw FormatError(run.file, "field 'classes' lists fewer than two classes", "expected two or more");
  const json pre = field<json>(run.doc, "preprocessing", run.file, "an object");
  spec.preprocessing = read_preprocessing(pre, run.file);
  spec.frames = field<int64_t>(pre, "frames", run.file, "an integer");
  if (spec.frames <= 0 || spec.frames > 4096)
    throw FormatError(run.file, "preprocessing frames " + std::to_string(spec.frames), "expected 1..4096");
  return spec;
}

TextRunSpec read_text_run_spec(const RunDocument& run) {
  TextRunSpec spec;
  // Sequence lengths as train checked them: a 0 block size divided by zero in eval.
  spec.max_length = run.integer_or("max_length", 128, 2, kMaxSequenceLength);
  spec.block_size = run.integer_or("block_size", 128, 2, kMaxSequenceLength);
  spec.line_by_line = run.flag_or("line_by_line", false);
  const auto it = run.doc.find("columns");
  if (it != run.doc.end() && !it->is_null()) {
    if (!it->is_object())
      throw FormatError(run.file, "field 'columns' is " + json_excerpt(*it), "expected an object");
    RunDocument columns{run.file, run.task, {}, "", "", "", *it};
    TextColumns& c = spec.columns;
    c.format = columns.text_or("format", c.format);
    c.text = columns.text_or("text", c.text);
    c.text_pair = columns.text_or("text_pair", c.text_pair);
    c.label = columns.text_or("label", c.label);
    c.header = columns.flag_or("header", c.header);
  }
  return spec;
}

json columns_json(const TextColumns& c) {
  return {{"format", c.format},
          {"text", c.text},
          {"text_pair", c.text_pair},
          {"label", c.label},
          {"header", c.header}};
}

json preprocessing_json(const Preprocessing& p) {
  return {{"size", p.size},
          {"crop_pct", p.crop_pct},
          {"mean", p.mean},
          {"std", p.std},
          {"interpolation", p.interpolation}};
}

Preprocessing read_preprocessing(const json& pre, const std::string& file) {
  if (!pre.is_object())
    throw FormatError(file,
                      "field 'preprocessing' has the wrong type (" + std::string(pre.type_name()) + ")");
  Preprocessing p;
  p.size = field<int64_t>(pre, "size", file, "an integer");
  p.crop_pct = field<double>(pre, "crop_pct", file, "a number");
  p.mean = field<std::array<double, 3>>(pre, "mean", file, "three numbers");
  p.std = field<std::array<double, 3>>(pre, "std", file, "three numbers");
  RunDocument fields{file, "", {}, "", "", "", pre};
  p.interpolation = fields.text_or("interpolation", "bilinear");
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
