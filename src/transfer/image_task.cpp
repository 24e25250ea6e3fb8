// Image classification by transfer learning: the strategies (feature extraction with a feature cache,
// fine-tuning with discriminative rates, Keras' two-stage recipe) on top of the data pipeline and the
// Trainer, and the uses of a finished run (evaluate, predict, features).
#include "graft/image_task.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>

#include "graft/dropout.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/progress.h"
#include "graft/registry.h"
#include "graft/strings.h"
#include "graft/train_options.h"
#include "graft/transfer.h"
#include "layers/conv_bn.h"
#include "layers/stochastic_depth.h"
#include "transfer/driver.h"

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
  // A last dense layer with an activation is a hidden layer (Keras' Flatten, Dense(512, 'relu')): the
  // classifier comes after it. Softmax is an output activation, not a hidden one.
  const bool ends_in_classifier =
      !spec.layers.empty() && spec.layers.back().kind == HeadLayerSpec::Kind::kDense &&
      (spec.layers.back().activation.empty() || spec.layers.back().activation == "softmax");
  if (!ends_in_classifier) return spec.to_string() + ",dense:" + std::to_string(classes);
  const int64_t units = spec.layers.back().units;
  if (units != classes) {
    const std::string c = "dense:" + std::to_string(classes), n = "dense:" + std::to_string(units);
    throw SpecError("head spec '" + head + "' ends in " + n + " but the data has " + std::to_string(classes) +
                    " classes; end it in " + c + ", leave the last layer out (graft appends " + c +
                    "), or make it a hidden layer (" + n + ":relu) that " + c + " follows");
  }
  return spec.to_string();
}

// Keras' two-stage recipe: after `stage1` epochs of the head alone, unfreeze the top and continue at a
// lower rate for the backbone.
EpochCallback two_stage_switch(const Backbone& model, const ImageTrainOptions& options,
                               const std::string& stage2_freeze) {
  const int64_t stage1 =
      options.stage1_epochs > 0 ? options.stage1_epochs : std::max<int64_t>(1, options.train.epochs / 2);
  const double mult = options.backbone_lr_mult;
  const bool bn_policy = options.bn_train_frozen;
  return [model, stage1, stage2_freeze, mult, bn_policy](Trainer& trainer, EpochResult& r) {
    if (r.epoch != stage1) return;
    model->set_frozen_bn_trains(bn_policy);
    FreezeReport report = apply_freeze(*model, stage2_freeze);
    trainer.set_param_groups(backbone_and_head_groups(*model, mult));
    trainer.add_curve_mark(static_cast<double>(stage1) + 0.5, "stage 2");
    std::ostream& out = trainer.config().log ? *trainer.config().log : std::cerr;
    out << "two-stage: stage 2 from epoch " << stage1 + 1 << ": freeze '" << stage2_freeze << "' ("
        << report.frozen_layers.size() << " layers stay frozen), backbone lr x" << mult << "\n";
  };
}

// What feature extraction cannot honour is refused by name, not dropped: the whole backbone is frozen and
// its features are computed once from unaugmented images.
void check_strategy_options(const ImageTrainOptions& options) {
  if (options.strategy != "feature-extract") return;
  if (!options.freeze.empty())
    throw SpecError("--freeze " + options.freeze +
                    " does not apply to --strategy feature-extract, which freezes the whole backbone; use "
                    "--strategy fine-tune (or two-stage) to choose what trains");
  if (options.rotation > 0 || options.jitter > 0)
    throw SpecError(std::string(options.rotation > 0 ? "--rotation" : "--jitter") +
                    " augments training images, but --strategy feature-extract computes their features once "
                    "without augmentation; use --strategy fine-tune, or leave it out");
}

// --lora trains adapters beside a frozen backbone and the head whole, with one learning rate; the options
// that choose what trains otherwise are refused by name.
void check_lora_options(const ImageTrainOptions& o) {
  const ImageTrainOptions defaults;
  const std::string lora = adapter_flag(o.lora, o.adapter);
  const auto refuse = [&](const std::string& flag, const std::string& why) {
    throw SpecError(flag + " does not apply to " + lora + ", " + why);
  };
  if (o.strategy != defaults.strategy)
    refuse("--strategy " + o.strategy, "which trains the adapters and the head together (fine-tune)");
  if (!o.freeze.empty())
    refuse("--freeze " + o.freeze, "which freezes everything but the adapters and the head");
  if (o.backbone_lr_mult != defaults.backbone_lr_mult)
    refuse("--backbone-lr-mult", "whose adapters and head train at one learning rate (--lr)");
  if (o.bn_train_frozen)
    refuse("--bn-train-frozen", "whose adapter goes with the base's BatchNorm statistics (they stay fixed)");
}

