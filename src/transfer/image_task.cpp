// Image classification by transfer learning: the strategies (feature extraction with a feature cache,
// fine-tuning with discriminative rates, Keras' two-stage recipe) on top of the data pipeline and the
// Trainer, and the uses of a finished run (evaluate, predict, features).
#include "graft/image_task.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "graft/errors.h"
#include "graft/progress.h"
#include "graft/registry.h"
#include "graft/strings.h"
#include "graft/transfer.h"
#include "layers/conv_bn.h"

namespace graft {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Parameters of the backbone and of the head, for discriminative learning rates.
std::vector<ParamGroup> backbone_and_head_groups(BackboneImpl& model, double backbone_lr_mult) {
  const std::string head = head_module_name(model);
  ParamGroup backbone{{}, backbone_lr_mult, "backbone"}, top{{}, 1.0, "head"};
  for (const auto& item : model.named_parameters()) {
    (is_dotted_prefix(item.key(), head) ? top : backbone).params.push_back(item.value());
  }
  std::vector<ParamGroup> groups;
  for (auto* group : {&backbone, &top}) {
    bool trainable = false;
    for (const auto& p : group->params) trainable = trainable || p.requires_grad();
    if (trainable) groups.push_back(*group);
  }
  return groups;
}

bool is_idx_folder(const std::string& data) {
  for (const char* name : {"train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"}) {
    if (fs::exists(fs::path(data) / name)) return true;
  }
  return false;
}

// The head to train: the user's spec, completed with a final dense layer of C outputs when it lacks one.
std::string resolve_head(const std::string& head, int64_t classes) {
  if (head.empty()) return "avg,dense:" + std::to_string(classes);
  HeadSpec spec = HeadSpec::parse(head);
  if (spec.layers.empty() || spec.layers.back().kind != HeadLayerSpec::Kind::kDense) {
    return spec.to_string() + ",dense:" + std::to_string(classes);
  }
  if (spec.layers.back().units != classes) {
    throw SpecError("head spec '" + head + "' ends in dense:" + std::to_string(spec.layers.back().units) +
                    " but the data has " + std::to_string(classes) +
                    " classes; end it in dense:" + std::to_string(classes) + " or leave the last layer out");
  }
  return spec.to_string();
}

}  // namespace

std::optional<std::pair<torch::Tensor, torch::Tensor>> LoaderBatchSource::next() {
  auto batch = loader_.next();
  if (!batch) return std::nullopt;
  return std::make_pair(batch->images, batch->labels);
}

TransformConfig transform_for(const Preprocessing& preprocessing, bool train) {
  TransformConfig t;
  t.size = preprocessing.size;
  t.crop_pct = preprocessing.crop_pct;
  t.mean = preprocessing.mean;
  t.std = preprocessing.std;
  t.train = train;
  t.align_corners = preprocessing.interpolation == "bilinear-align-corners";
  return t;
}

ImageData open_image_data(const std::string& data, const TransformConfig& train_transform,
                          const TransformConfig& eval_transform, double val_split, uint64_t seed,
                          size_t limit) {
  if (!fs::is_directory(data)) throw Error("--data " + data + ": no such folder");
  ImageData out;
  if (is_idx_folder(data)) {
    const size_t val_limit = limit ? std::max<size_t>(1, limit / 4) : 0;
    out.train = load_fashion_mnist(data, /*train=*/true, train_transform, limit,
                                   limit ? std::optional(seed) : std::nullopt);
    out.val = load_fashion_mnist(data, /*train=*/false, eval_transform, val_limit,
                                 val_limit ? std::optional(seed + 1) : std::nullopt);
    out.classes = out.train->classes();
    return out;
  }
  ImageSplits splits = discover_image_splits(data, val_split, seed);
  out.classes = splits.train.classes;
  out.skipped = splits.train.skipped;
  out.skipped.insert(out.skipped.end(), splits.val.skipped.begin(), splits.val.skipped.end());
  out.train = std::make_shared<ImageFolder>(splits.train, train_transform);
  if (!splits.val.samples.empty()) out.val = std::make_shared<ImageFolder>(splits.val, eval_transform);
  return out;
}

std::shared_ptr<Dataset> open_eval_data(const std::string& data, const std::vector<std::string>& classes,
                                        const TransformConfig& transform, size_t limit) {
  if (!fs::is_directory(data)) throw Error("--data " + data + ": no such folder");
  if (is_idx_folder(data)) return load_fashion_mnist(data, /*train=*/false, transform, limit);
  // A data root with train/ + val/: evaluate the validation folder, as Keras' validation_data.
  for (const char* sub : {"val", "validation", "test"}) {
    if (fs::is_directory(fs::path(data) / "train") && fs::is_directory(fs::path(data) / sub)) {
      return std::make_shared<ImageFolder>(scan_image_folder((fs::path(data) / sub).string(), classes),
                                           transform);
    }
  }
  return std::make_shared<ImageFolder>(scan_image_folder(data, classes), transform);
}

