// Video classification end to end. See graft/video_task.h.
#include "graft/video_task.h"

#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "graft/errors.h"
#include "graft/lora.h"
#include "graft/progress.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/strings.h"
#include "graft/train_options.h"
#include "graft/transfer.h"
#include "graft/transformers.h"
#include "graft/video_model.h"
#include "graft/weights.h"
#include "layers/conv_bn.h"
#include "transfer/driver.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Forward = std::function<torch::Tensor(const torch::Tensor&)>;

struct BuiltModel {
  std::shared_ptr<torch::nn::Module> module;
  Forward forward;
  Forward embed;  // (N, T, 3, H, W) clips -> (N, D): what the classifier reads
  std::shared_ptr<TimeDistributedClassifierImpl> time_distributed;  // null for a 3D CNN
  Backbone backbone;                                                // the image backbone or the 3D CNN
};

// An image backbone inside TimeDistributed + temporal model, or a 3D CNN fed (N, 3, T, H, W). Weights
// the backbone already holds (pretrained, or an image run's) stay; its image classifier is dropped.
BuiltModel wrap_backbone(Backbone backbone, const std::string& temporal, int64_t classes) {
  BuiltModel built;
  built.backbone = std::move(backbone);
  if (is_video_backbone(*built.backbone)) {
    built.backbone->reset_classifier(classes);
    built.module = built.backbone;
    Backbone net = built.backbone;
    built.forward = [net](const torch::Tensor& clips) {
      return net->forward(clips.permute({0, 2, 1, 3, 4}));
    };
    built.embed = [net](const torch::Tensor& clips) {
      return net->forward_head(net->forward_features(clips.permute({0, 2, 1, 3, 4})), /*pre_logits=*/true);
    };
  } else {
    built.time_distributed = std::make_shared<TimeDistributedClassifierImpl>(
        built.backbone, TemporalSpec::parse(temporal), classes);
    built.module = built.time_distributed;
    auto net = built.time_distributed;
    built.forward = [net](const torch::Tensor& clips) { return net->forward(clips); };
    built.embed = [net](const torch::Tensor& clips) { return net->summarize(net->frame_features(clips)); };
  }
  return built;
}

// An image run's model as the backbone's start: everything but its classifier (its head or its last
// layer), loaded while the backbone still has its own image classifier (which is then dropped).
void load_image_run_backbone(BackboneImpl& backbone, const LoadedRun& image_run, const std::string& dir,
                             std::ostream& log) {
  const std::string head = image_run.model->classifier_name();
  NamedTensors body;
  for (auto& [name, tensor] : state_dict(*image_run.model))
    if (!is_dotted_prefix(name, head)) body.emplace_back(name, tensor);
  LoadOptions load;
  load.source_name = (fs::path(dir) / "model.safetensors").string();
  load.skip_prefixes.push_back(backbone.classifier_name());
  const LoadReport report = load_state_dict(backbone, body, load);
  log << "init from image run " << dir << ": " << report.loaded.size() << " backbone tensors ("
      << image_run.spec.model << "; its classifier '" << head << "' dropped)\n";
}

// The freeze spec with the parts named as the recipe does: backbone, temporal.
std::string part_globs(const std::string& spec, bool time_distributed) {
  if (!time_distributed) return spec == "backbone" ? "all" : spec;
  std::string out, term;
  std::stringstream stream(spec);
  while (std::getline(stream, term, ',')) {
    if (term == "backbone" || term == "temporal") term += ".*";
    if (term == "all") term = "backbone.*,temporal.*";
    out += (out.empty() ? "" : ",") + term;
  }
  return out;
}

struct ClipSplits {
  ClipList train, val;
};