// The earlier run of --init-from, if any; its model and its head without the last layer become the
// options' defaults.
std::optional<LoadedRun> open_init_run(ImageTrainOptions& options) {
  if (options.init_from.empty()) return std::nullopt;
  LoadedRun previous = load_run(options.init_from);
  if (options.model.empty()) options.model = previous.spec.model;
  if (options.model != previous.spec.model)
    throw Error("--init-from " + options.init_from + " holds a " + previous.spec.model + ", not a " +
                options.model);
  if (options.head.empty() && !previous.spec.head.empty()) {
    // The run's head without its last layer: resolve_head adds one for this data's classes.
    HeadSpec head = HeadSpec::parse(previous.spec.head);
    if (!head.layers.empty() && head.layers.back().kind == HeadLayerSpec::Kind::kDense)
      head.layers.pop_back();
    options.head = head.to_string();
  }
  return previous;
}

// The run's preprocessing: an earlier run's (it goes with its weights: size, mean/std, interpolation), else
// the model's; --image-size overrides either.
Preprocessing run_preprocessing(const ImageTrainOptions& options, const std::optional<LoadedRun>& previous,
                                const BackboneImpl& model, std::ostream& log) {
  Preprocessing pre = previous ? previous->spec.preprocessing : Preprocessing::from_cfg(model.default_cfg());
  if (options.image_size > 0) pre.size = options.image_size;
  if (previous && options.image_size <= 0)
    log << "image size " << pre.size << " px from --init-from " << options.init_from
        << " (--image-size overrides)\n";
  return pre;
}

// The data as the run reads it: training images augmented (never for feature extraction, whose features
// are computed once), validation images as predict sees them; none without validation.
ImageData open_training_data(const ImageTrainOptions& options, const Preprocessing& pre, std::ostream& log) {
  TransformConfig train_tf =
      transform_for(pre, /*train=*/options.augment && options.strategy != "feature-extract");
  train_tf.rotation_degrees = options.rotation;
  train_tf.jitter = options.jitter;
  ImageData data = open_image_data(options.data, train_tf, transform_for(pre, /*train=*/false),
                                   options.val_split, options.train.seed, options.limit);
  if (!options.validate) data.val = nullptr;
  if (data.classes.size() < 2)
    throw Error(options.data + ": one class ('" + data.classes.at(0) +
                "'); classification needs two or more (a folder per class)");
  log << "data: " << data.train->size() << " training, " << (data.val ? data.val->size() : 0)
      << " validation images, " << data.classes.size() << " classes\n";
  log_skipped(data.skipped, log);
  return data;
}

// Every tensor of the earlier run that fits the model; the last classifier layer does not when the
// classes differ, and stays new.
void load_fitting_tensors(BackboneImpl& model, const LoadedRun& previous, const std::string& source,
                          std::ostream& log) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, tensor] : state_dict(model)) shapes[name] = tensor.sizes().vec();
  NamedTensors fitting;
  std::vector<std::string> fresh;
  for (auto& [name, tensor] : state_dict(*previous.model)) {
    auto it = shapes.find(name);
    if (it != shapes.end() && it->second == tensor.sizes().vec())
      fitting.emplace_back(name, tensor);
    else
      fresh.push_back(name);
  }
  LoadOptions load;
  load.strict = false;
  load.source_name = source;
  const LoadReport report = load_state_dict(model, fitting, load);
  log << "init from " << source << ": " << report.loaded.size() << " tensors"
      << (fresh.empty() ? "" : "; new: " + std::to_string(fresh.size()) + " tensors of the last layer")
      << "\n";
}

