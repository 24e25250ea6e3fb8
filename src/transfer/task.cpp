// The task table and open_run (graft/task.h).
#include "graft/task.h"

#include <filesystem>

#include "graft/errors.h"
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

}  // namespace graft
