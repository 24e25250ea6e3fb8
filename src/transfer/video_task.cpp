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
#include "graft/json_file.h"
#include "graft/progress.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/strings.h"
#include "graft/transfer.h"
#include "graft/transformers.h"
#include "graft/video_model.h"
#include "graft/weights.h"
#include "layers/conv_bn.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Forward = std::function<torch::Tensor(const torch::Tensor&)>;

struct BuiltModel {
  std::shared_ptr<torch::nn::Module> module;
  Forward forward;
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
  } else {
    built.time_distributed = std::make_shared<TimeDistributedClassifierImpl>(
        built.backbone, TemporalSpec::parse(temporal), classes);
    built.module = built.time_distributed;
    auto net = built.time_distributed;
    built.forward = [net](const torch::Tensor& clips) { return net->forward(clips); };
  }
  return built;
}

// The backbone's starting weights, loaded while it still has its image classifier (which is then dropped):
// an image run's model, a weights file, or the tag's pretrained file. Says what it loaded.
void load_backbone_weights(BackboneImpl& backbone, const VideoTrainOptions& o,
                           const std::optional<LoadedRun>& image_run, std::ostream& log) {
  WeightsOptions skip_head;
  skip_head.skip_classifier = true;
  if (image_run) {
    // Everything but the image run's classifier (its head or its last layer).
    const std::string head = image_run->model->classifier_name();
    NamedTensors body;
    for (auto& [name, tensor] : state_dict(*image_run->model))
      if (!is_dotted_prefix(name, head)) body.emplace_back(name, tensor);
    LoadOptions load;
    load.source_name = (fs::path(o.init_from) / "model.safetensors").string();
    load.skip_prefixes.push_back(backbone.classifier_name());
    const LoadReport report = load_state_dict(backbone, body, load);
    log << "init from image run " << o.init_from << ": " << report.loaded.size() << " backbone tensors ("
        << image_run->spec.model << "; its classifier '" << head << "' dropped)\n";
  } else if (!o.weights.empty()) {
    const LoadReport report = load_weights(backbone, o.weights, skip_head);
    log << "weights: " << report.loaded.size() << " backbone tensors from " << o.weights
        << " (its image classifier dropped)\n";
  } else if (!ModelName::parse(o.model).tag.empty() && !backbone.default_cfg().cache_file.empty()) {
    const LoadReport report = load_pretrained(backbone, skip_head);
    log << "weights: " << report.loaded.size() << " backbone tensors from "
        << pretrained_file(backbone.default_cfg()) << " (its image classifier dropped)\n";
  } else {
    log << "graft: warning: no --weights: " << o.model << " starts from random initialisation\n";
  }
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
  std::mt19937_64 rng(seed);
  for (size_t c = 0; c < all.classes.size(); ++c) {
    std::vector<LabeledPath> clips;
    for (const auto& clip : all.clips)
      if (clip.label == static_cast<int64_t>(c)) clips.push_back(clip);
    portable_shuffle(clips, rng);
    size_t val = static_cast<size_t>(std::llround(static_cast<double>(clips.size()) * val_split));
    if (val >= clips.size()) val = clips.empty() ? 0 : clips.size() - 1;
    for (size_t i = 0; i < clips.size(); ++i) (i < val ? s.val : s.train).clips.push_back(clips[i]);
  }
  return s;
}

// (N, T, D) frame features of every clip the loader serves, without autograd.
std::pair<torch::Tensor, torch::Tensor> cache_frame_features(TimeDistributedClassifierImpl& model,
                                                             DataLoader& loader, torch::Device device,
                                                             std::ostream& log, const std::string& label) {
  std::optional<c10::InferenceMode> inference(std::in_place);
  BatchNormFolding folding;  // frozen CNN: each conv + BatchNorm runs as one convolution
  model.eval();
  model.to(device);
  std::vector<torch::Tensor> features, labels;
  loader.start_epoch(0);
  ProgressBar bar(label, static_cast<int64_t>(loader.num_batches()), log, "clip");
  int64_t done = 0, clips = 0;
  while (auto batch = loader.next()) {
    features.push_back(model.frame_features(batch->images.to(device)).to(torch::kCPU));
    labels.push_back(batch->labels);
    clips += batch->labels.size(0);
    bar.update(++done, clips, std::nan(""), 0.0);
  }
  bar.finish(label + ": " + std::to_string(clips) + " clips");
  if (features.empty()) throw Error(label + ": no clip could be read");
  inference.reset();  // the features must be ordinary tensors to train on
  return {torch::cat(features).clone(), torch::cat(labels).clone()};
}

json clip_preprocessing_json(const Preprocessing& pre, int64_t frames) {
  json doc = preprocessing_json(pre);
  doc["frames"] = frames;
  return doc;
}

}  // namespace

