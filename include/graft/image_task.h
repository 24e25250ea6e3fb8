// Image classification by transfer learning, end to end: data -> pretrained backbone + new head ->
// strategy (feature extraction, fine-tuning, two-stage) -> trainer -> run directory; and the uses of a
// run directory (evaluate, predict, features). The CLI's train/eval/predict/features call these.
#pragma once
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "graft/data.h"
#include "graft/model.h"
#include "graft/run.h"
#include "graft/task.h"
#include "graft/trainer.h"

namespace graft {

struct ImageTrainOptions {
  std::string model;    // ARCH[.TAG]
  std::string weights;  // safetensors with reference names; empty: the tag's pretrained weights
  // ARCH.TAG without --weights loads the tag's weights or stops saying how to get them; this starts from
  // random weights instead (the tag's preprocessing is kept). A bare ARCH is random without it.
  bool random_init = false;
  bool verbose = false;  // a weights file that does not fit: list every tensor name, not the first few
  // An earlier image run directory to start from: its model, head and weights (the last classifier layer
  // new when the class count differs). model and head default to the run's.
  std::string init_from;
  std::string data;  // image folder (class subfolders, or train/ + val/), or a folder of IDX files
  std::string out;   // run directory
  std::string head;  // head spec; empty: "avg,dense:C". A head without a final dense gets dense:C.
  std::string strategy = "fine-tune";  // feature-extract | fine-tune | two-stage
  std::string freeze;                  // fine-tune / two-stage stage 2; empty: none
  std::string lora;                    // LoRA spec (graft/lora.h LoraConfig::parse); empty: none
  std::string adapter;                 // a LoRA adapter folder to train further; empty: none
  int64_t stage1_epochs = 0;           // two-stage: epochs of head-only training (0: half the epochs)
  double backbone_lr_mult = 0.1;       // fine-tune: backbone rate = lr * this
  bool bn_train_frozen = false;
  double val_split = 0.2;  // used when data has no train/ + val/ folders
  bool validate = true;    // false: no validation pass (benchmarks, or no held-out data wanted)
  int64_t batch_size = 32;
  int64_t image_size = 0;  // 0: the model's pretrained input size
  bool augment = true;  // random resized crop + flip on training images (never for feature-extract's cache)
  double rotation = 0.0;
  double jitter = 0.0;
  int workers = 0;    // decoding threads; 0: cores
  size_t limit = 0;   // keep this many training images (and limit/4 validation), a seeded subset
  TrainConfig train;  // epochs, optimiser, schedule, loss, early stopping, seed, device, resume
};

struct ImageTrainResult {
  TrainHistory history;
  std::optional<Metrics> val_metrics;  // final model on the validation data
  double feature_cache_seconds = 0.0;  // feature-extract: time to compute the cached features
  size_t skipped_files = 0;
};

// Runs the whole recipe and writes the run directory. Prints the resolved configuration first.
ImageTrainResult train_image_classifier(const ImageTrainOptions& options, std::ostream& log);

// The resolved configuration (to_json) and options from JSON: graft/train_options.h.

// Pooled features (global pooling of forward_features, or the custom head's pooling) of every sample the
// loader serves, in eval mode without autograd: what feature extraction caches and `graft features` writes.
FeatureSet extract_features(BackboneImpl& model, DataLoader& loader, torch::Device device, std::ostream& log,
                            const std::string& label = "features");

// A DataLoader as the Trainer's batch source.
class LoaderBatchSource : public BatchSource {
 public:
  explicit LoaderBatchSource(DataLoader& loader) : loader_(loader) {}
  size_t num_batches() override { return loader_.num_batches(); }
  void start_epoch(int64_t epoch) override { loader_.start_epoch(epoch); }
  std::optional<std::pair<torch::Tensor, torch::Tensor>> next() override;

 private:
  DataLoader& loader_;
};

// Datasets from a data argument: an image folder or an IDX folder. val may be null (no validation).
struct ImageData {
  std::shared_ptr<Dataset> train, val;
  std::vector<std::string> classes;
  std::vector<std::string> skipped;  // what the folder scan left out and why (ImageList::skipped)
};
ImageData open_image_data(const std::string& data, const TransformConfig& train_transform,
                          const TransformConfig& eval_transform, double val_split, uint64_t seed,
                          size_t limit);
// What `graft features` reads of a data argument, each part with its name: train/ and the held-out folder
// (val/, validation/ or test/) of a root that has both, the train and test files of IDX data, else the
// whole folder (name ""). `classes` empty: the data's own; `limit` > 0: at most that many per part.
struct FeaturePart {
  std::string name;
  std::shared_ptr<Dataset> data;
};
std::vector<FeaturePart> open_feature_parts(const std::string& data, const std::vector<std::string>& classes,
                                            const TransformConfig& transform, size_t limit);
// The model's pooled features of every part in order, with a split name per sample when the parts have
// names.
FeatureSet part_features(BackboneImpl& model, const std::vector<FeaturePart>& parts, int64_t batch_size,
                         torch::Device device, std::ostream& log);
// Every image of a data folder for evaluation (the held-out folder of a root with train/ beside it), with
// the run's class names imposed; `limit` > 0: a seeded subset of that many.
std::shared_ptr<Dataset> open_eval_data(const std::string& data, const std::vector<std::string>& classes,
                                        const TransformConfig& transform, size_t limit);

// Pooled features of a model (not a run: ARCH[.TAG] as the CLI built it, with its weights and any adapter)
// on an image folder or IDX files, preprocessed as the model's default configuration says.
FeatureSet model_features(BackboneImpl& model, const std::string& data, const UseOptions& options,
                          std::ostream& log);

}  // namespace graft