FeatureSet extract_features(BackboneImpl& model, DataLoader& loader, torch::Device device, std::ostream& log,
                            const std::string& label) {
  std::optional<c10::InferenceMode> inference(std::in_place);
  BatchNormFolding folding;  // the backbone is frozen: each conv + BatchNorm runs as one convolution
  const bool was_training = model.is_training();
  model.eval();
  model.to(device);
  std::vector<torch::Tensor> features, labels;
  FeatureSet set;
  loader.start_epoch(0);
  ProgressBar bar(label, static_cast<int64_t>(loader.num_batches()), log);
  int64_t done = 0, samples = 0;
  while (auto batch = loader.next()) {
    torch::Tensor map = model.forward_features(batch->images.to(device));
    auto head = model.custom_head();
    features.push_back((head ? head->pool(map) : map.mean({2, 3})).to(torch::kCPU));
    labels.push_back(batch->labels);
    set.ids.insert(set.ids.end(), batch->ids.begin(), batch->ids.end());
    samples += batch->labels.size(0);
    bar.update(++done, samples, std::nan(""), 0.0);
  }
  bar.finish(label + ": " + std::to_string(samples) + " images");
  model.train(was_training);
  if (features.empty()) throw Error(label + ": no image could be read");
  // Copy out of inference mode: inference tensors cannot be saved for the head's backward pass.
  inference.reset();
  set.features = torch::cat(features).clone();
  set.labels = torch::cat(labels).clone();
  return set;
}

json to_json(const ImageTrainOptions& o) {
  const TrainConfig& t = o.train;
  json j;
  j["model"] = o.model;
  j["weights"] = o.weights;
  j["init_from"] = o.init_from;
  j["data"] = o.data;
  j["out"] = o.out;
  j["head"] = o.head;
  j["strategy"] = o.strategy;
  j["freeze"] = o.freeze;
  j["stage1_epochs"] = o.stage1_epochs;
  j["backbone_lr_mult"] = o.backbone_lr_mult;
  j["bn_train_frozen"] = o.bn_train_frozen;
  j["val_split"] = o.val_split;
  j["validate"] = o.validate;
  j["batch_size"] = o.batch_size;
  j["image_size"] = o.image_size;
  j["augment"] = o.augment;
  j["rotation"] = o.rotation;
  j["jitter"] = o.jitter;
  j["workers"] = o.workers;
  j["limit"] = o.limit;
  j["epochs"] = t.epochs;
  j["optimizer"] = t.optimizer.name;
  j["lr"] = t.optimizer.lr;
  j["momentum"] = t.optimizer.momentum;
  j["weight_decay"] = t.optimizer.weight_decay ? json(*t.optimizer.weight_decay) : json(nullptr);
  j["schedule"] = t.schedule.name;
  j["warmup_steps"] = t.schedule.warmup_steps;
  j["step_size"] = t.schedule.step_size;
  j["gamma"] = t.schedule.gamma;
  j["label_smoothing"] = t.label_smoothing;
  j["class_weights"] = t.class_weights;
  j["grad_clip"] = t.grad_clip;
  j["seed"] = t.seed;
  j["early_stopping"] = t.early_stopping.enabled;
  j["monitor"] = t.early_stopping.monitor;
  j["patience"] = t.early_stopping.patience;
  j["min_delta"] = t.early_stopping.min_delta;
  return j;
}