// Feature extraction's cache: the frozen backbone's pooled features of the training (and validation)
// images, once, as batch sources for the head; and the seconds it took.
std::tuple<std::unique_ptr<TensorBatchSource>, std::unique_ptr<TensorBatchSource>, double> cache_features(
    BackboneImpl& model, DataLoader& train_once, DataLoader* val, int64_t batch_size, torch::Device device,
    std::ostream& log) {
  const auto start = std::chrono::steady_clock::now();
  FeatureSet train_set = extract_features(model, train_once, device, log, "features (train)");
  std::optional<FeatureSet> val_set;
  if (val) val_set = extract_features(model, *val, device, log, "features (val)");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  log << "feature cache: " << train_set.features.size(0) << " x " << train_set.features.size(1)
      << " computed in " << format_duration(seconds) << " (" << seconds
      << " s); epochs train the head only\n";
  auto train = std::make_unique<TensorBatchSource>(train_set.features, train_set.labels, batch_size, true);
  std::unique_ptr<TensorBatchSource> held_out;
  if (val_set)
    held_out = std::make_unique<TensorBatchSource>(val_set->features, val_set->labels, batch_size, false);
  return {std::move(train), std::move(held_out), seconds};
}

// The leading feature steps of a model whose parameters all stay fixed (a LoRA run's layers below its
// first adapted one) and that give an image the same output every epoch: nothing in them behaves
// otherwise in training (no dropout, no stochastic depth, frozen BatchNorm on its running statistics).
// Those steps can run once per image. Returns how many lead (0: none).
size_t frozen_prefix(BackboneImpl& model, const std::vector<ForwardStep>& steps) {
  const auto params = model.named_parameters();
  const auto modules = model.named_modules();
  size_t lead = 0;
  for (; lead < steps.size(); ++lead) {
    const std::string& step = steps[lead].name;
    bool fixed = true;
    for (const auto& p : params)
      fixed = fixed && !(is_dotted_prefix(p.key(), step) && p.value().requires_grad());
    for (const auto& m : modules) {
      if (!is_dotted_prefix(m.key(), step)) continue;
      const auto* dropout = m.value()->as<torch::nn::Dropout>();
      const auto* own_dropout = m.value()->as<DropoutImpl>();  // the transformers' (graft/dropout.h)
      const auto* depth = m.value()->as<StochasticDepthImpl>();
      const bool norm = m.value()->as<torch::nn::BatchNorm2d>() != nullptr;
      fixed = fixed && !(dropout && dropout->options.p() > 0) && !(own_dropout && own_dropout->p > 0) &&
              !(depth && depth->p > 0) && !(norm && model.frozen_bn_trains());
    }
    if (!fixed) break;
  }
  return lead;
}

}  // namespace

std::optional<std::pair<torch::Tensor, torch::Tensor>> LoaderBatchSource::next() {
  auto batch = loader_.next();
  if (!batch) return std::nullopt;
  return std::make_pair(batch->images, batch->labels);
}

