// Video classification by transfer learning, end to end: clip data -> an image backbone per frame with a
// temporal model (ConvNet + LSTM), or a 3D CNN -> freezing by part -> trainer -> run directory; and the
// uses of a run directory (evaluate, predict). With the backbone frozen, per-frame features are computed
// once without autograd and cached, so epochs train the temporal model and the classifier only.
#pragma once
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "graft/image_task.h"
#include "graft/video.h"

namespace graft {

struct VideoTrainOptions {
  std::string model;         // image backbone ARCH[.TAG] (with `temporal`) or a 3D CNN (r3d_18, ...)
  std::string weights;       // backbone weights (safetensors, reference names); empty: as the tag says
  bool random_init = false;  // a tag's backbone from random weights (see ImageTrainOptions::random_init)
  bool verbose = false;      // see ImageTrainOptions::verbose
  std::string temporal =
      "lstm:256";  // lstm:H | gru:H [:bi] [:layers=N] [:dropout=P] | avg; unused by 3D CNNs
  // An earlier run to start from: a video run (its whole model; a new fc when the classes differ) or an image
  // run (its backbone without its classifier, and its preprocessing).
  std::string init_from;
  std::string data;  // root/<class>/<clip> (video files or frame folders), or root/train + root/val
  std::string out;
  // backbone | backbone,temporal | none | all | any freeze spec over the model's parameter names
  std::string freeze = "backbone";
  std::string lora;     // LoRA spec (graft/lora.h LoraConfig::parse); empty: none
  std::string adapter;  // a LoRA adapter folder to train further; empty: none
  int64_t frames = 8;
  int64_t image_size = 0;  // 0: the backbone's
  double val_split = 0.2;
  bool validate = true;
  bool augment = true;    // random crop + flip per clip when the backbone trains
  double rotation = 0.0;  // training clips: random rotation up to this many degrees (one angle per clip)
  double jitter = 0.0;    // training clips: colour jitter strength
  bool cache_features =
      true;  // frozen image backbone: per-frame features once (false: every epoch, to compare)
  int64_t batch_size = 8;
  int workers = 0;
  TrainConfig train;
};

struct VideoTrainResult {
  TrainHistory history;
  std::optional<Metrics> val_metrics;
  bool cached_features = false;
  double feature_cache_seconds = 0.0;
  size_t skipped_clips = 0;
};

VideoTrainResult train_video_classifier(const VideoTrainOptions& options, std::ostream& log);

struct VideoRun {
  std::string dir, model, temporal;
  std::vector<std::string> classes;
  ClipConfig clip;  // eval transform
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;  // (N, T, 3, H, W) -> logits
  std::function<torch::Tensor(const torch::Tensor&)> embed;    // (N, T, 3, H, W) -> what fc reads (N, D)
};
bool is_video_run(const std::string& dir);
VideoRun load_video_run(const std::string& dir);
Metrics evaluate_video(VideoRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                       std::ostream& log);
// The clips' embeddings (the temporal model's summary, or a 3D CNN's pooled features) with their labels.
FeatureSet clip_features(VideoRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                         std::ostream& log);
std::vector<Prediction> predict_clips(VideoRun& run, const std::vector<std::string>& paths, int64_t top_k,
                                      torch::Device device);

}  // namespace graft
