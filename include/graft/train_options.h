// `graft train`'s options for every task, from one table: the flags with their help and defaults, the keys
// of a --config file, the checks (type, range, choices, which tasks take the option), and the resolved
// configuration that is printed and saved in graft.json ("training") all come from it. The option structs
// of the tasks (ImageTrainOptions, TextTrainOptions, VideoTrainOptions) hold the values; a test checks
// that each struct's fields and the table's rows for its task are the same set.
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "graft/image_task.h"
#include "graft/text_task.h"
#include "graft/video_task.h"

namespace graft {

// Which tasks take an option.
enum TaskMask : unsigned {
  kImageTask = 1,
  kVideoTask = 2,
  kTextClassifyTask = 4,
  kCausalLmTask = 8,
  kTextTasks = kTextClassifyTask | kCausalLmTask,
  kEveryTask = kImageTask | kVideoTask | kTextTasks,
};

enum class OptionType { kText, kInteger, kNumber, kSwitch, kNumbers };

struct OptionSpec {
  const char* key;  // --config and graft.json key; the flag is --key with '-' for '_'
  OptionType type;
  unsigned tasks;
  const char* help;
  double min = -std::numeric_limits<double>::infinity();  // numbers: the range, inclusive
  double max = std::numeric_limits<double>::infinity();
  const char* why = "";                   // said after the range when a value is out of it
  std::vector<std::string> choices = {};  // text: the values it may take (empty: any)
  const char* flag = "";                  // a switch that sets false: its flag ("--no-val" for validate)
};

const std::vector<OptionSpec>& train_option_table();
// The option of that key, or null.
const OptionSpec* find_train_option(const std::string& key);
// "--batch-size" for batch_size; a switch that sets false gives its own flag ("--no-val").
std::string option_flag(const OptionSpec& spec);
// The mask of a task name; throws graft::Error naming --task and the tasks there are.
unsigned task_mask(const std::string& task);
// The tasks of a mask as words ("image-classify and video-classify"), for messages.
std::string task_names(unsigned mask);

// Checks values (a JSON object of key -> value, from a --config file and the command line) before
// anything is read: every key known, taken by the task, of its type, in its range and among its choices.
// Errors name the option as a flag ("--rotation ...") and `source` when it is a file.
void check_train_values(const nlohmann::json& values, const std::string& task, const std::string& source);
// A flag's text as the option's JSON value; throws graft::Error naming the flag.
nlohmann::json parse_option_text(const OptionSpec& spec, const std::string& text);

// The values (checked) into a task's options; keys absent keep the options' defaults.
void apply_train_values(ImageTrainOptions& options, const nlohmann::json& values);
void apply_train_values(VideoTrainOptions& options, const nlohmann::json& values);
void apply_train_values(TextTrainOptions& options, const nlohmann::json& values);

// The resolved configuration of a task (every option it takes, as --config keys): what train prints and
// keeps in graft.json's "training".
nlohmann::json to_json(const ImageTrainOptions& options);
nlohmann::json to_json(const VideoTrainOptions& options);
nlohmann::json to_json(const TextTrainOptions& options);

// The defaults of every task an option applies to, as --help shows them ("10; text: 3").
std::string option_default_text(const OptionSpec& spec);

}  // namespace graft