void apply_json(ImageTrainOptions& o, const json& config, const std::string& file) {
  if (!config.is_object()) throw FormatError(file, "expected a JSON object of training options");
  const json known = to_json(o);
  for (const auto& item : config.items()) {
    if (!known.contains(item.key())) {
      std::string keys;
      for (const auto& k : known.items()) keys += (keys.empty() ? "" : ", ") + k.key();
      throw FormatError(file, "unknown option '" + item.key() + "'", "known options: " + keys);
    }
  }
  auto get = [&](const char* key, auto& target) {
    if (!config.contains(key)) return;
    try {
      config.at(key).get_to(target);
    } catch (const json::exception&) {
      throw FormatError(
          file, std::string("option '") + key + "' has the wrong type (" + config.at(key).type_name() + ")");
    }
  };
  TrainConfig& t = o.train;
  get("model", o.model);
  get("weights", o.weights);
  get("init_from", o.init_from);
  get("data", o.data);
  get("out", o.out);
  get("head", o.head);
  get("strategy", o.strategy);
  get("freeze", o.freeze);
  get("stage1_epochs", o.stage1_epochs);
  get("backbone_lr_mult", o.backbone_lr_mult);
  get("bn_train_frozen", o.bn_train_frozen);
  get("val_split", o.val_split);
  get("validate", o.validate);
  get("batch_size", o.batch_size);
  get("image_size", o.image_size);
  get("augment", o.augment);
  get("rotation", o.rotation);
  get("jitter", o.jitter);
  get("workers", o.workers);
  get("limit", o.limit);
  get("epochs", t.epochs);
  get("optimizer", t.optimizer.name);
  get("lr", t.optimizer.lr);
  get("momentum", t.optimizer.momentum);
  if (config.contains("weight_decay") && !config["weight_decay"].is_null()) {
    double wd = 0;
    get("weight_decay", wd);
    t.optimizer.weight_decay = wd;
  }
  get("schedule", t.schedule.name);
  get("warmup_steps", t.schedule.warmup_steps);
  get("step_size", t.schedule.step_size);
  get("gamma", t.schedule.gamma);
  get("label_smoothing", t.label_smoothing);
  get("class_weights", t.class_weights);
  get("grad_clip", t.grad_clip);
  get("seed", t.seed);
  get("early_stopping", t.early_stopping.enabled);
  get("monitor", t.early_stopping.monitor);
  get("patience", t.early_stopping.patience);
  get("min_delta", t.early_stopping.min_delta);
}