ClipSplits split_clips(const std::string& root, double val_split, uint64_t seed) {
  ClipSplits s;
  if (fs::is_directory(fs::path(root) / "train") && fs::is_directory(fs::path(root) / "val")) {
    s.train = scan_clip_folder((fs::path(root) / "train").string());
    s.val = scan_clip_folder((fs::path(root) / "val").string());
    if (s.val.classes != s.train.classes)
      throw Error(root + ": train/ and val/ have different class folders");
    return s;
  }
  const ClipList all = scan_clip_folder(root);
  s.train.classes = s.val.classes = all.classes;
  const SplitIndices parts = stratified_split(all.clips, all.classes.size(), val_split, seed);
  for (size_t i : parts.train) s.train.clips.push_back(all.clips[i]);
  for (size_t i : parts.val) s.val.clips.push_back(all.clips[i]);
  return s;
}

// (N, T, D) frame features of every clip the loader serves, without autograd.
std::pair<torch::Tensor, torch::Tensor> cache_frame_features(TimeDistributedClassifierImpl& model,
                                                             DataLoader& loader, torch::Device device,
                                                             std::ostream& log, const std::string& label) {
  model.eval();
  model.to(device);
  FeatureSet set = map_batches(
      loader, [&](const torch::Tensor& clips) { return model.frame_features(clips); }, device, log, label,
      "clip");
  return {set.features, set.labels};
}

json clip_preprocessing_json(const Preprocessing& pre, int64_t frames) {
  json doc = preprocessing_json(pre);
  doc["frames"] = frames;
  return doc;
}

// Where a video run starts from (--init-from): a video run (its whole model, read once the model is built)
// or an image run (its backbone and preprocessing). Fills the options' model and temporal defaults.
struct VideoStart {
  std::optional<RunDocument> video;
  std::optional<VideoRunSpec> video_spec;
  std::optional<LoadedRun> image;
};
VideoStart open_video_init(VideoTrainOptions& o, const VideoTrainOptions& input) {
  VideoStart start;
  if (o.init_from.empty()) return start;
  if (is_video_run(o.init_from)) {
    start.video = read_run_document((fs::path(o.init_from) / "graft.json").string());
    start.video_spec = read_video_run_spec(*start.video);
    if (o.model.empty()) o.model = start.video_spec->model;
    if (input.temporal == VideoTrainOptions().temporal && !start.video_spec->temporal.empty())
      o.temporal = start.video_spec->temporal;
    return start;
  }
  start.image = load_run(o.init_from);  // an image run, or an error naming what the folder is not
  if (o.model.empty()) o.model = start.image->spec.model;
  if (ModelName::parse(o.model).arch != ModelName::parse(start.image->spec.model).arch)
    throw Error("--init-from " + o.init_from + " holds a " + start.image->spec.model + ", not a " + o.model);
  return start;
}

// An earlier video run's whole model; a new classifier when its classes differ.
void load_video_run_weights(BuiltModel& built, const RunDocument& run,
                            const std::vector<std::string>& classes, std::ostream& log) {
  const std::string dir = fs::path(run.file).parent_path().string();
  LoadOptions load;
  load.source_name = (fs::path(dir) / "model.safetensors").string();
  check_run_weights(run.file, run.weights_save_id, load.source_name);
  const bool new_head = run.classes != classes;
  if (new_head)
    load.skip_prefixes.push_back(built.time_distributed ? "fc" : built.backbone->classifier_name());
  const LoadReport report = load_safetensors(*built.module, load.source_name, load);
  log << "init from video run " << dir << ": " << report.loaded.size() << " tensors"
      << (new_head ? "; a new classifier for " + std::to_string(classes.size()) + " classes" : "") << "\n";
}

