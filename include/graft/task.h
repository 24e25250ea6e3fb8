// The tasks graft trains (image-classify, video-classify, text-classify, causal-lm) behind one interface.
// A task file supplies its TaskEntry: how to train from the resolved options and how to open a finished run
// for its uses (evaluate, predict, features); task_table lists the entries, one line each. The CLI's train,
// eval, predict and features reach every task through these and never name one.
#pragma once
#include <torch/types.h>

#include <functional>
#include <iosfwd>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graft/metrics.h"

namespace torch::nn {
class Module;
}

namespace graft {

// Top-k labels of one input: a file's path (image, clip) or a text; or why it could not be classified.
struct Prediction {
  std::string input;
  std::vector<std::pair<std::string, double>> top;  // (label, probability), best first
  std::string error;                                // "" when classified; else the message, naming the input
};

// Pooled features (embeddings) of every sample of a data set, in data order: what the classifier reads
// (an image backbone's pooled feature map, a clip model's temporal summary, BERT's pooled output, the
// mean of GPT-2's last hidden states over the tokens).
struct FeatureSet {
  torch::Tensor features;  // (N, D) float32
  torch::Tensor labels;    // (N) int64; -1 where the data has no labels (causal-lm)
  std::vector<std::string> ids;
  std::vector<std::string> classes;  // the names of the labels, where known
  std::vector<std::string> splits;   // per sample, the part of the data it comes from (train, val, ...);
                                     // empty when the data has no parts
};

// How a run reads data for evaluate and features.
struct UseOptions {
  int64_t batch_size = 32;
  size_t limit = 0;  // image runs: images to use, a seeded subset (0: all); other runs refuse it by name
  torch::Device device{torch::kCPU};
};

// A finished run directory of any task, its model loaded in eval mode.
class Run {
 public:
  virtual ~Run() = default;
  const std::string& dir() const { return dir_; }
  const std::string& task() const { return task_; }
  const std::vector<std::string>& classes() const { return classes_; }  // empty for causal-lm
  // What one sample is, plural, for messages: "images", "clips", "examples".
  virtual std::string unit() const = 0;
  // predict's inputs are texts (text runs), not files.
  virtual bool reads_text() const { return false; }

  // Metrics on labelled data laid out as the task's training data (DATA/val when DATA has train/ + val/).
  virtual Metrics evaluate(const std::string& data, const UseOptions& options, std::ostream& log) = 0;
  // The top_k labels of each input (files or texts), in order; an input that cannot be read gets its
  // error instead and the others are still classified.
  virtual std::vector<Prediction> predict(const std::vector<std::string>& inputs, int64_t top_k,
                                          torch::Device device) = 0;
  virtual FeatureSet features(const std::string& data, const UseOptions& options, std::ostream& log) = 0;
  // The loaded model (eval mode), for adapters laid on it (add_run_adapters).
  virtual torch::nn::Module& model() = 0;

 protected:
  Run(std::string dir, std::string task, std::vector<std::string> classes)
      : dir_(std::move(dir)), task_(std::move(task)), classes_(std::move(classes)) {}
  // Throws graft::Error naming --limit when options.limit is set on a run that has no use for it.
  void refuse_limit(const UseOptions& options) const;

 private:
  std::string dir_, task_;
  std::vector<std::string> classes_;
};

struct TaskEntry {
  std::string name;         // as graft.json's "task" and --task say it
  bool needs_model = true;  // --model (or --init-from) is required; text tasks read it from --weights
  // Trains from the resolved option values (train_options.h: checked, with defaults left out), after
  // check_out_folder with `overwrite`; returns the saved model's validation metrics, none without validation.
  using Train =
      std::function<std::optional<Metrics>(const nlohmann::json& values, bool overwrite, std::ostream& log)>;
  Train train;
  // Opens a run directory of this task (or, for text tasks, a Hugging Face folder).
  std::function<std::unique_ptr<Run>(const std::string& dir)> open;
};

const std::vector<TaskEntry>& task_table();
// Throws graft::Error listing the tasks when `name` is none of them.
const TaskEntry& find_task(const std::string& name);

// The run in dir, by the task its graft.json names; a folder without graft.json opens as an image run (which
// says what is missing) unless it is a Hugging Face text model folder.
std::unique_ptr<Run> open_run(const std::string& dir);

// Lays PEFT LoRA adapter folders on a loaded run's model, as graft/lora.h apply_adapters does (one kept
// beside the base; several only with `merge`, each merged in turn); a LoRA run's own adapter is merged into
// its base first. An adapter folder that is a graft run of other classes than `classes` is refused, naming
// both. Returns a line to say of each adapter.
std::vector<std::string> add_run_adapters(torch::nn::Module& model, const std::vector<std::string>& classes,
                                          const std::vector<std::string>& dirs, bool merge);

// Each task file's entry (listed by task_table).
TaskEntry image_task_entry();
TaskEntry video_task_entry();
TaskEntry text_task_entry(const std::string& name);  // text-classify | causal-lm

}  // namespace graft
