// graft.json, the one description of a run directory that every task writes and reads. Written through
// new_run_document + write_run_files (run.h) and read through read_run_document, which checks what every
// task shares (size, format, version, task, classes, names of the run's files); the task readers below
// check the rest. None of them builds a model, so the fuzz target run_json covers every task.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "graft/run.h"
#include "graft/text_data.h"

namespace graft {

constexpr int kRunFormatVersion = 1;
constexpr int64_t kMaxSequenceLength = 65536;  // tokens per example or block (max_length, block_size)

struct RunDocument {
  std::string file;                  // the graft.json read, for messages
  std::string task;                  // image-classify | video-classify | text-classify | causal-lm
  std::vector<std::string> classes;  // at most 100,000 non-empty names, no repeats; empty for causal-lm
  std::string freeze, data, weights_save_id;
  nlohmann::json doc;  // the whole object, for the task's own fields

  // Typed fields; a wrong type or a value out of range is a FormatError naming the file and the field.
  std::string text(const std::string& key) const;                                  // required string
  std::string text_or(const std::string& key, const std::string& fallback) const;  // absent or null: fallback
  int64_t integer_or(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const;
  bool flag_or(const std::string& key, bool fallback) const;
};

// The file's document, checked as above. Runs written by earlier graft versions (no format field) load.
RunDocument read_run_document(const std::string& graft_json);
// The task of dir/graft.json; "" when there is none or it does not read as a run document.
std::string run_task(const std::string& dir);
// The fields every task's graft.json starts with: format, versions, task, classes, freeze, data and the
// resolved training options. write_run_files adds the weights file and its save id.
nlohmann::json new_run_document(const std::string& task, const std::vector<std::string>& classes,
                                const std::string& freeze, const std::string& data,
                                const nlohmann::json& training);

// Each task's own fields.
RunSpec read_run_spec(const RunDocument& doc);  // image-classify

struct VideoRunSpec {
  std::string model, temporal;  // temporal "" for 3D CNNs
  Preprocessing preprocessing;
  int64_t frames = 0;  // 1..4096
};
VideoRunSpec read_video_run_spec(const RunDocument& doc);  // video-classify: two or more classes

struct TextRunSpec {
  int64_t max_length = 128, block_size = 128;  // 2..kMaxSequenceLength
  bool line_by_line = false;
  TextColumns columns;
};
TextRunSpec read_text_run_spec(const RunDocument& doc);  // text-classify, causal-lm

nlohmann::json columns_json(const TextColumns& columns);

}  // namespace graft