// The per-frame features of the training (and validation) clips, once, as batch sources for the temporal
// model; and the seconds it took.
std::tuple<std::unique_ptr<TensorBatchSource>, std::unique_ptr<TensorBatchSource>, double>
cache_clip_features(TimeDistributedClassifierImpl& net, DataLoader& train_once, DataLoader* val_once,
                    int64_t batch_size, torch::Device device, std::ostream& log) {
  const auto start = std::chrono::steady_clock::now();
  auto [train_x, train_y] = cache_frame_features(net, train_once, device, log, "features (train)");
  std::unique_ptr<TensorBatchSource> val;
  if (val_once) {
    auto [val_x, val_y] = cache_frame_features(net, *val_once, device, log, "features (val)");
    val = std::make_unique<TensorBatchSource>(val_x, val_y, batch_size, false);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log << "feature cache: " << train_x.size(0) << " clips x " << train_x.size(1) << " frames x "
      << train_x.size(2) << " computed in " << format_duration(seconds) << " (" << seconds
      << " s); epochs train the temporal model and the classifier only\n";
  return {std::make_unique<TensorBatchSource>(train_x, train_y, batch_size, true), std::move(val), seconds};
}

// The parts of a per-frame model that learn when its backbone is frozen: the trainer sees these, and the
// backbone stays on the side.
std::shared_ptr<torch::nn::Module> temporal_part(TimeDistributedClassifierImpl& net) {
  auto head = std::make_shared<torch::nn::Module>();
  if (net.lstm) head->register_module("temporal", net.lstm);
  if (net.gru) head->register_module("temporal", net.gru);
  head->register_module("fc", net.fc);
  return head;
}

// Video classification's own steps, which train_run (transfer/driver.h) calls in order: clips split by
// class, an image backbone wrapped per frame (or a 3D CNN) with its start's weights, freezing by part, and
// per-frame features cached when the backbone is wholly frozen.
class VideoRecipe : public TrainRecipe {
 public:
  explicit VideoRecipe(const VideoTrainOptions& options) : input_(options), o_(options) {}

  RunBasics basics() const override {
    RunBasics b = basics_of(o_, "video-classify", "clip", "classify");
    b.random_init = o_.random_init;
    return b;
  }
  json options() const override { return to_json(o_); }

  void resolve(std::ostream&) override {
    const std::string lora = adapter_flag(o_.lora, o_.adapter);
    if (!lora.empty() && input_.freeze != VideoTrainOptions().freeze)
      throw SpecError("--freeze " + input_.freeze + " does not apply to " + lora +
                      ", which freezes everything but the adapters, the temporal model and the classifier");
    start_ = open_video_init(o_, input_);  // a video run (loaded whole in build_model), or an image run
    if (o_.model.empty())
      throw Error("--model is required (an image backbone such as mobilenet_v2, or r3d_18)");
  }

  std::vector<std::string> open_data(std::ostream&) override {
    splits_ = split_clips(o_.data, o_.validate ? o_.val_split : 0.0, o_.train.seed);
    if (splits_.train.classes.size() < 2)
      throw Error(o_.data + ": one class folder; classification needs two or more");
    return splits_.train.classes;
  }

  void build_model(const StartChoice& start, std::ostream& log) override {
    Backbone backbone = create_model(o_.model);
    if (start_.image)
      load_image_run_backbone(*backbone, *start_.image, o_.init_from, log);
    else if (!start_.video)
      base_ = load_start_weights(*backbone, start, o_.verbose, log);
    base_pretrained_ = start.kind == StartChoice::Kind::kPretrained;
    // An earlier run's preprocessing goes with its weights (size, mean/std, interpolation), as for images.
    pre_ = start_.video   ? start_.video_spec->preprocessing
           : start_.image ? start_.image->spec.preprocessing
                          : Preprocessing::from_cfg(backbone->default_cfg());
    if (o_.image_size > 0) pre_.size = o_.image_size;
    built_ = wrap_backbone(backbone, o_.temporal, static_cast<int64_t>(splits_.train.classes.size()));
    if (start_.video) load_video_run_weights(built_, *start_.video, splits_.train.classes, log);
  }

  // By part: "backbone" and "temporal" name the per-frame model's two; the classifier always trains.
  FreezeStep freeze_step() override {
    FreezeStep step;
    const bool td = built_.time_distributed != nullptr;
    if (td) {
      step.module = built_.module.get();
      step.keep = "fc";
    } else {
      step.backbone = built_.backbone.get();
    }
    step.named = step.saved = o_.freeze.empty() ? "none" : o_.freeze;
    step.spec = part_globs(step.named, td);
    return step;
  }

  // The backbone's layers take the adapter; what is new (the temporal model, the classifier) trains whole.
  LoraPlace lora_place() override {
    LoraPlace place;
    place.model = built_.module.get();
    const auto& td = built_.time_distributed;
    if (td && (td->lstm || td->gru)) place.whole.push_back("temporal");
    place.whole.push_back(td ? "fc" : built_.backbone->classifier_name());
    place.base = base_;
    place.pretrained = base_pretrained_;
    return place;
  }

  FitPlan plan(TrainConfig& config, std::ostream& log) override {
    // A wholly frozen per-frame backbone: its features are cached, and augmentation (which would need the
    // backbone every epoch) is refused by name.
    bool backbone_frozen = built_.time_distributed != nullptr && o_.cache_features;
    if (backbone_frozen)
      for (const auto& p : built_.backbone->parameters())
        backbone_frozen = backbone_frozen && !p.requires_grad();
    if (backbone_frozen && (o_.rotation > 0 || o_.jitter > 0))
      throw Error(
          std::string(o_.rotation > 0 ? "--rotation" : "--jitter") +
          " augments training clips, but the frozen backbone's features are computed once and cached; "
          "add --no-feature-cache to augment every epoch, or leave it out");
    ClipConfig eval_clip, train_clip;
    eval_clip.frames = train_clip.frames = o_.frames;
    eval_clip.transform = transform_for(pre_, false);
    train_clip.transform = transform_for(pre_, o_.augment);
    train_clip.transform.rotation_degrees = o_.rotation;
    train_clip.transform.jitter = o_.jitter;
    log << "data: " << splits_.train.clips.size() << " training, " << splits_.val.clips.size()
        << " validation clips, " << splits_.train.classes.size() << " classes, " << o_.frames << " frames of "
        << pre_.size << " px (" << pre_.interpolation << ")\n";

    const auto [loader_options, eval_options] = run_loaders(o_.batch_size, o_.workers, o_.train.seed);
    std::shared_ptr<ClipFolder> val_set;
    if (!splits_.val.clips.empty()) val_set = std::make_shared<ClipFolder>(splits_.val, eval_clip);
    // The model as predict runs it (whole clips through the backbone), on the validation clips.
    if (val_set) val_loader_ = std::make_unique<DataLoader>(val_set, eval_options);
    if (val_loader_) val_clips_ = std::make_unique<LoaderBatchSource>(*val_loader_);
    FitPlan plan;
    plan.model = built_.module;
    plan.model_forward = built_.forward;
    plan.model_val = val_clips_.get();
    if (backbone_frozen) {
      // Feature extraction: the frozen backbone's per-frame features once, then epochs over the cache.
      result.cached_features = true;
      DataLoader train_once(std::make_shared<ClipFolder>(splits_.train, eval_clip), eval_options);
      std::unique_ptr<DataLoader> val_once;
      if (val_set) val_once = std::make_unique<DataLoader>(val_set, eval_options);
      Autocast autocast(config.precision, config.device);
      std::tie(train_features_, val_features_, result.feature_cache_seconds) = cache_clip_features(
          *built_.time_distributed, train_once, val_once.get(), o_.batch_size, config.device, log);
      result.skipped_clips = train_once.skipped_files() + (val_once ? val_once->skipped_files() : 0);
      auto net = built_.time_distributed;
      plan.trained = temporal_part(*net);
      plan.trained_forward = [net](const torch::Tensor& x) { return net->forward_sequence(x); };
      plan.train = train_features_.get();
      plan.val = val_features_.get();
    } else {
      train_loader_ = std::make_unique<DataLoader>(std::make_shared<ClipFolder>(splits_.train, train_clip),
                                                   loader_options);
      train_clips_ = std::make_unique<LoaderBatchSource>(*train_loader_);
      plan.trained = built_.module;
      plan.trained_forward = built_.forward;
      plan.train = train_clips_.get();
      plan.val = val_clips_.get();
    }
    return plan;
  }

  RunFiles run_files(const FitOutcome&, std::ostream&) override {
    if (train_loader_)
      result.skipped_clips =
          train_loader_->skipped_files() + (val_loader_ ? val_loader_->skipped_files() : 0);
    RunFiles files;
    files.fields["model"] = o_.model;
    files.fields["temporal"] =
        built_.time_distributed ? built_.time_distributed->temporal_spec().to_string() : "";
    files.fields["preprocessing"] = clip_preprocessing_json(pre_, o_.frames);
    files.weights = state_dict(*built_.module);
    files.listing = "model.safetensors, graft.json";
    if (result.skipped_clips)
      files.note = "skipped " + std::to_string(result.skipped_clips) + " unreadable or too short clip(s)";
    return files;
  }

  VideoTrainResult result;  // history and metrics: train_run's outcome

 private:
  const VideoTrainOptions input_;  // as given: tells a default from a choice (open_video_init)
  VideoTrainOptions o_;
  VideoStart start_;
  std::string base_;  // the weights file the backbone started from ("" random or a run)
  bool base_pretrained_ = false;
  ClipSplits splits_;
  Preprocessing pre_;
  BuiltModel built_;
  std::unique_ptr<DataLoader> train_loader_, val_loader_;
  std::unique_ptr<LoaderBatchSource> train_clips_, val_clips_;
  std::unique_ptr<TensorBatchSource> train_features_, val_features_;
};

}  // namespace