ImageTrainResult train_image_classifier(const ImageTrainOptions& options_in, std::ostream& log) {
  ImageTrainOptions options = options_in;  // --init-from fills model and head
  if (options.strategy != "feature-extract" && options.strategy != "fine-tune" &&
      options.strategy != "two-stage") {
    throw SpecError("--strategy " + options.strategy + ": expected feature-extract, fine-tune or two-stage");
  }
  if (options.out.empty()) throw Error("--out: a run directory is required");
  if (options.batch_size <= 0)
    throw Error("--batch-size must be positive, got " + std::to_string(options.batch_size));
  const bool feature_extract = options.strategy == "feature-extract";
  const bool two_stage = options.strategy == "two-stage";
  // What feature extraction cannot honour is refused by name, not dropped: the whole backbone is frozen and
  // its features are computed once from unaugmented images.
  if (feature_extract && !options.freeze.empty())
    throw SpecError("--freeze " + options.freeze +
                    " does not apply to --strategy feature-extract, which freezes the whole backbone; use "
                    "--strategy fine-tune (or two-stage) to choose what trains");
  if (feature_extract && (options.rotation > 0 || options.jitter > 0))
    throw SpecError(std::string(options.rotation > 0 ? "--rotation" : "--jitter") +
                    " augments training images, but --strategy feature-extract computes their features once "
                    "without augmentation; use --strategy fine-tune, or leave it out");

  log << "graft train: resolved configuration\n" << to_json(options).dump(2) << "\n";

  // Initialisation of the model and the head draws from torch's generator: seed it first so that a run
  // repeats exactly.
  torch::manual_seed(options.train.seed);
  std::optional<LoadedRun> previous;
  if (!options_in.init_from.empty()) {
    previous = load_run(options_in.init_from);
    if (!options.weights.empty()) throw Error("give --weights or --init-from, not both");
    if (options.model.empty()) options.model = previous->spec.model;
    if (options.model != previous->spec.model)
      throw Error("--init-from " + options_in.init_from + " holds a " + previous->spec.model + ", not a " +
                  options.model);
    if (options.head.empty() && !previous->spec.head.empty()) {
      // The run's head without its last layer: resolve_head adds one for this data's classes.
      HeadSpec head = HeadSpec::parse(previous->spec.head);
      if (!head.layers.empty() && head.layers.back().kind == HeadLayerSpec::Kind::kDense)
        head.layers.pop_back();
      options.head = head.to_string();
    }
  }
  // Model first (for its preprocessing), then data (for the class count), then the head.
  Backbone model = create_model(options.model);
  // An earlier run's preprocessing goes with its weights (size, mean/std, interpolation) unless overridden.
  Preprocessing pre = previous ? previous->spec.preprocessing : Preprocessing::from_cfg(model->default_cfg());
  if (options.image_size > 0) pre.size = options.image_size;
  if (previous && options.image_size <= 0)
    log << "image size " << pre.size << " px from --init-from " << options_in.init_from
        << " (--image-size overrides)\n";
  TransformConfig train_tf = transform_for(pre, /*train=*/options.augment && !feature_extract);
  train_tf.rotation_degrees = options.rotation;
  train_tf.jitter = options.jitter;
  const TransformConfig eval_tf = transform_for(pre, /*train=*/false);
  ImageData data =
      open_image_data(options.data, train_tf, eval_tf, options.val_split, options.train.seed, options.limit);
  if (!options.validate) data.val = nullptr;
  const int64_t classes = static_cast<int64_t>(data.classes.size());
  log << "data: " << data.train->size() << " training, " << (data.val ? data.val->size() : 0)
      << " validation images, " << classes << " classes\n";
  for (size_t i = 0; i < data.skipped.size() && i < 10; ++i)
    log << "graft: warning: " << data.skipped[i] << "\n";
  if (data.skipped.size() > 10)
    log << "graft: warning: ... and " << data.skipped.size() - 10 << " more skipped\n";

  if (previous) {
    // Set below, once the head exists.
  } else if (!options.weights.empty()) {
    WeightsOptions w;
    w.skip_classifier = true;  // the head is replaced
    LoadReport report = load_weights(*model, options.weights, w);
    log << "weights: " << report.loaded.size() << " tensors from " << options.weights << "\n";
  } else if (!ModelName::parse(options.model).tag.empty() && !model->default_cfg().cache_file.empty()) {
    WeightsOptions w;
    w.skip_classifier = true;
    LoadReport report = load_pretrained(*model, w);
    log << "weights: " << report.loaded.size() << " tensors from " << pretrained_file(model->default_cfg())
        << "\n";
  } else {
    log << "graft: warning: no --weights: " << options.model
        << " starts from random initialisation (pretrained source: " << model->default_cfg().source << ")\n";
  }
  const std::string head = resolve_head(options.head, classes);
  model->set_head(HeadSpec::parse(head), {pre.size, pre.size});
  if (previous) {
    // Every tensor of the earlier run that fits; the last classifier layer when the classes differ does not.
    NamedTensors fitting;
    const NamedTensors current = state_dict(*model);
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const auto& [name, tensor] : current) shapes[name] = tensor.sizes().vec();
    std::vector<std::string> fresh;
    for (auto& [name, tensor] : state_dict(*previous->model)) {
      auto it = shapes.find(name);
      if (it != shapes.end() && it->second == tensor.sizes().vec())
        fitting.emplace_back(name, tensor);
      else
        fresh.push_back(name);
    }
    LoadOptions load;
    load.strict = false;
    load.source_name = options_in.init_from;
    const LoadReport report = load_state_dict(*model, fitting, load);
    log << "init from " << options_in.init_from << ": " << report.loaded.size() << " tensors"
        << (fresh.empty() ? "" : "; new: " + std::to_string(fresh.size()) + " tensors of the last layer")
        << "\n";
  }
  model->set_frozen_bn_trains(options.bn_train_frozen);
  const std::string stage2_freeze = options.freeze.empty() ? "none" : options.freeze;
  apply_freeze(*model, feature_extract || two_stage ? "all" : stage2_freeze);

  RunSpec spec;
  spec.model = options.model;
  spec.head = head;
  spec.freeze = feature_extract ? "all" : stage2_freeze;
  spec.classes = data.classes;
  spec.preprocessing = pre;
  spec.data = options.data;

  TrainConfig config = options.train;
  config.out_dir = options.out;
  config.class_names = data.classes;
  config.log = &log;
  fs::create_directories(options.out);

  LoaderOptions loader_options;
  loader_options.batch_size = options.batch_size;
  loader_options.workers = options.workers;
  loader_options.seed = config.seed;
  auto train_loader = std::make_unique<DataLoader>(data.train, loader_options);
  LoaderOptions eval_options = loader_options;
  eval_options.shuffle = false;
  std::unique_ptr<DataLoader> val_loader;
  if (data.val) val_loader = std::make_unique<DataLoader>(data.val, eval_options);

  ImageTrainResult result;
  const bool cache = feature_extract;  // feature-extract never augments: features are computed once
  if (cache) {
    // Epoch 1 pays for the backbone once; every epoch after trains the head on cached features.
    auto start = std::chrono::steady_clock::now();
    DataLoader train_once(data.train, eval_options);
    FeatureSet train_features = extract_features(*model, train_once, config.device, log, "features (train)");
    std::optional<FeatureSet> val_features;
    if (val_loader)
      val_features = extract_features(*model, *val_loader, config.device, log, "features (val)");
    result.feature_cache_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    log << "feature cache: " << train_features.features.size(0) << " x " << train_features.features.size(1)
        << " computed in " << format_duration(result.feature_cache_seconds) << " ("
        << result.feature_cache_seconds << " s); epochs train the head only\n";

    std::shared_ptr<HeadImpl> head_module = model->custom_head();
    TensorBatchSource train_source(train_features.features, train_features.labels, options.batch_size, true);
    std::unique_ptr<TensorBatchSource> val_source;
    if (val_features) {
      val_source = std::make_unique<TensorBatchSource>(val_features->features, val_features->labels,
                                                       options.batch_size, false);
    }
    config.sample_unit = "feat";
    Trainer trainer(
        head_module, [head_module](const torch::Tensor& x) { return head_module->forward_pooled(x); },
        config);
    result.history = trainer.fit(train_source, val_source.get());
    trainer.restore_best();
  } else {
    config.param_groups = backbone_and_head_groups(*model, two_stage ? 1.0 : options.backbone_lr_mult);
    const int64_t stage1 =
        options.stage1_epochs > 0 ? options.stage1_epochs : std::max<int64_t>(1, config.epochs / 2);
    if (two_stage) {
      const double mult = options.backbone_lr_mult;
      const bool bn_policy = options.bn_train_frozen;
      config.on_epoch_end.push_back(
          [model, stage1, stage2_freeze, mult, bn_policy](Trainer& trainer, EpochResult& r) {
            if (r.epoch != stage1) return;
            // Keras' recipe: after the head has settled, unfreeze the top and continue at a lower rate.
            model->set_frozen_bn_trains(bn_policy);
            FreezeReport report = apply_freeze(*model, stage2_freeze);
            trainer.set_param_groups(backbone_and_head_groups(*model, mult));
            std::ostream& out = trainer.config().log ? *trainer.config().log : std::cerr;
            out << "two-stage: stage 2 from epoch " << stage1 + 1 << ": freeze '" << stage2_freeze << "' ("
                << report.frozen_layers.size() << " layers stay frozen), backbone lr x" << mult << "\n";
          });
    }
    Trainer trainer(
        model, [model](const torch::Tensor& x) { return model->forward(x); }, config);
    LoaderBatchSource train_source(*train_loader);
    std::unique_ptr<LoaderBatchSource> val_source;
    if (val_loader) val_source = std::make_unique<LoaderBatchSource>(*val_loader);
    result.history = trainer.fit(train_source, val_source.get());
    trainer.restore_best();
  }
  result.skipped_files = train_loader->skipped_files() + (val_loader ? val_loader->skipped_files() : 0);

  // The saved model is checked the way predict will use it: full forward on the validation images.
  model->to(torch::kCPU);
  model->eval();
  if (val_loader) {
    Trainer evaluator(
        model, [model](const torch::Tensor& x) { return model->forward(x); },
        [&] {
          TrainConfig c;
          c.device = config.device;
          c.progress = config.progress;
          c.log = &log;
          return c;
        }());
    LoaderBatchSource source(*val_loader);
    result.val_metrics = evaluator.evaluate(source, "val");
    write_val_report(options.out, *result.val_metrics, data.classes, log);
  }
  model->to(torch::kCPU);
  save_run(options.out, *model, spec, to_json(options));
  if (result.skipped_files) log << "skipped " << result.skipped_files << " unreadable file(s)\n";
  log << "run directory: " << options.out
      << " (model.safetensors, graft.json, metrics.csv, training_curves.svg"
      << (val_loader ? ", confusion_matrix.svg, val_report.txt" : "") << ")\n";
  return result;
}

std::vector<Prediction> predict_images(LoadedRun& run, const std::vector<std::string>& paths, int64_t top_k,
                                       torch::Device device) {
  c10::InferenceMode inference;
  BatchNormFolding folding;
  run.model->eval();
  run.model->to(device);
  const TransformConfig transform = transform_for(run.spec.preprocessing, false);
  std::mt19937_64 rng(0);
  std::vector<Prediction> out;
  for (const auto& path : paths) {
    torch::Tensor image = load_and_transform(path, transform, rng).unsqueeze(0).to(device);
    torch::Tensor probs = torch::softmax(run.model->forward(image), 1)[0].to(torch::kCPU);
    const int64_t k = std::min<int64_t>(std::max<int64_t>(top_k, 1), probs.size(0));
    auto [values, indices] = probs.topk(k);
    Prediction p;
    p.path = path;
    for (int64_t i = 0; i < k; ++i) {
      p.top.emplace_back(run.spec.classes.at(indices[i].item<int64_t>()), values[i].item<double>());
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace graft