json to_json(const VideoTrainOptions& o) {
  return {{"task", "video-classify"},
          {"model", o.model},
          {"weights", o.weights},
          {"temporal", o.temporal},
          {"init_from", o.init_from},
          {"data", o.data},
          {"out", o.out},
          {"freeze", o.freeze},
          {"frames", o.frames},
          {"image_size", o.image_size},
          {"val_split", o.val_split},
          {"validate", o.validate},
          {"augment", o.augment},
          {"rotation", o.rotation},
          {"jitter", o.jitter},
          {"cache_features", o.cache_features},
          {"batch_size", o.batch_size},
          {"epochs", o.train.epochs},
          {"optimizer", o.train.optimizer.name},
          {"lr", o.train.optimizer.lr},
          {"schedule", o.train.schedule.name},
          {"step_size", o.train.schedule.step_size},
          {"gamma", o.train.schedule.gamma},
          {"seed", o.train.seed},
          {"device", o.train.device.str()}};
}

VideoTrainResult train_video_classifier(const VideoTrainOptions& input, std::ostream& log) {
  VideoTrainOptions o = input;
  if (o.data.empty() || o.out.empty()) throw Error("--data and --out are required");
  if (o.batch_size <= 0 || o.frames <= 0) throw Error("--batch-size and --frames must be > 0");
  // Where the model starts: a video run (loaded whole below), or an image run (its backbone).
  json video_init;
  std::optional<LoadedRun> image_run;
  if (!o.init_from.empty()) {
    if (!o.weights.empty()) throw Error("give --weights or --init-from, not both");
    if (is_video_run(o.init_from)) {
      video_init = read_json_file((fs::path(o.init_from) / "graft.json").string());
      if (o.model.empty()) o.model = video_init.value("model", "");
      if (input.temporal == VideoTrainOptions().temporal)
        o.temporal = video_init.value("temporal", o.temporal);
    } else {
      image_run = load_run(o.init_from);  // an image run, or an error naming what the folder is not
      if (o.model.empty()) o.model = image_run->spec.model;
      if (ModelName::parse(o.model).arch != ModelName::parse(image_run->spec.model).arch)
        throw Error("--init-from " + o.init_from + " holds a " + image_run->spec.model + ", not a " +
                    o.model);
    }
  }
  if (o.model.empty()) throw Error("--model is required (an image backbone such as mobilenet_v2, or r3d_18)");
  log << "graft train: resolved configuration\n" << to_json(o).dump(2) << "\n";

  torch::manual_seed(o.train.seed);
  ClipSplits splits = split_clips(o.data, o.validate ? o.val_split : 0.0, o.train.seed);
  const int64_t classes = static_cast<int64_t>(splits.train.classes.size());
  if (classes < 2) throw Error(o.data + ": one class folder; classification needs two or more");

  Backbone backbone = create_model(o.model);
  if (video_init.is_null()) load_backbone_weights(*backbone, o, image_run, log);
  // An image run's preprocessing goes with its weights (size, mean/std, interpolation), as for image runs.
  Preprocessing pre =
      image_run ? image_run->spec.preprocessing : Preprocessing::from_cfg(backbone->default_cfg());
  if (o.image_size > 0) pre.size = o.image_size;
  BuiltModel built = wrap_backbone(backbone, o.temporal, classes);
  const bool td = built.time_distributed != nullptr;
  if (!video_init.is_null()) {
    const std::vector<std::string> old_classes = video_init.value("classes", std::vector<std::string>{});
    LoadOptions load;
    load.source_name = (fs::path(o.init_from) / "model.safetensors").string();
    const bool new_head = old_classes != splits.train.classes;
    if (new_head) load.skip_prefixes.push_back(td ? "fc" : built.backbone->classifier_name());
    const LoadReport report = load_safetensors(*built.module, load.source_name, load);
    log << "init from video run " << o.init_from << ": " << report.loaded.size() << " tensors"
        << (new_head ? "; a new classifier for " + std::to_string(classes) + " classes" : "") << "\n";
    if (o.image_size <= 0 && video_init.contains("preprocessing"))
      pre =
          read_preprocessing(video_init.at("preprocessing"), (fs::path(o.init_from) / "graft.json").string());
  }

  const std::string freeze = o.freeze.empty() ? "none" : o.freeze;
  const FreezeReport frozen = td ? apply_freeze(*built.module, part_globs(freeze, true), "fc")
                                 : apply_freeze(*built.backbone, part_globs(freeze, false));
  log << "freeze '" << freeze << "': " << frozen.frozen_parameters << " tensors frozen, "
      << frozen.trainable_parameters << " trainable\n";
  bool backbone_frozen = td && o.cache_features;
  if (td)
    for (const auto& p : built.backbone->parameters())
      backbone_frozen = backbone_frozen && !p.requires_grad();
  if (backbone_frozen && (o.rotation > 0 || o.jitter > 0))
    throw Error(std::string(o.rotation > 0 ? "--rotation" : "--jitter") +
                " augments training clips, but the frozen backbone's features are computed once and cached; "
                "add --no-feature-cache to augment every epoch, or leave it out");

  ClipConfig eval_clip, train_clip;
  eval_clip.frames = train_clip.frames = o.frames;
  eval_clip.transform = transform_for(pre, false);
  train_clip.transform = transform_for(pre, o.augment);
  train_clip.transform.rotation_degrees = o.rotation;
  train_clip.transform.jitter = o.jitter;
  log << "data: " << splits.train.clips.size() << " training, " << splits.val.clips.size()
      << " validation clips, " << classes << " classes, " << o.frames << " frames of " << pre.size << " px ("
      << pre.interpolation << ")\n";

  TrainConfig config = o.train;
  config.out_dir = o.out;
  config.log = &log;
  config.class_names = splits.train.classes;
  config.sample_unit = "clip";
  LoaderOptions loader_options;
  loader_options.batch_size = o.batch_size;
  loader_options.workers = o.workers;
  loader_options.seed = o.train.seed;

  VideoTrainResult result;
  std::shared_ptr<ClipFolder> val_set;
  if (!splits.val.clips.empty()) val_set = std::make_shared<ClipFolder>(splits.val, eval_clip);
  LoaderOptions eval_options = loader_options;
  eval_options.shuffle = false;

  if (backbone_frozen) {
    // Feature extraction: the frozen backbone's per-frame features once, then epochs over the cache.
    result.cached_features = true;
    const auto start = std::chrono::steady_clock::now();
    DataLoader train_once(std::make_shared<ClipFolder>(splits.train, eval_clip), eval_options);
    auto [train_x, train_y] =
        cache_frame_features(*built.time_distributed, train_once, config.device, log, "features (train)");
    std::unique_ptr<TensorBatchSource> val_source;
    if (val_set) {
      DataLoader val_once(val_set, eval_options);
      auto [val_x, val_y] =
          cache_frame_features(*built.time_distributed, val_once, config.device, log, "features (val)");
      val_source = std::make_unique<TensorBatchSource>(val_x, val_y, o.batch_size, false);
      result.skipped_clips += val_once.skipped_files();
    }
    result.skipped_clips += train_once.skipped_files();
    result.feature_cache_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log << "feature cache: " << train_x.size(0) << " clips x " << train_x.size(1) << " frames x "
        << train_x.size(2) << " computed in " << format_duration(result.feature_cache_seconds) << " ("
        << result.feature_cache_seconds << " s); epochs train the temporal model and the classifier only\n";
    TensorBatchSource train_source(train_x, train_y, o.batch_size, true);
    auto net = built.time_distributed;
    // The trainer sees the parts that learn; the backbone stays on the side, frozen.
    auto head = std::make_shared<torch::nn::Module>();
    if (net->lstm) head->register_module("temporal", net->lstm);
    if (net->gru) head->register_module("temporal", net->gru);
    head->register_module("fc", net->fc);
    Trainer trainer(
        head, [net](const torch::Tensor& x) { return net->forward_sequence(x); }, config);
    result.history = trainer.fit(train_source, val_source.get());
    trainer.restore_best();
  } else {
    DataLoader train_loader(std::make_shared<ClipFolder>(splits.train, train_clip), loader_options);
    std::unique_ptr<DataLoader> val_loader;
    if (val_set) val_loader = std::make_unique<DataLoader>(val_set, eval_options);
    LoaderBatchSource train_source(train_loader);
    std::unique_ptr<LoaderBatchSource> val_source;
    if (val_loader) val_source = std::make_unique<LoaderBatchSource>(*val_loader);
    Trainer trainer(built.module, built.forward, config);
    result.history = trainer.fit(train_source, val_source.get());
    trainer.restore_best();
    result.skipped_clips = train_loader.skipped_files() + (val_loader ? val_loader->skipped_files() : 0);
  }
  built.module->to(torch::kCPU);
  built.module->eval();

  // The saved model, checked as predict runs it (whole clips through the backbone), on the validation clips
  // only.
  if (val_set) {
    DataLoader val_loader(val_set, eval_options);
    LoaderBatchSource source(val_loader);
    TrainConfig eval_config;
    eval_config.device = config.device;
    eval_config.progress = config.progress;
    eval_config.log = &log;
    eval_config.sample_unit = "clip";
    Trainer evaluator(built.module, built.forward, eval_config);
    result.val_metrics = evaluator.evaluate(source, "val");
    built.module->to(torch::kCPU);
    write_val_report(o.out, *result.val_metrics, splits.train.classes, log);
  }

  json doc;
  doc["format"] = "graft-run";
  doc["format_version"] = 1;
  doc["graft_version"] = GRAFT_VERSION;
  doc["task"] = "video-classify";
  doc["model"] = o.model;
  doc["temporal"] = td ? built.time_distributed->temporal_spec().to_string() : "";
  doc["classes"] = splits.train.classes;
  doc["preprocessing"] = clip_preprocessing_json(pre, o.frames);
  doc["freeze"] = freeze;
  doc["data"] = o.data;
  doc["training"] = to_json(o);
  write_run_files(o.out, state_dict(*built.module), {{"format", "pt"}, {"producer", "graft " GRAFT_VERSION}},
                  std::move(doc));
  if (result.skipped_clips) log << "skipped " << result.skipped_clips << " unreadable or too short clip(s)\n";
  log << "run directory: " << o.out << " (model.safetensors, graft.json, metrics.csv, training_curves.svg"
      << (val_set ? ", confusion_matrix.svg, val_report.txt" : "") << ")\n";
  return result;
}