VideoTrainResult train_video_classifier(const VideoTrainOptions& options, std::ostream& log) {
  return train_with<VideoRecipe>(options, log);
}

bool is_video_run(const std::string& dir) {
  return run_task(dir) == "video-classify";
}

VideoRun load_video_run(const std::string& dir) {
  const RunDocument doc = read_run_document((fs::path(dir) / "graft.json").string());
  if (doc.task != "video-classify")
    throw FormatError(doc.file, "task '" + doc.task + "' is not a video task", "expected video-classify");
  const VideoRunSpec spec = read_video_run_spec(doc);
  VideoRun run;
  run.dir = dir;
  run.model = spec.model;
  run.temporal = spec.temporal;
  run.classes = doc.classes;
  run.clip.frames = spec.frames;
  run.clip.transform = transform_for(spec.preprocessing, false);
  Backbone backbone = create_model(run.model);
  const bool lora = is_lora_run(doc);
  if (lora) {  // the base as training loaded it, before the classifier is replaced; the adapter after
    WeightsOptions skip_head;
    skip_head.skip_classifier = true;
    load_weights(*backbone, checked_lora_base(doc, [&] { return pretrained_weights_file(*backbone); }),
                 skip_head);
  }
  BuiltModel built = wrap_backbone(backbone, run.temporal.empty() ? "avg" : run.temporal,
                                   static_cast<int64_t>(run.classes.size()));
  LoadOptions load;
  load.source_name = (fs::path(dir) / (lora ? "adapter_model.safetensors" : "model.safetensors")).string();
  check_run_weights(doc.file, doc.weights_save_id, load.source_name);
  if (lora)
    load_lora_adapter(*built.module, dir);
  else
    load_safetensors(*built.module, load.source_name, load);
  built.module->eval();
  run.module = built.module;
  run.forward = built.forward;
  run.embed = built.embed;
  return run;
}