namespace {

// --data must be a folder: a file or a missing path is said as what it is.
void require_data_folder(const std::string& data) {
  std::error_code error;
  if (fs::is_directory(data, error)) return;
  throw Error("--data " + data + ": " +
              (fs::exists(data, error) ? "is a file, not a folder (expected DATA/<class>/*.jpg or IDX files)"
                                       : "no such folder"));
}

// At most `limit` samples of a listing (0: all): a seeded random subset, kept in listing order, as --limit
// picks IDX images.
ImageList limited(ImageList list, size_t limit, uint64_t seed) {
  if (limit == 0 || list.samples.size() <= limit) return list;
  std::vector<size_t> order(list.samples.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(seed);
  portable_shuffle(order, rng);
  order.resize(limit);
  std::sort(order.begin(), order.end());
  std::vector<LabeledPath> kept;
  kept.reserve(limit);
  for (size_t i : order) kept.push_back(list.samples[i]);
  list.samples = std::move(kept);
  return list;
}

// The validation folder of a data root that has train/ beside val/, validation/ or test/; "" otherwise.
std::string held_out_folder(const std::string& data) {
  if (!fs::is_directory(fs::path(data) / "train")) return "";
  for (const char* sub : {"val", "validation", "test"})
    if (fs::is_directory(fs::path(data) / sub)) return (fs::path(data) / sub).string();
  return "";
}

}  // namespace

ImageData open_image_data(const std::string& data, const TransformConfig& train_transform,
                          const TransformConfig& eval_transform, double val_split, uint64_t seed,
                          size_t limit) {
  require_data_folder(data);
  ImageData out;
  const size_t val_limit = limit ? std::max<size_t>(1, limit / 4) : 0;
  if (is_idx_folder(data)) {
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
  out.train = std::make_shared<ImageFolder>(limited(splits.train, limit, seed), train_transform);
  if (!splits.val.samples.empty())
    out.val = std::make_shared<ImageFolder>(limited(splits.val, val_limit, seed + 1), eval_transform);
  return out;
}

std::shared_ptr<Dataset> open_eval_data(const std::string& data, const std::vector<std::string>& classes,
                                        const TransformConfig& transform, size_t limit) {
  require_data_folder(data);
  if (is_idx_folder(data)) return load_fashion_mnist(data, /*train=*/false, transform, limit);
  // A data root with train/ + val/: evaluate the validation folder, as Keras' validation_data.
  const std::string held_out = held_out_folder(data);
  return std::make_shared<ImageFolder>(
      limited(scan_image_folder(held_out.empty() ? data : held_out, classes), limit, 0), transform);
}

std::vector<FeaturePart> open_feature_parts(const std::string& data, const std::vector<std::string>& classes,
                                            const TransformConfig& transform, size_t limit) {
  require_data_folder(data);
  if (is_idx_folder(data))
    return {{"train", load_fashion_mnist(data, /*train=*/true, transform, limit)},
            {"test", load_fashion_mnist(data, /*train=*/false, transform, limit)}};
  const auto scan = [&](const std::string& folder, const std::vector<std::string>& names) {
    return limited(names.empty() ? scan_image_folder(folder) : scan_image_folder(folder, names), limit, 0);
  };
  const std::string held_out = held_out_folder(data);
  if (held_out.empty()) return {{"", std::make_shared<ImageFolder>(scan(data, classes), transform)}};
  ImageList train = scan((fs::path(data) / "train").string(), classes);
  ImageList val = scan(held_out, train.classes);
  return {{"train", std::make_shared<ImageFolder>(train, transform)},
          {fs::path(held_out).filename().string(), std::make_shared<ImageFolder>(val, transform)}};
}

FeatureSet part_features(BackboneImpl& model, const std::vector<FeaturePart>& parts, int64_t batch_size,
                         torch::Device device, std::ostream& log) {
  const LoaderOptions options = use_loader_options(batch_size);
  FeatureSet all;
  std::vector<torch::Tensor> features, labels;
  for (const auto& [name, dataset] : parts) {
    DataLoader loader(dataset, options);
    FeatureSet set =
        extract_features(model, loader, device, log, name.empty() ? "features" : "features (" + name + ")");
    features.push_back(set.features);
    labels.push_back(set.labels);
    all.ids.insert(all.ids.end(), set.ids.begin(), set.ids.end());
    if (!name.empty()) all.splits.insert(all.splits.end(), set.ids.size(), name);
    if (all.classes.empty()) all.classes = dataset->classes();
  }
  all.features = torch::cat(features);
  all.labels = torch::cat(labels);
  model.to(torch::kCPU);
  return all;
}

FeatureSet extract_features(BackboneImpl& model, DataLoader& loader, torch::Device device, std::ostream& log,
                            const std::string& label) {
  const bool was_training = model.is_training();
  model.eval();
  model.to(device);
  auto head = model.custom_head();
  FeatureSet set = map_batches(
      loader,
      [&](const torch::Tensor& images) {
        torch::Tensor map = model.forward_features(images);
        return head ? head->pool(map) : map.mean({2, 3});
      },
      device, log, label, "img");
  model.train(was_training);
  return set;
}

namespace {

// Image classification's own steps, which train_run (transfer/driver.h) calls in order: the model before
// the data (its preprocessing decides how images are read), the head once the classes are known, the
// strategy's freeze, groups and feature cache.
class ImageRecipe : public TrainRecipe {
 public:
  explicit ImageRecipe(const ImageTrainOptions& options) : o_(options) {}

  RunBasics basics() const override {
    RunBasics b = basics_of(o_, "image-classify", "img", "classify");
    b.random_init = o_.random_init;
    return b;
  }
  json options() const override { return to_json(o_); }

  void resolve(std::ostream&) override {
    check_strategy_options(o_);
    if (adapted()) check_lora_options(o_);
    previous_ = open_init_run(o_);  // fills model and head
  }

  std::vector<std::string> open_data(std::ostream& log) override {
    model_ = create_model(o_.model);
    pre_ = run_preprocessing(o_, previous_, *model_, log);
    data_ = open_training_data(o_, pre_, log);
    return data_.classes;
  }

  void build_model(const StartChoice& start, std::ostream& log) override {
    const int64_t classes = static_cast<int64_t>(data_.classes.size());
    if (start.kind != StartChoice::Kind::kRun) base_ = load_start_weights(*model_, start, o_.verbose, log);
    base_pretrained_ = start.kind == StartChoice::Kind::kPretrained;
    head_ = resolve_head(o_.head, classes);
    if (!o_.head.empty() && head_ != HeadSpec::parse(o_.head).to_string())
      log << "head: " << head_ << " (dense:" << classes << " appended for the " << classes << " classes)\n";
    model_->set_head(HeadSpec::parse(head_), {pre_.size, pre_.size});
    if (previous_) load_fitting_tensors(*model_, *previous_, o_.init_from, log);  // after the new head
    model_->set_frozen_bn_trains(o_.bn_train_frozen);
  }

  // Feature extraction and two-stage's first stage train the head alone.
  FreezeStep freeze_step() override {
    FreezeStep step;
    step.backbone = model_.get();
    step.spec = step.named = feature_extract() || two_stage() ? "all" : stage2_freeze();
    step.saved = feature_extract() ? "all" : stage2_freeze();
    return step;
  }

  std::vector<ParamGroup> param_groups() override {
    if (feature_extract()) return {};  // the head alone trains, on cached features
    return backbone_and_head_groups(*model_, two_stage() ? 1.0 : o_.backbone_lr_mult);
  }

  // The backbone's layers take the adapter; the new head trains whole.
  LoraPlace lora_place() override {
    LoraPlace place;
    place.model = model_.get();
    place.whole = {head_module_name(*model_)};
    place.base = base_;
    place.pretrained = base_pretrained_;
    return place;
  }

  FitPlan plan(TrainConfig& config, std::ostream& log) override {
    const auto [loader_options, eval_options] = run_loaders(o_.batch_size, o_.workers, config.seed);
    train_loader_ = std::make_unique<DataLoader>(data_.train, loader_options);
    if (data_.val) val_loader_ = std::make_unique<DataLoader>(data_.val, eval_options);
    train_images_ = std::make_unique<LoaderBatchSource>(*train_loader_);
    if (val_loader_) val_images_ = std::make_unique<LoaderBatchSource>(*val_loader_);

    FitPlan plan;
    Backbone model = model_;
    plan.model = model;
    plan.model_forward = [model](const torch::Tensor& x) { return model->forward(x); };
    plan.model_val = val_images_.get();
    if (feature_extract()) {
      // Feature extraction never augments: the backbone runs once, and epochs train the head on the cache.
      DataLoader train_once(data_.train, eval_options);
      Autocast autocast(config.precision, config.device);
      std::tie(train_features_, val_features_, result.feature_cache_seconds) =
          cache_features(*model, train_once, val_loader_.get(), o_.batch_size, config.device, log);
      std::shared_ptr<HeadImpl> head = model->custom_head();
      config.sample_unit = "feat";
      plan.trained = head;
      plan.trained_forward = [head](const torch::Tensor& x) { return head->forward_pooled(x); };
      plan.train = train_features_.get();
      plan.val = val_features_.get();
      plan.model_sample_unit = "img";
    } else if (cache_prefix(plan, config, eval_options, log)) {
      // A LoRA run's frozen prefix, computed once per image: epochs run the rest.
    } else {
      if (two_stage()) config.on_epoch_end.push_back(two_stage_switch(model, o_, stage2_freeze()));
      plan.trained = model;
      plan.trained_forward = plan.model_forward;
      plan.train = train_images_.get();
      plan.val = val_images_.get();
    }
    return plan;
  }

  RunFiles run_files(const FitOutcome&, std::ostream&) override {
    result.skipped_files = train_loader_->skipped_files() + (val_loader_ ? val_loader_->skipped_files() : 0);
    RunFiles files;
    files.fields["model"] = o_.model;
    files.fields["arch"] = model_->arch();
    files.fields["head"] = head_;
    files.fields["num_classes"] = data_.classes.size();
    files.fields["preprocessing"] = preprocessing_json(pre_);
    files.weights = state_dict(*model_);
    files.metadata["arch"] = model_->arch();
    files.listing = "model.safetensors, graft.json";
    if (result.skipped_files)
      files.note = "skipped " + std::to_string(result.skipped_files) + " unreadable file(s)";
    return files;
  }

  ImageTrainResult result;  // history and metrics: train_run's outcome

 private:
  // A LoRA run's layers below the first adapted one stay fixed: without augmentation (which would need
  // them every epoch) their outputs are computed once per image and the epochs train the rest on them,
  // when the cache fits kPrefixBudget. Says which, or why not. Fills the plan's training part.
  bool cache_prefix(FitPlan& plan, TrainConfig& config, const LoaderOptions& eval_options,
                    std::ostream& log) {
    if (!adapted()) return false;
    const std::vector<ForwardStep> steps = model_->feature_steps();
    const size_t lead = frozen_prefix(*model_, steps);
    if (lead == 0 || lead == steps.size()) return false;
    const std::string span = steps.front().name + " .. " + steps[lead - 1].name;
    if (o_.augment || o_.rotation > 0 || o_.jitter > 0) {
      log << "LoRA: " << span << " stay fixed; with --no-augment (and no rotation or jitter) graft computes "
          << "them once per image and trains the rest on the cache\n";
      return false;
    }
    const std::vector<ForwardStep> prefix(steps.begin(), steps.begin() + static_cast<std::ptrdiff_t>(lead));
    const std::vector<ForwardStep> rest(steps.begin() + static_cast<std::ptrdiff_t>(lead), steps.end());
    int64_t per_image = 0;
    {
      c10::InferenceMode inference;
      model_->eval();
      per_image = run_steps(prefix, torch::zeros({1, 3, pre_.size, pre_.size})).numel();
    }
    const size_t images = data_.train->size() + (data_.val ? data_.val->size() : 0);
    const double bytes = static_cast<double>(per_image) * 4.0 * static_cast<double>(images);
    constexpr double kPrefixBudget = 1024.0 * 1024.0 * 1024.0;  // bytes of cached activations
    if (bytes > kPrefixBudget) {
      log << "LoRA: " << span << " stay fixed but are not cached: " << images << " images x "
          << per_image * 4 / 1024 << " KB = " << static_cast<int64_t>(bytes / (1024.0 * 1024.0))
          << " MB, over graft's " << static_cast<int64_t>(kPrefixBudget / (1024.0 * 1024.0))
          << " MB for it\n";
      return false;
    }
    const auto start = std::chrono::steady_clock::now();
    Backbone model = model_;
    const auto prefix_fn = [prefix](const torch::Tensor& x) { return run_steps(prefix, x); };
    DataLoader train_once(data_.train, eval_options);
    Autocast autocast(config.precision, config.device);
    FeatureSet train = map_batches(train_once, prefix_fn, config.device, log, "frozen prefix (train)", "img");
    train_features_ = std::make_unique<TensorBatchSource>(train.features, train.labels, o_.batch_size, true);
    if (data_.val) {
      DataLoader val_once(data_.val, eval_options);
      FeatureSet val = map_batches(val_once, prefix_fn, config.device, log, "frozen prefix (val)", "img");
      val_features_ = std::make_unique<TensorBatchSource>(val.features, val.labels, o_.batch_size, false);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<int64_t> shape = train.features.sizes().vec();
    shape.erase(shape.begin());
    log << "frozen prefix cache: " << span << " computed once per image (" << train.features.size(0) << " x "
        << shape_str(shape) << ") in " << format_duration(seconds) << "; epochs run " << rest.front().name
        << " onwards\n";
    result.feature_cache_seconds = seconds;
    plan.trained = model;
    plan.trained_forward = [model, rest](const torch::Tensor& x) {
      return model->forward_head(run_steps(rest, x));
    };
    plan.train = train_features_.get();
    plan.val = val_features_.get();
    plan.model_sample_unit = "img";
    return true;
  }

  bool adapted() const { return !o_.lora.empty() || !o_.adapter.empty(); }  // --lora or --adapter
  bool feature_extract() const { return o_.strategy == "feature-extract"; }
  bool two_stage() const { return o_.strategy == "two-stage"; }
  std::string stage2_freeze() const { return o_.freeze.empty() ? "none" : o_.freeze; }

  ImageTrainOptions o_;
  std::optional<LoadedRun> previous_;  // --init-from
  Backbone model_{nullptr};
  std::string base_;  // the weights file the backbone started from ("" random)
  bool base_pretrained_ = false;
  Preprocessing pre_;
  ImageData data_;
  std::string head_;
  std::unique_ptr<DataLoader> train_loader_, val_loader_;
  std::unique_ptr<LoaderBatchSource> train_images_, val_images_;
  std::unique_ptr<TensorBatchSource> train_features_, val_features_;
};

}  // namespace

ImageTrainResult train_image_classifier(const ImageTrainOptions& options, std::ostream& log) {
  return train_with<ImageRecipe>(options, log);
}

namespace {

// An image run for its uses.
class ImageRun : public Run {
 public:
  explicit ImageRun(LoadedRun run)
      : Run(run.dir, "image-classify", run.spec.classes),
        model_(run.model),
        transform_(transform_for(run.spec.preprocessing, false)) {}

  std::string unit() const override { return "images"; }

  Metrics evaluate(const std::string& data, const UseOptions& options, std::ostream& log) override {
    DataLoader loader(open_eval_data(data, classes(), transform_, options.limit),
                      use_loader_options(options.batch_size));
    LoaderBatchSource source(loader);
    TrainConfig config;
    config.device = options.device;
    config.log = &log;
    Backbone model = model_;
    Trainer evaluator(
        model, [model](const torch::Tensor& x) { return model->forward(x); }, config);
    Metrics metrics = evaluator.evaluate(source, "eval");
    model_->to(torch::kCPU);
    return metrics;
  }

  std::vector<Prediction> predict(const std::vector<std::string>& paths, int64_t top_k,
                                  torch::Device device) override {
    c10::InferenceMode inference;
    BatchNormFolding folding;
    model_->eval();
    model_->to(device);
    std::mt19937_64 rng(0);
    std::vector<Prediction> out;
    for (const auto& path : paths) {
      torch::Tensor image;
      try {
        image = load_and_transform(path, transform_, rng).unsqueeze(0).to(device);
      } catch (const Error& e) {
        out.push_back({path, {}, naming(path, e.what())});
        continue;
      }
      torch::Tensor probs = torch::softmax(model_->forward(image), 1, torch::kFloat)[0].to(torch::kCPU);
      const int64_t k = std::min<int64_t>(std::max<int64_t>(top_k, 1), probs.size(0));
      out.push_back({path, top_labels(probs, k, classes()), ""});
    }
    model_->to(torch::kCPU);
    return out;
  }

  FeatureSet features(const std::string& data, const UseOptions& options, std::ostream& log) override {
    return part_features(*model_, open_feature_parts(data, classes(), transform_, options.limit),
                         options.batch_size, options.device, log);
  }

  torch::nn::Module& model() override { return *model_; }

 private:
  Backbone model_;
  TransformConfig transform_;
};

}  // namespace

FeatureSet model_features(BackboneImpl& model, const std::string& data, const UseOptions& options,
                          std::ostream& log) {
  const TransformConfig transform = transform_for(Preprocessing::from_cfg(model.default_cfg()), false);
  return part_features(model, open_feature_parts(data, {}, transform, options.limit), options.batch_size,
                       options.device, log);
}

TaskEntry image_task_entry() {
  TaskEntry entry;
  entry.name = "image-classify";
  using Files = std::vector<std::string>;
  entry.train = train_from_values(
      ImageTrainOptions{}, train_image_classifier, [](const ImageTrainOptions& o) { return Files{o.data}; },
      [](const ImageTrainOptions& o) {
        return Files{o.weights, o.init_from, o.adapter};
      });
  entry.open = [](const std::string& dir) -> std::unique_ptr<Run> {
    return std::make_unique<ImageRun>(load_run(dir));
  };
  return entry;
}

}  // namespace graft
