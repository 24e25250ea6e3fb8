// The one table of `graft train`'s options (train_options.h) and the fields of each task's option struct,
// listed once per struct (visit_fields) for printing, saving and applying them.
#include "graft/train_options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/run_document.h"  // kMaxSequenceLength
#include "graft/runtime.h"

namespace graft {

namespace {

using nlohmann::json;
using T = OptionType;

constexpr unsigned kImage = kImageTask, kVideo = kVideoTask, kVision = kImageTask | kVideoTask;
constexpr unsigned kClassify = kImageTask | kVideoTask | kTextClassifyTask, kAll = kEveryTask;
constexpr double kLength = static_cast<double>(kMaxSequenceLength);

// Sizes whose 0 stands for the model's own (its input size, its positions); other values have a range.
bool zero_is_the_models(const std::string& key) {
  return key == "image_size" || key == "max_length" || key == "block_size";
}

// The rows, in the order --help lists them.
std::vector<OptionSpec> make_table() {
  return {
      {"task",
       T::kText,
       kAll,
       "what to train",
       -1,
       -1,
       "",
       {"image-classify", "video-classify", "text-classify", "causal-lm"}},
      {"model", T::kText, kAll,
       "architecture or ARCH.TAG, e.g. mobilenet_v2; text: bert, gpt2, llama, qwen2 (a check)"},
      {"weights", T::kText, kAll,
       "pretrained weights (safetensors, reference names); text: a Hugging Face folder or run dir; or a Hub "
       "repository ORG/NAME[@REV]"},
      {"random_init", T::kSwitch, kVision,
       "start a tag's architecture from random weights instead of its pretrained ones (a bare ARCH is random "
       "anyway)"},
      {"verbose", T::kSwitch, kVision, "weights that do not fit: list every tensor name, not the first few"},
      {"init_from", T::kText, kAll,
       "start from the model of an earlier run directory (its weights; a new last layer when classes "
       "differ)"},
      {"data", T::kText, kAll,
       "image folder (DATA/<class>/*.jpg, or DATA/train + DATA/val) or IDX files; clips: "
       "DATA/<class>/<clip>; "
       "text: csv, tsv, jsonl or txt files"},
      {"out", T::kText, kAll, "run directory to write"},
      {"head", T::kText, kImage, "head spec, e.g. avg,dropout:0.2,dense:512:relu (dense:C appended)"},
      {"strategy",
       T::kText,
       kImage,
       "how the backbone trains",
       -1,
       -1,
       "",
       {"feature-extract", "fine-tune", "two-stage"}},
      {"freeze", T::kText, kAll,
       "what stays fixed: all, none, last:N, until:NAME, globs; video: backbone, backbone,temporal"},
      {"lora", T::kText, kAll,
       "LoRA adapter instead of freezing: r=16,alpha=16,dropout=0.1,targets=query,value (rslora, "
       "init=gaussian, bias=none|all|lora_only; targets=re:REGEX or all-linear); the run saves PEFT's files"},
      {"adapter", T::kText, kAll,
       "a LoRA adapter folder (PEFT's files: graft's LoRA run, or one made in Python) to train further on "
       "the base it goes with (--weights or the tag's); the run saves it as --lora does"},
      {"stage1_epochs", T::kInteger, kImage, "two-stage: head-only epochs (0: half)", 0, 1e6},
      {"backbone_lr_mult", T::kNumber, kImage, "backbone learning rate = lr x this", 0, 1e3},
      {"bn_train_frozen", T::kSwitch, kImage, "frozen BatchNorm layers update running statistics"},
      {"val_split", T::kNumber, kAll, "validation fraction when the data has no validation part", 0, 0.99},
      {"validate",
       T::kSwitch,
       kAll,
       "skip validation (no held-out data is evaluated)",
       -1,
       -1,
       "",
       {},
       "--no-val"},
      {"batch_size", T::kInteger, kAll, "samples per batch", 1, 1 << 20},
      {"image_size", T::kInteger, kVision, "input size in pixels (0: the model's)", 16, 4096,
       "0: the model's own size"},
      {"augment",
       T::kSwitch,
       kVision,
       "no random crop and flip on training samples",
       -1,
       -1,
       "",
       {},
       "--no-augment"},
      {"rotation", T::kNumber, kVision, "training: random rotation up to this many degrees", 0, 180},
      {"jitter", T::kNumber, kVision, "training: colour jitter strength", 0, 1},
      {"workers", T::kInteger, kVision, "decoding threads (0: cores)", 0, 256},
      {"limit", T::kInteger, kImage,
       "training images to use, a seeded subset (validation: a quarter); 0: all", 0, 1e9},
      {"frames", T::kInteger, kVideo, "frames sampled per clip", 1, 4096},
      {"temporal", T::kText, kVideo, "over frame features: lstm:H, gru:H (:bi), avg"},
      {"cache_features",
       T::kSwitch,
       kVideo,
       "frozen backbone: run it on every epoch's frames instead of caching (for comparison)",
       -1,
       -1,
       "",
       {},
       "--no-feature-cache"},
      {"model_config", T::kText, kTextTasks, "config.json of a new model trained from scratch"},
      {"tokenizer", T::kText, kTextTasks, "tokenizer file or folder (default: the weights' folder)"},
      {"val_data", T::kText, kTextTasks, "validation data (default: --val-split of --data)"},
      {"format",
       T::kText,
       kTextTasks,
       "data file format",
       -1,
       -1,
       "",
       {"auto", "csv", "tsv", "jsonl", "txt"}},
      {"text_column", T::kText, kTextTasks, "column or JSON key of the text (number without header)"},
      {"text_pair_column", T::kText, kTextClassifyTask, "column of a second text (sentence pairs)"},
      {"label_column", T::kText, kTextClassifyTask, "column or JSON key of the label"},
      {"header",
       T::kSwitch,
       kTextTasks,
       "csv/tsv: the first row is data; columns by number",
       -1,
       -1,
       "",
       {},
       "--no-header"},
      {"max_length", T::kInteger, kTextClassifyTask,
       "tokens per example, longer ones truncated (0: the model's positions, at most 128)", 2, kLength,
       "[CLS] and [SEP], at least; 0: the model's positions"},
      {"block_size", T::kInteger, kCausalLmTask,
       "tokens per training block (0: the model's positions, at most 128)", 2, kLength,
       "a token and the next one to predict, at least; 0: the model's positions"},
      {"line_by_line", T::kSwitch, kCausalLmTask, "one example per line, not packed blocks"},
      {"warmup_ratio", T::kNumber, kTextTasks, "warm-up steps as a fraction of all steps", 0, 1},
      {"epochs", T::kInteger, kAll, "epochs", 1, 1e6},
      {"optimizer", T::kText, kAll, "optimiser", -1, -1, "", {"sgd", "adam", "adamw"}},
      {"lr", T::kNumber, kAll, "learning rate (of the head, when the backbone has a multiplier)", 1e-12, 1e3,
       "a rate of 0 trains nothing"},
      {"momentum", T::kNumber, kAll, "sgd momentum", 0, 1},
      {"weight_decay", T::kNumber, kAll, "weight decay (default: the optimiser's)", 0, 1e3},
      {"schedule",
       T::kText,
       kAll,
       "learning-rate schedule",
       -1,
       -1,
       "",
       {"constant", "step", "cosine", "linear"}},
      {"warmup_steps", T::kInteger, kAll, "linear warm-up steps", 0, 1e9},
      {"step_size", T::kInteger, kAll, "step schedule: epochs per decay", 1, 1e9},
      {"gamma", T::kNumber, kAll, "step schedule: decay factor (any finite factor >= 0)", 0},
      {"label_smoothing", T::kNumber, kClassify, "cross-entropy label smoothing", 0, 1},
      {"class_weights", T::kNumbers, kVision, "cross-entropy class weights, one per class", 0, 1e9},
      {"grad_clip", T::kNumber, kAll, "clip the global gradient norm (0: off)", 0, 1e9},
      {"seed", T::kInteger, kAll, "random seed (runs repeat exactly on CPU)", 0, 9007199254740992.0},
      {"early_stopping", T::kSwitch, kAll, "stop when the monitored metric stalls"},
      {"monitor",
       T::kText,
       kAll,
       "the metric of early stopping and checkpoints/best",
       -1,
       -1,
       "",
       {"val_loss", "val_accuracy", "val_top5", "val_macro_f1", "train_loss", "train_accuracy"}},
      {"patience", T::kInteger, kAll, "early stopping patience (epochs)", 0, 1e6},
      {"min_delta", T::kNumber, kAll, "smallest change that counts", 0, 1e9},
      {"keep",
       T::kText,
       kAll,
       "the weights the run ends with: the best epoch's by --monitor (restored at the end) or the last's",
       -1,
       -1,
       "",
       {"best", "last"}},
      {"resume", T::kSwitch, kAll, "continue the run in --out from its last checkpoint"},
      {"progress",
       T::kSwitch,
       kAll,
       "no progress bars, on a terminal too: a line per epoch (as in a log file)",
       -1,
       -1,
       "",
       {},
       "--quiet"},
      {"device", T::kText, kAll, "auto, cpu or cuda[:N]"},
      {"precision",
       T::kText,
       kAll,
       "fp32; bf16: mixed precision (convolutions and matrix products in bf16, weights float32); auto: bf16 "
       "where the device multiplies it natively",
       -1,
       -1,
       "",
       {"fp32", "bf16", "fp16", "auto"}},
  };
}

// Every field of an option struct, by its key. V is called as v(key, field) for each.
template <class V>
void visit_training(TrainConfig& t, unsigned task, V& v) {
  v("epochs", t.epochs);
  v("optimizer", t.optimizer.name);
  v("lr", t.optimizer.lr);
  v("momentum", t.optimizer.momentum);
  v("weight_decay", t.optimizer.weight_decay);
  v("schedule", t.schedule.name);
  v("warmup_steps", t.schedule.warmup_steps);
  v("step_size", t.schedule.step_size);
  v("gamma", t.schedule.gamma);
  if (task & kClassify) v("label_smoothing", t.label_smoothing);
  if (task & kVision) v("class_weights", t.class_weights);
  v("grad_clip", t.grad_clip);
  v("seed", t.seed);
  v("early_stopping", t.early_stopping.enabled);
  v("monitor", t.early_stopping.monitor);
  v("patience", t.early_stopping.patience);
  v("min_delta", t.early_stopping.min_delta);
  v("keep", t.early_stopping.keep);
  v("resume", t.resume);
  v("progress", t.progress);
  v("device", t.device);
  v("precision", t.precision);
}

// What every task's options hold under the same names.
template <class Options, class V>
void visit_common(Options& o, V& v) {
  v("model", o.model);
  v("weights", o.weights);
  v("init_from", o.init_from);
  v("data", o.data);
  v("out", o.out);
  v("freeze", o.freeze);
  v("lora", o.lora);
  v("adapter", o.adapter);
  v("val_split", o.val_split);
  v("validate", o.validate);
  v("batch_size", o.batch_size);
}

// Images and clips: decoding and augmentation.
template <class Options, class V>
void visit_vision(Options& o, V& v) {
  v("random_init", o.random_init);
  v("verbose", o.verbose);
  v("image_size", o.image_size);
  v("augment", o.augment);
  v("rotation", o.rotation);
  v("jitter", o.jitter);
  v("workers", o.workers);
}

template <class V>
void visit_fields(ImageTrainOptions& o, V& v) {
  std::string task = "image-classify";
  v("task", task);
  visit_common(o, v);
  visit_vision(o, v);
  v("head", o.head);
  v("strategy", o.strategy);
  v("stage1_epochs", o.stage1_epochs);
  v("backbone_lr_mult", o.backbone_lr_mult);
  v("bn_train_frozen", o.bn_train_frozen);
  v("limit", o.limit);
  visit_training(o.train, kImageTask, v);
}

template <class V>
void visit_fields(VideoTrainOptions& o, V& v) {
  std::string task = "video-classify";
  v("task", task);
  visit_common(o, v);
  visit_vision(o, v);
  v("frames", o.frames);
  v("temporal", o.temporal);
  v("cache_features", o.cache_features);
  visit_training(o.train, kVideoTask, v);
}

template <class V>
void visit_fields(TextTrainOptions& o, V& v) {
  const unsigned task = task_mask(o.task);
  v("task", o.task);
  visit_common(o, v);
  v("model_config", o.model_config);
  v("tokenizer", o.tokenizer);
  v("val_data", o.val_data);
  v("format", o.columns.format);
  v("text_column", o.columns.text);
  if (task == kTextClassifyTask) {
    v("text_pair_column", o.columns.text_pair);
    v("label_column", o.columns.label);
    v("max_length", o.max_length);
  }
  v("header", o.columns.header);
  if (task == kCausalLmTask) {
    v("block_size", o.block_size);
    v("line_by_line", o.line_by_line);
  }
  v("warmup_ratio", o.warmup_ratio);
  visit_training(o.train, task, v);
}

// Writes each field as JSON.
struct Writer {
  json out = json::object();
  template <class F>
  void operator()(const char* key, const F& field) {
    out[key] = field;
  }
  void operator()(const char* key, const std::optional<double>& field) {
    out[key] = field ? json(*field) : json(nullptr);
  }
  void operator()(const char* key, const torch::Device& field) { out[key] = field.str(); }
  void operator()(const char* key, const Precision& field) { out[key] = precision_name(field); }
};

// Sets each field given in values (already checked by check_train_values).
struct Reader {
  const json& values;
  template <class F>
  void operator()(const char* key, F& field) {
    const auto it = values.find(key);
    if (it != values.end() && !it->is_null()) it->get_to(field);
  }
  void operator()(const char* key, std::optional<double>& field) {
    const auto it = values.find(key);
    if (it != values.end() && !it->is_null()) field = it->get<double>();
  }
  void operator()(const char* key, torch::Device& field) {
    const auto it = values.find(key);
    if (it != values.end() && !it->is_null()) field = parse_device(it->get<std::string>());
  }
  // auto becomes what this machine's device resolves it to, which the run then records; the warnings of
  // resolve_precision are said by graft train (cmd_train.cpp) before any data is read.
  void operator()(const char* key, Precision& field) {
    const auto it = values.find(key);
    if (it == values.end() || it->is_null()) return;
    const auto device = values.find("device");
    std::ostringstream quiet;
    field = resolve_precision(
        it->get<std::string>(),
        parse_device(device != values.end() && !device->is_null() ? device->get<std::string>()
                                                                  : std::string("cpu")),
        quiet);
  }
};

template <class Options>
json write(const Options& options) {
  Options copy = options;
  Writer writer;
  visit_fields(copy, writer);
  return std::move(writer.out);
}

template <class Options>
void read(Options& options, const json& values) {
  Reader reader{values};
  visit_fields(options, reader);
}

std::string value_text(double value) {
  json j = value;
  if (value == std::floor(value) && std::fabs(value) < 1e15) j = static_cast<int64_t>(value);
  return j.dump();
}

}  // namespace

const std::vector<OptionSpec>& train_option_table() {
  static const std::vector<OptionSpec> table = make_table();
  return table;
}

const OptionSpec* find_train_option(const std::string& key) {
  for (const OptionSpec& spec : train_option_table())
    if (key == spec.key) return &spec;
  return nullptr;
}

std::string option_flag(const OptionSpec& spec) {
  if (spec.flag[0] != '\0') return spec.flag;
  std::string flag = std::string("--") + spec.key;
  for (char& c : flag)
    if (c == '_') c = '-';
  return flag;
}

unsigned task_mask(const std::string& task) {
  if (task == "image-classify") return kImageTask;
  if (task == "video-classify") return kVideoTask;
  if (task == "text-classify") return kTextClassifyTask;
  if (task == "causal-lm") return kCausalLmTask;
  throw Error("--task " + task + ": expected image-classify, text-classify, causal-lm or video-classify");
}

std::string task_names(unsigned mask) {
  std::vector<std::string> names;
  for (const char* task : {"image-classify", "video-classify", "text-classify", "causal-lm"})
    if (mask & task_mask(task)) names.push_back(task);
  std::string out;
  for (size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " and " : ", ") + names[i];
  return out;
}

json parse_option_text(const OptionSpec& spec, const std::string& text) {
  const std::string flag = option_flag(spec);
  auto number = [&](const std::string& word, bool integer) -> json {
    const char* begin = word.c_str();
    char* end = nullptr;
    errno = 0;
    if (integer) {
      const long long value = std::strtoll(begin, &end, 10);
      if (!word.empty() && *end == '\0' && errno == 0) return value;
    } else {
      const double value = std::strtod(begin, &end);  // a finite one: "nan" and "inf" are not numbers here
      if (!word.empty() && *end == '\0' && errno == 0 && std::isfinite(value)) return value;
    }
    throw Error(flag + " " + word + ": expected " + (integer ? "an integer" : "a number"));
  };
  switch (spec.type) {
    case T::kText:
      return text;
    case T::kInteger:
      return number(text, true);
    case T::kNumber:
      return number(text, false);
    case T::kSwitch:
      // A flag that sets false (--no-val) stands for false; any other for true.
      return spec.flag[0] == '\0';
    case T::kNumbers: {
      json list = json::array();
      size_t start = 0;
      while (start <= text.size()) {
        const size_t comma = std::min(text.find(',', start), text.size());
        list.push_back(number(text.substr(start, comma - start), false));
        start = comma + 1;
      }
      return list;
    }
  }
  return nullptr;
}

void check_train_values(const json& values, const std::string& task, const std::string& source) {
  if (!values.is_object())
    throw FormatError(source, "is " + json_excerpt(values), "expected a JSON object of training options");
  const unsigned mask = task_mask(task);
  const std::string where = source.empty() ? "" : " (in " + source + ")";
  for (const auto& [key, value] : values.items()) {
    const OptionSpec* spec = find_train_option(key);
    if (!spec) {
      std::string keys;
      for (const OptionSpec& row : train_option_table())
        keys += (keys.empty() ? "" : ", ") + std::string(row.key);
      throw Error("unknown option '" + key + "'" + where + "; known options: " + keys);
    }
    const std::string flag = option_flag(*spec);
    if (!(spec->tasks & mask))
      throw Error(flag + where + " does not apply to --task " + task + "; it is an option of " +
                  task_names(spec->tasks));
    if (value.is_null() && key == "weight_decay") continue;  // null: the optimiser's default
    if (value.is_number_integer() && value.get<int64_t>() == 0 && zero_is_the_models(key)) continue;
    auto expect = [&](bool ok, const char* what) {
      if (!ok) throw Error(flag + where + " is " + json_excerpt(value) + ": expected " + what);
    };
    auto in_range = [&](const json& number_value) {
      const double number = number_value.get<double>();
      if (!(number >= spec->min && number <= spec->max))
        throw Error(flag +
                    (std::isinf(spec->max)
                         ? " must be at least " + value_text(spec->min)
                         : " must lie in " + value_text(spec->min) + ".." + value_text(spec->max)) +
                    (spec->why[0] ? std::string(" (") + spec->why + ")" : std::string()) + ", got " +
                    json_excerpt(number_value) + where);
    };
    switch (spec->type) {
      case T::kText:
        expect(value.is_string(), "a string");
        if (!spec->choices.empty() && std::find(spec->choices.begin(), spec->choices.end(),
                                                value.get<std::string>()) == spec->choices.end()) {
          std::string choices;
          for (size_t i = 0; i < spec->choices.size(); ++i)
            choices += (i == 0 ? "" : i + 1 == spec->choices.size() ? " or " : ", ") + spec->choices[i];
          throw Error(flag + " " + value.get<std::string>() + where + ": expected " + choices);
        }
        break;
      case T::kInteger:
        expect(value.is_number_integer(), "an integer");
        in_range(value);
        break;
      case T::kNumber:
        expect(value.is_number() && std::isfinite(value.get<double>()), "a finite number");
        in_range(value);
        break;
      case T::kSwitch:
        expect(value.is_boolean(), "true or false");
        break;
      case T::kNumbers:
        expect(value.is_array(), "a list of numbers");
        for (const json& item : value) {
          expect(item.is_number() && std::isfinite(item.get<double>()), "a list of finite numbers");
          in_range(item);
        }
        break;
    }
  }
  if (values.contains("task") && values.at("task") != task)
    throw Error("--task " + task + " but" + where + " task is " + json_excerpt(values.at("task")));
}

void apply_train_values(ImageTrainOptions& options, const json& values) {
  read(options, values);
}
void apply_train_values(VideoTrainOptions& options, const json& values) {
  read(options, values);
}
void apply_train_values(TextTrainOptions& options, const json& values) {
  read(options, values);
}

json to_json(const ImageTrainOptions& options) {
  return write(options);
}
json to_json(const VideoTrainOptions& options) {
  return write(options);
}
json to_json(const TextTrainOptions& options) {
  return write(options);
}

std::string option_default_text(const OptionSpec& spec) {
  // Each task's default, from its options struct; shown once when they agree.
  std::vector<std::pair<std::string, json>> defaults;
  auto add = [&](const char* task, const json& resolved) {
    if ((spec.tasks & task_mask(task)) && resolved.contains(spec.key))
      defaults.emplace_back(task, resolved.at(spec.key));
  };
  add("image-classify", to_json(ImageTrainOptions{}));
  add("video-classify", to_json(VideoTrainOptions{}));
  TextTrainOptions text;
  add("text-classify", to_json(text));
  text.task = "causal-lm";
  add("causal-lm", to_json(text));
  if (defaults.empty()) return "";
  auto shown = [](const json& value) { return value.is_string() ? value.get<std::string>() : value.dump(); };
  bool same = true;
  for (const auto& item : defaults) same = same && item.second == defaults.front().second;
  if (same) return shown(defaults.front().second);
  std::string out;
  for (const auto& [task, value] : defaults) out += (out.empty() ? "" : "; ") + task + ": " + shown(value);
  return out;
}

}  // namespace graft