namespace {

// The labelled clips of `data` (DATA/val when DATA has train/ + val/) under the run's class names.
ClipList eval_clips(const VideoRun& run, const std::string& data) {
  ClipList list;
  if (fs::is_directory(fs::path(data) / "val")) {
    list = scan_clip_folder((fs::path(data) / "val").string());
  } else if (fs::is_directory(fs::path(data) / "train")) {
    throw Error(data + ": has train/ but no val/; evaluate on a folder of held-out clips");
  } else {
    list = scan_clip_folder(data);
  }
  for (auto& clip : list.clips) {
    const std::string& name = list.classes[static_cast<size_t>(clip.label)];
    auto it = std::find(run.classes.begin(), run.classes.end(), name);
    if (it == run.classes.end())
      throw Error(data + ": class folder '" + name + "' is not one of the run's classes");
    clip.label = it - run.classes.begin();
  }
  list.classes = run.classes;
  return list;
}

DataLoader eval_loader(const VideoRun& run, const std::string& data, int64_t batch_size) {
  return DataLoader(std::make_shared<ClipFolder>(eval_clips(run, data), run.clip),
                    use_loader_options(batch_size));
}

}  // namespace

Metrics evaluate_video(VideoRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                       std::ostream& log) {
  DataLoader loader = eval_loader(run, data, batch_size);
  LoaderBatchSource source(loader);
  TrainConfig config;
  config.device = device;
  config.log = &log;
  config.sample_unit = "clip";
  Trainer evaluator(run.module, run.forward, config);
  Metrics metrics = evaluator.evaluate(source, "eval");
  run.module->to(torch::kCPU);
  return metrics;
}

