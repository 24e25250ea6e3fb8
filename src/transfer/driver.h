// The training steps every task shares, in one place: the image, text and video recipes supply what is
// their own (data, model, preprocessing, extra files) and hand the rest to these.
#pragma once
#include <iosfwd>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "graft/data.h"
#include "graft/run.h"
#include "graft/task.h"
#include "graft/train_options.h"
#include "graft/trainer.h"

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

// Where a run starts is one choice: --weights, --init-from or --random-init (none: the model name's own
// weights). Throws graft::Error naming the two given together; called before anything is read.
void check_start_choice(const std::string& weights, const std::string& init_from, bool random_init);

// The weights a backbone starts from, loaded before its classifier is replaced (and so without it): the
// file `weights` (reference names); else, for ARCH.TAG, the tag's pretrained weights (load_pretrained:
// graft's cache or the Hugging Face Hub), which stop the run saying how to get them when they are not to
// be had, unless random_init; a bare ARCH starts from random weights. Says which.
// A file that does not fit is refused naming its first tensors of each kind (every one when verbose).
void load_start_weights(BackboneImpl& model, const std::string& model_name, const std::string& weights,
                        bool random_init, bool verbose, std::ostream& log);

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