bool is_video_run(const std::string& dir) {
  const fs::path file = fs::path(dir) / "graft.json";
  if (!fs::is_regular_file(file)) return false;
  try {
    return read_json_file(file.string()).value("task", "") == "video-classify";
  } catch (const Error&) {
    return false;
  }
}

VideoRun load_video_run(const std::string& dir) {
  const std::string file = (fs::path(dir) / "graft.json").string();
  const json doc = read_json_file(file);
  if (doc.value("task", "") != "video-classify") throw FormatError(file, "task is not video-classify");
  VideoRun run;
  run.dir = dir;
  std::string save_id;
  try {
    run.model = doc.at("model").get<std::string>();
    run.temporal = doc.value("temporal", "");
    save_id = doc.value("weights_save_id", "");
    run.classes = doc.at("classes").get<std::vector<std::string>>();
    const json& pre = doc.at("preprocessing");
    run.clip.frames = pre.at("frames").get<int64_t>();
    run.clip.transform = transform_for(read_preprocessing(pre, file), false);
  } catch (const json::exception& e) {
    throw FormatError(file, std::string("missing or malformed field: ") + e.what());
  }
  if (run.classes.size() < 2 || run.clip.frames <= 0 || run.clip.frames > 4096)
    throw FormatError(file, "classes (2 or more) and frames (1..4096) are out of range");
  BuiltModel built = wrap_backbone(create_model(run.model), run.temporal.empty() ? "avg" : run.temporal,
                                   static_cast<int64_t>(run.classes.size()));
  LoadOptions load;
  load.source_name = (fs::path(dir) / "model.safetensors").string();
  check_run_weights(file, save_id, load.source_name);
  load_safetensors(*built.module, load.source_name, load);
  built.module->eval();
  run.module = built.module;
  run.forward = built.forward;
  return run;
}