FeatureSet clip_features(VideoRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                         std::ostream& log) {
  DataLoader loader = eval_loader(run, data, batch_size);
  if (fs::is_directory(fs::path(data) / "val"))
    log << "features: the held-out clips of " << (fs::path(data) / "val").string() << " (give "
        << (fs::path(data) / "train").string() << " for the training clips)\n";
  run.module->eval();
  run.module->to(device);
  FeatureSet set = map_batches(loader, run.embed, device, log, "features", "clip");
  run.module->to(torch::kCPU);
  return set;
}

std::vector<Prediction> predict_clips(VideoRun& run, const std::vector<std::string>& paths, int64_t top_k,
                                      torch::Device device) {
  c10::InferenceMode inference;
  BatchNormFolding folding;
  run.module->to(device);
  run.module->eval();
  std::vector<Prediction> out;
  const int64_t k = std::clamp<int64_t>(top_k, 1, static_cast<int64_t>(run.classes.size()));
  std::mt19937_64 rng(0);
  for (const auto& path : paths) {
    torch::Tensor clip;
    try {
      clip = transform_clip(load_clip(path, decode_min_side(run.clip.transform)), run.clip, rng);
    } catch (const Error& e) {
      // "the clip has 3 frames, fewer than the 8 ..." with its file; the other clips are still classified.
      out.push_back({path, {}, naming(path, e.what())});
      continue;
    }
    const torch::Tensor probs =
        torch::softmax(run.forward(clip.unsqueeze(0).to(device)), -1, torch::kFloat)[0].cpu();
    out.push_back({path, top_labels(probs, k, run.classes), ""});
  }
  run.module->to(torch::kCPU);
  return out;
}

TaskEntry video_task_entry() {
  using Files = std::vector<std::string>;
  TaskEntry entry;
  entry.name = "video-classify";
  entry.train = train_from_values(
      VideoTrainOptions{}, train_video_classifier, [](const VideoTrainOptions& o) { return Files{o.data}; },
      [](const VideoTrainOptions& o) {
        return Files{o.weights, o.init_from, o.adapter};
      });
  entry.open = [](const std::string& dir) -> std::unique_ptr<Run> {
    VideoRun run = load_video_run(dir);
    const std::vector<std::string> classes = run.classes;
    return std::make_unique<LoadedRunUse<VideoRun>>(
        std::move(run), "video-classify", classes, "clips", false,
        LoadedRunUse<VideoRun>::Uses{evaluate_video, predict_clips, clip_features});
  };
  return entry;
}

}  // namespace graft
