// The task table and open_run (graft/task.h).
#include "graft/task.h"

#include <algorithm>
#include <filesystem>

#include "graft/errors.h"
#include "graft/lora.h"
#include "graft/run_document.h"

namespace graft {

namespace fs = std::filesystem;

void Run::refuse_limit(const UseOptions& options) const {
  if (options.limit > 0)
    throw Error("--limit applies to image runs only (it picks images); " + dir_ + " is a " + task_ + " run");
}

const std::vector<TaskEntry>& task_table() {
  // Adding a task: its file's entry function, and one line here.
  static const std::vector<TaskEntry> table = {
      image_task_entry(),
      video_task_entry(),
      text_task_entry("text-classify"),
      text_task_entry("causal-lm"),
  };
  return table;
}

const TaskEntry& find_task(const std::string& name) {
  std::string known;
  for (const TaskEntry& entry : task_table()) {
    if (entry.name == name) return entry;
    known += (known.empty() ? "" : ", ") + entry.name;
  }
  throw Error("unknown task '" + name + "' (graft knows " + known + ")");
}

std::unique_ptr<Run> open_run(const std::string& dir) {
  const fs::path graft_json = fs::path(dir) / "graft.json";
  std::error_code error;
  if (fs::is_regular_file(graft_json, error))
    return find_task(read_run_document(graft_json.string()).task).open(dir);
  // A Hugging Face model folder reads as a text run; anything else gets the image run's message (no
  // graft.json: train one with `graft train`).
  if (fs::is_regular_file(fs::path(dir) / "config.json", error)) return find_task("text-classify").open(dir);
  return find_task("image-classify").open(dir);
}

namespace {

// Class names for a message: the first few, and how many in all when there are more.
std::string some_classes(const std::vector<std::string>& classes) {
  if (classes.empty()) return "no classes";
  std::string text;
  for (size_t i = 0; i < std::min<size_t>(classes.size(), 5); ++i) text += (i ? ", " : "") + classes[i];
  if (classes.size() > 5) text += ", ... (" + std::to_string(classes.size()) + " in all)";
  return text;
}

}  // namespace

std::vector<std::string> add_run_adapters(torch::nn::Module& model, const std::vector<std::string>& classes,
                                          const std::vector<std::string>& dirs, bool merge) {
  if (dirs.empty()) {
    if (merge) throw Error("--merge merges --adapter folders: give one or more");
    return {};
  }
  // A graft run as the adapter brings its classes' names: the run's head must give the same ones.
  for (const auto& dir : dirs) {
    const fs::path graft_json = fs::path(dir) / "graft.json";
    std::error_code error;
    if (!fs::is_regular_file(graft_json, error)) continue;
    const RunDocument doc = read_run_document(graft_json.string());
    if (doc.classes != classes)
      throw Error("adapter " + dir + " is a run of " + some_classes(doc.classes) +
                  "; the model it is laid on has " + some_classes(classes) +
                  ": use that run directory itself");
  }
  std::vector<std::string> said;
  if (!lora_layers(model).empty()) {
    const auto merged = merge_and_unload_lora(model);
    said.push_back("the run's own adapter merged into its base (" + std::to_string(merged.size()) +
                   " layers) before the --adapter folders");
  }
  for (auto& line : apply_adapters(model, dirs, merge)) said.push_back(std::move(line));
  return said;
}

}  // namespace graft
