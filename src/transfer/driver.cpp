// The shared training steps of every task (driver.h).
#include "transfer/driver.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>

#include "graft/errors.h"
#include "graft/files.h"
#include "graft/lora.h"
#include "graft/model.h"
#include "graft/progress.h"
#include "graft/registry.h"
#include "graft/run_document.h"
#include "graft/sha256.h"
#include "graft/strings.h"
#include "graft/summary.h"
#include "graft/transfer.h"
#include "graft/weights.h"
#include "layers/conv_bn.h"

namespace graft {

namespace fs = std::filesystem;
using nlohmann::json;

void check_start_choice(const std::string& weights, const std::string& init_from, bool random_init) {
  if (!weights.empty() && !init_from.empty()) throw Error("give --weights or --init-from, not both");
  if (random_init && !weights.empty()) throw Error("give --weights or --random-init, not both");
  if (random_init && !init_from.empty()) throw Error("give --init-from or --random-init, not both");
}

StartChoice start_choice(const RunBasics& basics) {
  StartChoice start;
  start.model = basics.model;
  if (!basics.init_from.empty()) {
    start.kind = StartChoice::Kind::kRun;
    start.source = basics.init_from;
  } else if (!basics.weights.empty()) {
    start.kind = StartChoice::Kind::kFile;
    start.source = basics.weights;
  } else if (!basics.model.empty() && !ModelName::parse(basics.model).tag.empty()) {
    start.kind = basics.random_init ? StartChoice::Kind::kRandom : StartChoice::Kind::kPretrained;
    start.asked_random = basics.random_init;
  }
  return start;
}

std::string load_start_weights(BackboneImpl& model, const StartChoice& start, bool verbose,
                               std::ostream& log) {
  WeightsOptions skip_head;
  skip_head.skip_classifier = true;  // replaced by the run's head
  constexpr size_t kListed = 5;      // names of each kind in a misfit's message, without --verbose
  skip_head.listed = verbose ? SIZE_MAX : kListed;
  skip_head.hint = "--weights must hold " + model.arch() + "'s tensors under its names (`graft summary " +
                   model.arch() + "` lists them)" + (verbose ? "" : "; --verbose lists every name");
  switch (start.kind) {
    case StartChoice::Kind::kFile: {
      const LoadReport report = load_weights(model, start.source, skip_head);
      log << "weights: " << report.loaded.size() << " backbone tensors from " << start.source
          << " (its classifier is replaced)\n";
      return start.source;
    }
    case StartChoice::Kind::kPretrained: {
      const std::string source = pretrained_weights_file(model);
      const LoadReport report = load_weights(model, source, skip_head);
      log << "weights: " << report.loaded.size() << " backbone tensors from " << source << ", " << start.model
          << "'s pretrained weights (its classifier is replaced)\n";
      return source;
    }
    case StartChoice::Kind::kRandom:
      if (start.asked_random)
        log << "random initialisation, as --random-init asks: " << start.model
            << "'s architecture and preprocessing without its pretrained weights\n";
      else
        log << "random initialisation: " << start.model
            << " names no pretrained weights (a tag does; see `graft models " << model.arch() << "`)\n";
      return "";
    case StartChoice::Kind::kRun:
      throw Error("load_start_weights: a run's weights are its task's to load (" + start.source + ")");
  }
  return "";
}

namespace {

// The SHA-256 of a base's weights: the file's; for a sharded checkpoint's index, the SHA-256 of the index's
// and every shard's digests, so that a changed shard is seen as a changed base. With the bytes read.
std::pair<std::string, int64_t> weights_digest(const std::string& file) {
  if (!is_safetensors_index(file)) return {sha256_file(file), static_cast<int64_t>(fs::file_size(file))};
  std::string digests = sha256_file(file);
  int64_t bytes = static_cast<int64_t>(fs::file_size(file));
  for (const std::string& shard : SafeTensorsSet(file).files()) {
    digests += sha256_file(shard);
    bytes += static_cast<int64_t>(fs::file_size(shard));
  }
  return {sha256_hex(digests), bytes};
}

}  // namespace

json lora_run_json(const LoraPlace& place, int64_t adapted_layers, int64_t trainable, int64_t total) {
  const std::string file = place.base_file.empty() ? place.base : place.base_file;
  const auto [digest, bytes] = weights_digest(file);
  json base = {{"path", fs::absolute(place.base).lexically_normal().string()},
               {"file", fs::absolute(file).lexically_normal().string()},
               {"sha256", digest},
               {"bytes", bytes},
               {"pretrained", place.pretrained}};
  return {{"adapter_config", "adapter_config.json"},
          {"adapter", "adapter_model.safetensors"},
          {"base", base},
          {"adapted_layers", adapted_layers},
          {"trainable", trainable},
          {"total", total}};
}

std::string adapter_flag(const std::string& lora, const std::string& adapter) {
  return !lora.empty() ? "--lora" : !adapter.empty() ? "--adapter" : "";
}

bool is_lora_run(const RunDocument& doc) {
  return doc.doc.contains("lora") && doc.doc.at("lora").is_object();
}

std::string checked_lora_base(const RunDocument& doc, const std::function<std::string()>& pretrained_file) {
  const json& lora = doc.doc.at("lora");
  const auto field = [&](const char* key) {
    if (!lora.contains("base") || !lora.at("base").is_object() || !lora.at("base").contains(key) ||
        !lora.at("base").at(key).is_string())
      throw FormatError(doc.file, std::string("lora.base.") + key + ": expected a string");
    return lora.at("base").at(key).get<std::string>();
  };
  const bool pretrained = lora.contains("base") && lora.at("base").value("pretrained", false);
  std::string path = field("path"), file = field("file");
  const std::string expected = field("sha256");
  if (pretrained) path = file = pretrained_file();  // the tag's weights, wherever this machine keeps them
  if (!fs::exists(file))
    throw Error(doc.file + ": the LoRA adapter's base weights " + file +
                " are not there; put them back (the adapter holds only what training changed), or train "
                "again from weights that are");
  const std::string actual = weights_digest(file).first;
  if (actual != expected)
    throw Error(doc.file + ": the LoRA adapter's base " + file + " has changed since training (SHA-256 " +
                actual + ", expected " + expected +
                "); the adapter only fits the weights it was trained on: put those back, or train again");
  return path;
}

TrainConfig run_train_config(const TrainConfig& options, const std::string& out,
                             const std::vector<std::string>& classes, const std::string& sample_unit,
                             std::ostream& log) {
  if (classes.size() > size_t(kMaxClasses))
    throw Error("the data has " + std::to_string(classes.size()) + " classes, more than graft's limit of " +
                std::to_string(kMaxClasses) + " (is the label column the right one?)");
  TrainConfig config = options;
  config.out_dir = out;
  config.class_names = classes;
  config.sample_unit = sample_unit;
  config.log = &log;
  return config;
}

void log_resolved(const nlohmann::json& resolved, std::ostream& log) {
  log << "graft train: resolved configuration\n" << resolved.dump(2) << "\n";
}

FitOutcome fit_and_check(const FitPlan& plan, const TrainConfig& config, std::ostream& log) {
  FitOutcome outcome;
  {
    Trainer trainer(plan.trained, plan.trained_forward, config);
    outcome.history = trainer.fit(*plan.train, plan.val);
    if (config.early_stopping.keep == "last") {
      const TrainHistory& h = outcome.history;
      const int64_t last = h.epochs.empty() ? 0 : h.epochs.back().epoch;
      log << "the saved model is the last epoch's (" << last << "), as --keep last asks";
      if (h.best_epoch > 0 && h.best_epoch != last)
        log << "; the best by " << config.early_stopping.monitor << " was epoch " << h.best_epoch;
      log << "\n";
    } else {
      trainer.restore_best();
    }
  }
  plan.model->to(torch::kCPU);
  plan.model->eval();
  BatchSource* val = plan.model_val ? plan.model_val : plan.val;
  if (!val) return outcome;
  // The saved model, checked the way predict runs it.
  TrainConfig eval_config;
  eval_config.device = config.device;
  eval_config.progress = config.progress;
  eval_config.log = &log;
  eval_config.objective = config.objective;
  eval_config.sample_unit = plan.model_sample_unit.empty() ? config.sample_unit : plan.model_sample_unit;
  Trainer evaluator(plan.model, plan.model_forward, eval_config);
  outcome.val_metrics = evaluator.evaluate(*val, "val");
  plan.model->to(torch::kCPU);
  write_val_report(config.out_dir, *outcome.val_metrics, config.class_names, log);
  return outcome;
}

namespace {

// --lora's configuration, checked before anything is read; what does not go with it is refused by name.
// --adapter's is its adapter_config.json, read once the model is built.
std::optional<LoraConfig> lora_options(const RunBasics& basics) {
  const std::string flag = adapter_flag(basics.lora, basics.adapter);
  if (!basics.lora.empty() && !basics.adapter.empty())
    throw Error("give --lora (a new adapter) or --adapter (one to train further), not both");
  if (basics.lora.empty() && basics.adapter.empty()) return std::nullopt;
  if (!basics.init_from.empty())
    throw Error(flag +
                " with --init-from: an adapter goes with the weights it was trained on, and graft "
                "adapts a model tag's pretrained weights or --weights; start from one of those");
  if (!basics.adapter.empty()) {
    if (!fs::is_regular_file(fs::path(basics.adapter) / "adapter_config.json"))
      throw Error("--adapter " + basics.adapter +
                  ": no adapter_config.json there (expected a PEFT adapter folder)");
    return LoraConfig{};  // read from the folder in continue_adapter
  }
  try {
    return LoraConfig::parse(basics.lora);
  } catch (const Error& e) {
    const std::string message = e.what();
    throw Error(message.rfind("--lora", 0) == 0 ? message : "--lora " + basics.lora + ": " + message);
  }
}

int64_t trainable_count(torch::nn::Module& model) {
  return count_parameters(model, "", /*trainable_only=*/true);
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

// The adapter's layers and how much trains, for the log.
void log_adapter(const LoraPlace& place, const LoraConfig& config, const LoraReport& report,
                 std::ostream& log) {
  constexpr size_t kNamed = 4;  // layers named in the log line
  std::string named;
  for (size_t i = 0; i < report.adapted.size() && i < kNamed; ++i)
    named += (i ? ", " : "") + report.adapted[i];
  if (report.adapted.size() > kNamed) named += ", ...";
  char share[32];
  std::snprintf(share, sizeof share, "%.2f%%",
                100.0 * static_cast<double>(report.trainable) /
                    static_cast<double>(std::max<int64_t>(report.total, 1)));
  log << "LoRA r=" << config.r << " alpha=" << config.alpha << " (scaling " << config.scaling() << ") on "
      << report.adapted.size() << " layers (" << named << ")"
      << (place.whole.empty() ? "" : ", trained whole: " + joined(place.whole)) << "; "
      << format_count(report.trainable) << " trainable of " << format_count(report.total) << ", " << share
      << "\n";
}

// --lora: a new adapter where the task says.
void adapt(const LoraPlace& place, LoraConfig& config, const std::string& task, std::ostream& log) {
  if (!place.model) throw Error("--lora does not apply to " + task + " runs");
  config.modules_to_save = place.whole;
  config.task_type = place.task_type;
  config.base_model_name_or_path = place.base;
  config.fan_in_fan_out = place.fan_in_fan_out;
  LoraReport report;
  try {
    report = apply_lora(*place.model, config);
  } catch (const Error& e) {
    throw Error(std::string("--lora: ") + e.what());
  }
  log_adapter(place, config, report, log);
}

// --adapter: an adapter folder's configuration and weights where the task says (refused by name when its
// tensors do not fit the model); the task's new head trains whole beside it whether the adapter held it
// or not. Returns the configuration the run saves.
LoraConfig continue_adapter(const LoraPlace& place, const std::string& dir, const std::string& task,
                            std::ostream& log) {
  if (!place.model) throw Error("--adapter does not apply to " + task + " runs");
  LoraConfig config;
  try {
    config = load_lora_adapter(*place.model, dir);
  } catch (const Error& e) {
    throw Error("--adapter " + dir + ": " + e.what());
  }
  for (const auto& head : place.whole)
    if (std::find(config.modules_to_save.begin(), config.modules_to_save.end(), head) ==
        config.modules_to_save.end())
      config.modules_to_save.push_back(head);
  if (config.task_type.empty()) config.task_type = place.task_type;
  config.base_model_name_or_path = place.base;
  LoraReport report;
  for (auto& item : place.model->named_parameters()) {
    for (const auto& head : place.whole)
      if (is_dotted_prefix(item.key(), head)) item.value().set_requires_grad(true);
    report.total += item.value().numel();
    if (item.value().requires_grad()) report.trainable += item.value().numel();
  }
  report.adapted = lora_layers(*place.model);
  log << "adapter " << dir << " trained further: ";
  log_adapter(place, config, report, log);
  return config;
}

}  // namespace

FitOutcome train_run(TrainRecipe& recipe, std::ostream& log) {
  const RunBasics given = recipe.basics();
  check_train_values(recipe.options(), given.task, "");  // every option, before anything is read
  if (given.data.empty()) throw Error("--data is required");
  if (given.out.empty()) throw Error("--out: a run directory is required");
  check_start_choice(given.weights, given.init_from, given.random_init);
  std::optional<LoraConfig> lora = lora_options(given);
  recipe.resolve(log);
  const RunBasics basics = recipe.basics();
  log_resolved(recipe.options(), log);
  const StartChoice start = start_choice(basics);
  if (lora && start.kind == StartChoice::Kind::kRandom)
    throw Error(adapter_flag(given.lora, given.adapter) + " adapts pretrained weights, and " +
                std::string(start.asked_random ? "--random-init asks for random ones"
                                               : "this run starts from random weights") +
                ": give --weights, or a model tag with pretrained weights");

  // The new head (and a model trained from scratch) draws from torch's generator: seeded first, so that a
  // run repeats exactly.
  torch::manual_seed(basics.train->seed);
  const std::vector<std::string> classes = recipe.open_data(log);
  recipe.build_model(start, log);

  const FreezeStep freeze = recipe.freeze_step();
  LoraPlace place;
  if (lora) {
    place = recipe.lora_place();
    if (basics.adapter.empty())
      adapt(place, *lora, basics.task, log);
    else
      lora = continue_adapter(place, basics.adapter, basics.task, log);
  } else if (!freeze.spec.empty()) {
    const FreezeReport report = freeze.backbone ? apply_freeze(*freeze.backbone, freeze.spec)
                                                : apply_freeze(*freeze.module, freeze.spec, freeze.keep);
    log << "freeze '" << freeze.named << "': " << report.frozen_parameters << " tensors frozen, "
        << report.trainable_parameters << " trainable\n";
  }

  TrainConfig config = run_train_config(*basics.train, basics.out, classes, basics.sample_unit, log);
  config.objective = basics.objective;
  config.param_groups = lora ? std::vector<ParamGroup>{} : recipe.param_groups();  // LoRA: one group
  fs::create_directories(basics.out);
  const FitPlan plan = recipe.plan(config, log);
  FitOutcome outcome = fit_and_check(plan, config, log);

  RunFiles files = recipe.run_files(outcome, log);
  json doc =
      new_run_document(basics.task, classes, lora ? "lora" : freeze.saved, basics.data, recipe.options());
  doc.update(files.fields);
  files.metadata["format"] = "pt";
  files.metadata["producer"] = "graft " GRAFT_VERSION;
  std::string weights_name = "model.safetensors";
  if (lora) {
    // PEFT's two files in place of the model's weights, and graft.json naming the base they go with.
    files.weights = lora_adapter_tensors(*place.model, *lora);
    write_file_atomic((fs::path(basics.out) / "adapter_config.json").string(),
                      lora->to_json().dump(2) + "\n");
    doc["lora"] = lora_run_json(place, static_cast<int64_t>(lora_layers(*place.model).size()),
                                trainable_count(*place.model), count_parameters(*place.model));
    weights_name = "adapter_model.safetensors";
    const size_t at = files.listing.find("model.safetensors");
    if (at != std::string::npos)
      files.listing.replace(at, std::string("model.safetensors").size(),
                            "adapter_config.json, adapter_model.safetensors (LoRA; base " + place.base + ")");
  }
  write_run_files(basics.out, files.weights, files.metadata, std::move(doc), weights_name);
  if (!files.note.empty()) log << files.note << "\n";
  const bool validated = (plan.model_val ? plan.model_val : plan.val) != nullptr;
  log_run_directory(basics.out, files.listing, validated, basics.objective == "classify", log);
  return outcome;
}

RunLoaders run_loaders(int64_t batch_size, int workers, uint64_t seed) {
  RunLoaders loaders;
  loaders.train.batch_size = batch_size;
  loaders.train.workers = workers;
  loaders.train.seed = seed;
  loaders.eval = loaders.train;
  loaders.eval.shuffle = false;
  return loaders;
}

LoaderOptions use_loader_options(int64_t batch_size) {
  if (batch_size <= 0) throw Error("--batch-size must be positive, got " + std::to_string(batch_size));
  LoaderOptions options;
  options.batch_size = batch_size;
  options.shuffle = false;
  return options;
}

FeatureSet map_batches(DataLoader& loader, const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                       torch::Device device, std::ostream& log, const std::string& label,
                       const std::string& unit) {
  std::optional<c10::InferenceMode> inference(std::in_place);
  BatchNormFolding folding;
  std::vector<torch::Tensor> outputs, labels;
  FeatureSet set;
  loader.start_epoch(0);
  ProgressBar bar(label, static_cast<int64_t>(loader.num_batches()), log, unit);
  int64_t done = 0, samples = 0;
  while (auto batch = loader.next()) {
    // Float32 whatever the precision the caller's autocast computed in: what the cache and files hold.
    outputs.push_back(fn(batch->images.to(device)).to(torch::kCPU, torch::kFloat));
    labels.push_back(batch->labels);
    set.ids.insert(set.ids.end(), batch->ids.begin(), batch->ids.end());
    samples += batch->labels.size(0);
    bar.update(++done, samples, std::nan(""), 0.0);
  }
  bar.finish(label + ": " + std::to_string(samples) + " " + (unit == "img" ? "images" : unit + "s"));
  if (outputs.empty()) throw Error(label + ": no " + (unit == "img" ? "image" : unit) + " could be read");
  // Copied out of inference mode: inference tensors cannot be saved for a backward pass (a cached
  // feature trains the head).
  inference.reset();
  set.features = torch::cat(outputs).clone();
  set.labels = torch::cat(labels).clone();
  return set;
}

std::vector<std::pair<std::string, double>> top_labels(const torch::Tensor& probs, int64_t k,
                                                       const std::vector<std::string>& classes) {
  const auto [values, indices] = probs.topk(k);
  std::vector<std::pair<std::string, double>> top;
  for (int64_t i = 0; i < k; ++i)
    top.emplace_back(classes.at(static_cast<size_t>(indices[i].item<int64_t>())), values[i].item<double>());
  return top;
}

std::string naming(const std::string& input, const std::string& message) {
  return message.find(input) != std::string::npos ? message : input + ": " + message;
}

void log_skipped(const std::vector<std::string>& skipped, std::ostream& log) {
  constexpr size_t kShown = 10;
  for (size_t i = 0; i < skipped.size() && i < kShown; ++i) log << "graft: warning: " << skipped[i] << "\n";
  if (skipped.size() > kShown)
    log << "graft: warning: ... and " << skipped.size() - kShown << " more skipped\n";
}

void log_run_directory(const std::string& out, const std::string& files, bool validated, bool classify,
                       std::ostream& log) {
  log << "run directory: " << out << " (" << files << ", metrics.csv, training_curves.svg"
      << (validated && classify ? ", confusion_matrix.svg" : "") << (validated ? ", val_report.txt" : "")
      << ")\n";
}

}  // namespace graft