Metrics evaluate_video(VideoRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                       std::ostream& log) {
  ClipList list;
  if (fs::is_directory(fs::path(data) / "val")) {
    list = scan_clip_folder((fs::path(data) / "val").string());
  } else if (fs::is_directory(fs::path(data) / "train")) {
    throw Error(data + ": has train/ but no val/; evaluate on a folder of held-out clips");
  } else {
    list = scan_clip_folder(data);
  }
  // Labels by the run's class names.
  for (auto& clip : list.clips) {
    const std::string& name = list.classes[static_cast<size_t>(clip.label)];
    auto it = std::find(run.classes.begin(), run.classes.end(), name);
    if (it == run.classes.end())
      throw Error(data + ": class folder '" + name + "' is not one of the run's classes");
    clip.label = it - run.classes.begin();
  }
  list.classes = run.classes;
  LoaderOptions options;
  options.batch_size = batch_size;
  options.shuffle = false;
  DataLoader loader(std::make_shared<ClipFolder>(list, run.clip), options);
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
    const torch::Tensor clip =
        transform_clip(load_clip(path, decode_min_side(run.clip.transform)), run.clip, rng);
    const torch::Tensor probs = torch::softmax(run.forward(clip.unsqueeze(0).to(device)), -1)[0].cpu();
    auto [values, indices] = probs.topk(k);
    Prediction p;
    p.path = path;
    for (int64_t i = 0; i < k; ++i)
      p.top.emplace_back(run.classes[static_cast<size_t>(indices[i].item<int64_t>())],
                         values[i].item<double>());
    out.push_back(std::move(p));
  }
  run.module->to(torch::kCPU);
  return out;
}

}  // namespace graft
