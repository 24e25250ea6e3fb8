// One training driver for every task: train_run takes a task's TrainRecipe (what is its own: data, model
// and preprocessing, its weights formats, extra files, a per-task callback such as two-stage) and does the
// rest in one order, with the steps below.
#pragma once
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graft/data.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/task.h"
#include "graft/train_options.h"
#include "graft/trainer.h"
#include "graft/weights.h"

namespace graft {

// What a task trains, and how its saved model is checked afterwards.
struct FitPlan {
  // The parts that learn and their batches: the whole model on its inputs, or, with cached features, the
  // head alone on the features.
  std::shared_ptr<torch::nn::Module> trained;
  Trainer::Forward trained_forward;
  BatchSource* train = nullptr;
  BatchSource* val = nullptr;  // null: no validation
  // The whole model as predict runs it, and its validation batches when they differ from `val` (cached
  // features); the final metrics and val_report.txt come from these.
  std::shared_ptr<torch::nn::Module> model;
  Trainer::Forward model_forward;
  BatchSource* model_val = nullptr;
  std::string model_sample_unit;  // "": config.sample_unit
};

struct FitOutcome {
  TrainHistory history;
  std::optional<Metrics> val_metrics;  // the saved model on the validation split; none without one
};

class BackboneImpl;

// The options every task has, as the driver reads them.
struct RunBasics {
  std::string task, model, data, out, weights, init_from;
  std::string lora;     // --lora's spec; "": the task's freeze
  std::string adapter;  // --adapter: a LoRA adapter folder trained further; "": none
  bool random_init = false;
  std::string sample_unit;             // what the progress bars count ("img", "clip", "seq")
  std::string objective;               // "classify" or "causal-lm"
  const TrainConfig* train = nullptr;  // epochs, optimiser, schedule, seed, device, resume
};

// The basics of a task whose options name them alike; random_init is the backbone tasks' own, set by them.
template <class Options>
RunBasics basics_of(const Options& o, const std::string& task, const std::string& sample_unit,
                    const std::string& objective) {
  RunBasics b;
  b.task = task;
  b.model = o.model;
  b.data = o.data;
  b.out = o.out;
  b.weights = o.weights;
  b.init_from = o.init_from;
  b.lora = o.lora;
  b.adapter = o.adapter;
  b.sample_unit = sample_unit;
  b.objective = objective;
  b.train = &o.train;
  return b;
}

// Where a run starts, chosen once for every task: --init-from (an earlier run), --weights (a file or
// folder), the tag of ARCH.TAG (its pretrained weights), or random weights (a bare architecture, or
// --random-init). Two given together are refused before anything is read (check_start_choice).
struct StartChoice {
  enum class Kind { kRun, kFile, kPretrained, kRandom };
  Kind kind = Kind::kRandom;
  std::string source;         // the run directory or the weights file; "" otherwise
  std::string model;          // the model name
  bool asked_random = false;  // kRandom because --random-init said so (a tag names weights)
};

// Throws graft::Error naming the two choices given together; called before anything is read.
void check_start_choice(const std::string& weights, const std::string& init_from, bool random_init);
StartChoice start_choice(const RunBasics& basics);

// A backbone's start (kFile, kPretrained or kRandom; a run's weights are the task's to load), loaded
// before its classifier is replaced (and so without it): the file (reference names); the tag's pretrained
// weights (load_pretrained: graft's cache or the Hugging Face Hub), which stop the run saying how to get
// them when they are not to be had; or none. Says which.
// A file that does not fit is refused naming its first tensors of each kind (every one when verbose).
// Returns the file loaded ("" for random weights): a LoRA run's base.
std::string load_start_weights(BackboneImpl& model, const StartChoice& start, bool verbose,
                               std::ostream& log);

// What --lora adapts in a task's model (TrainRecipe::lora_place), and what its run directory names as the
// base the adapter goes with.
struct LoraPlace {
  torch::nn::Module* model = nullptr;  // null: the task takes no adapter; its names are the adapter's
  std::vector<std::string> whole;      // trained and saved whole beside the adapters: the new head
  std::string task_type;               // PEFT's: SEQ_CLS, CAUSAL_LM, or "" (images, clips)
  std::string base;                    // what the base was loaded from: a weights file or a folder
  std::string base_file;               // the weights file within it, checksummed ("": base itself)
  bool pretrained = false;             // the model tag's pretrained weights: found again by the tag
  bool fan_in_fan_out = false;         // the adapted layers store their weight (in, out): GPT-2's Conv1D
};

// graft.json's "lora" of a LoRA run: the adapter's files and the base (path, SHA-256, size), and the
// counts.
nlohmann::json lora_run_json(const LoraPlace& place, int64_t adapted_layers, int64_t trainable,
                             int64_t total);
// A LoRA run's base, checked: the path recorded in graft.json's "lora" (the tag's pretrained weights
// found again through `pretrained_file` when the run started from them), whose weights file must have
// the recorded SHA-256. Throws graft::Error naming graft.json, the file and both checksums when it does
// not; returns the base's path (a file or folder, as the run loaded it).
std::string checked_lora_base(const RunDocument& doc, const std::function<std::string()>& pretrained_file);
// The flag that makes a run a LoRA run, for messages: "--lora", "--adapter", or "" (neither given).
std::string adapter_flag(const std::string& lora, const std::string& adapter);
// Whether graft.json describes a LoRA run (adapter files instead of model.safetensors).
bool is_lora_run(const RunDocument& doc);

// What a freeze spec applies to: a backbone (which knows its stages and the tensors that never train), or
// any module with the one part no spec freezes.
struct FreezeStep {
  BackboneImpl* backbone = nullptr;
  torch::nn::Module* module = nullptr;
  std::string keep;   // module: the part no spec freezes ("" none)
  std::string spec;   // as apply_freeze reads it; "": nothing is frozen
  std::string named;  // as the user named it, for the log
  std::string saved;  // graft.json's "freeze": what the saved model has frozen
};

// The run directory's files of a task: graft.json's task fields (beside new_run_document's), the weights
// and their metadata; the task writes any other file (config.json, tokenizer) before returning them.
struct RunFiles {
  nlohmann::json fields = nlohmann::json::object();
  NamedTensors weights;
  std::map<std::string, std::string> metadata;  // beside format and producer
  std::string listing;                          // what the folder holds, for the last line of the log
  std::string note;                             // said before it ("skipped 2 unreadable file(s)"); "" none
};

// What a task supplies to train_run, which calls these in the order listed. The task keeps its options
// and what it built (data, model) as members; its results beyond FitOutcome are its own.
class TrainRecipe {
 public:
  virtual ~TrainRecipe() = default;
  virtual RunBasics basics() const = 0;
  // The options as --config keys (to_json): checked first, printed once resolved, saved in graft.json.
  virtual nlohmann::json options() const = 0;
  // Completes the options from what they name (an --init-from run's model and head, text lengths) and
  // refuses what does not apply; reads no data.
  virtual void resolve(std::ostream& log) = 0;
  // Reads the data (and what decides how it is read); its class names, empty for a language model.
  virtual std::vector<std::string> open_data(std::ostream& log) = 0;
  // Builds the model with its new head, and loads the start's weights into it. Says what it loaded.
  virtual void build_model(const StartChoice& start, std::ostream& log) = 0;
  virtual FreezeStep freeze_step() = 0;
  // The optimiser's parameter groups; empty: one group of whatever trains.
  virtual std::vector<ParamGroup> param_groups() { return {}; }
  // What --lora adapts, once the model is built; the default takes no adapter (refused by name).
  virtual LoraPlace lora_place() { return {}; }
  // What trains on which batches (a feature cache is made here); may add the task's epoch callback or
  // its schedule's warmup to config.
  virtual FitPlan plan(TrainConfig& config, std::ostream& log) = 0;
  // The run directory's files, once fit_and_check has left the saved model on the CPU.
  virtual RunFiles run_files(const FitOutcome& outcome, std::ostream& log) = 0;
};

// One `graft train`, for any task: options checked (before anything is read), resolved and printed; seed;
// data; the model from its start (start_choice); freeze; optimiser groups; fit, the best epoch restored and
// the saved model evaluated on the validation split (fit_and_check); the run directory (graft.json written
// last, naming complete files).
FitOutcome train_run(TrainRecipe& recipe, std::ostream& log);

// The run's TrainConfig: the options' training settings with the run directory, classes and log.
TrainConfig run_train_config(const TrainConfig& options, const std::string& out,
                             const std::vector<std::string>& classes, const std::string& sample_unit,
                             std::ostream& log);

// Prints the resolved configuration, once every option is checked.
void log_resolved(const nlohmann::json& resolved, std::ostream& log);

// Fits, puts the best epoch back (and says which), evaluates the saved model on the validation split only,
// and writes val_report.txt and confusion_matrix.svg from those metrics. The model is left on the CPU in
// eval mode, ready to save.
FitOutcome fit_and_check(const FitPlan& plan, const TrainConfig& config, std::ostream& log);

// A task's train function: its recipe through train_run, whose outcome completes the recipe's result
// (Recipe::result, a struct with history and val_metrics beside the task's own figures).
template <class Recipe, class Options>
auto train_with(const Options& options, std::ostream& log) {
  Recipe recipe(options);
  FitOutcome outcome = train_run(recipe, log);
  auto result = std::move(recipe.result);
  result.history = std::move(outcome.history);
  result.val_metrics = std::move(outcome.val_metrics);
  return result;
}

// The loaders' options of a run: training batches shuffled from the seed, evaluation in order.
struct RunLoaders {
  LoaderOptions train, eval;
};
RunLoaders run_loaders(int64_t batch_size, int workers, uint64_t seed);
// A finished run's loader (evaluate, features): in order; throws graft::Error naming --batch-size unless
// it is positive.
LoaderOptions use_loader_options(int64_t batch_size);

// fn over every batch of the loader (inputs on `device`), in eval mode without autograd and with each conv
// + BatchNorm folded: the outputs concatenated on the CPU with the batches' labels and ids, a progress
// bar on log counting `unit`s. What the feature caches and every run's features are made of. Throws
// graft::Error when no sample could be read.
FeatureSet map_batches(DataLoader& loader, const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                       torch::Device device, std::ostream& log, const std::string& label,
                       const std::string& unit);

// The train function of a task's entry (graft/task.h): its options from the resolved values, --out checked
// against what the run reads (inputs(options)) and starts from (sources(options)), then its recipe.
template <class Options, class Result, class Inputs, class Sources>
TaskEntry::Train train_from_values(Options defaults, Result (*train)(const Options&, std::ostream&),
                                   Inputs inputs, Sources sources) {
  return [=](const nlohmann::json& values, bool overwrite, std::ostream& log) {
    Options options = defaults;
    apply_train_values(options, values);
    check_out_folder(options.out, inputs(options), sources(options), options.train.resume, overwrite);
    return train(options, log).val_metrics;
  };
}

// A Run over a task's loaded run and the task's functions on it, for the tasks whose uses are free
// functions (video, text). --limit is refused: it picks images.
template <class Loaded>
class LoadedRunUse : public Run {
 public:
  struct Uses {
    Metrics (*evaluate)(Loaded&, const std::string&, int64_t, torch::Device, std::ostream&);
    std::vector<Prediction> (*predict)(Loaded&, const std::vector<std::string>&, int64_t, torch::Device);
    FeatureSet (*features)(Loaded&, const std::string&, int64_t, torch::Device, std::ostream&);
  };
  LoadedRunUse(Loaded run, const std::string& task, const std::vector<std::string>& classes, std::string unit,
               bool reads_text, Uses uses)
      : Run(run.dir, task, classes),
        run_(std::move(run)),
        unit_(std::move(unit)),
        reads_text_(reads_text),
        uses_(uses) {}
  std::string unit() const override { return unit_; }
  bool reads_text() const override { return reads_text_; }
  Metrics evaluate(const std::string& data, const UseOptions& options, std::ostream& log) override {
    refuse_limit(options);
    return uses_.evaluate(run_, data, options.batch_size, options.device, log);
  }
  std::vector<Prediction> predict(const std::vector<std::string>& inputs, int64_t top_k,
                                  torch::Device device) override {
    return uses_.predict(run_, inputs, top_k, device);
  }
  FeatureSet features(const std::string& data, const UseOptions& options, std::ostream& log) override {
    refuse_limit(options);
    return uses_.features(run_, data, options.batch_size, options.device, log);
  }
  torch::nn::Module& model() override { return *run_.module; }

 private:
  Loaded run_;
  std::string unit_;
  bool reads_text_;
  Uses uses_;
};

// The k most probable labels of one sample's probabilities (C), best first: what predict prints.
std::vector<std::pair<std::string, double>> top_labels(const torch::Tensor& probs, int64_t k,
                                                       const std::vector<std::string>& classes);

// An input's error message that names the input: `message` as it is when it does, else "input: message".
std::string naming(const std::string& input, const std::string& message);

// What the data scan left out and why: the first ten as warnings, then how many more.
void log_skipped(const std::vector<std::string>& skipped, std::ostream& log);

// The last lines of a run: what was skipped and where the run directory is, with what it holds.
void log_run_directory(const std::string& out, const std::string& files, bool validated, bool classify,
                       std::ostream& log);

}  // namespace graft
