// Text classification and causal language modelling end to end. See graft/text_task.h.
#include "graft/text_task.h"

#include <torch/nn/modules/normalization.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "graft/bert.h"
#include "graft/errors.h"
#include "graft/files.h"
#include "graft/json_file.h"
#include "graft/llama.h"
#include "graft/lora.h"
#include "graft/progress.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/strings.h"
#include "graft/train_options.h"
#include "graft/transfer.h"
#include "graft/transformers.h"
#include "graft/weights.h"
#include "transfer/driver.h"
#include "transfer/text_tensors.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Tokenizer files a Hugging Face folder may hold, copied into a run directory under the same names.
// GPT-2's original encoder.json / vocab.bpe are written as vocab.json / merges.txt, the names
// GPT2Tokenizer.from_pretrained looks for.
const std::vector<std::pair<std::string, std::string>> kTokenizerFiles = {
    {"tokenizer.json", "tokenizer.json"},
    {"vocab.txt", "vocab.txt"},
    {"vocab.json", "vocab.json"},
    {"merges.txt", "merges.txt"},
    {"encoder.json", "vocab.json"},
    {"vocab.bpe", "merges.txt"},
    {"tokenizer_config.json", "tokenizer_config.json"},
    {"special_tokens_map.json", "special_tokens_map.json"},
};

// --model, when given, must name the class the weights' (or config's) model type builds for the task, or
// that type.
void check_model_name(const std::string& model, const std::string& task, const std::string& model_type) {
  if (model.empty()) return;
  const std::string wanted = model_class(task, model_type);
  const std::string type = !model_type.empty() ? model_type : task == "text-classify" ? "bert" : "gpt2";
  if (model != wanted && model != type) {
    throw Error("--model " + model + " cannot do " + task + " here: the " +
                (model_type.empty() ? std::string("default") : "\"" + model_type + "\" config") + " builds " +
                wanted + " (--model " + type + ")");
  }
}

// The folder whose tokenizer goes with the model.
std::string tokenizer_location(const TextTrainOptions& o) {
  if (!o.tokenizer.empty()) return o.tokenizer;
  const std::string from = !o.weights.empty() ? o.weights : o.model_config;
  if (from.empty()) return "";
  return fs::is_directory(from) ? from : fs::path(from).parent_path().string();
}

// The parameter groups of Hugging Face's Trainer: weight decay on weights, none on biases and LayerNorm.
std::vector<ParamGroup> decay_groups(torch::nn::Module& module) {
  std::set<const void*> no_decay;
  for (const auto& item : module.named_modules()) {
    // transformers' ALL_LAYERNORM_LAYERS: LayerNorm and LlamaRMSNorm.
    const bool layer_norm = item.value()->as<torch::nn::LayerNormImpl>() != nullptr ||
                            item.value()->as<LlamaRMSNormImpl>() != nullptr;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      if (layer_norm || p.key() == "bias") no_decay.insert(p.value().unsafeGetTensorImpl());
    }
  }
  ParamGroup decay{{}, 1.0, "decay"}, plain{{}, 1.0, "no_decay", true};
  for (const auto& p : module.parameters(true)) {
    (no_decay.count(p.unsafeGetTensorImpl()) ? plain : decay).params.push_back(p);
  }
  return {decay, plain};
}

// config.json of the trained model, written from its parsed, typed configuration (BertConfig/GPT2Config::
// to_json; never the source file's text, so that junk in it stays out of the run: nesting 50,000 levels
// deep once made an 800 MB file), with the class built and, for a classifier, its labels.
json run_config(const torch::nn::Module& module, const std::string& architecture,
                const std::vector<std::string>& classes) {
  json out;
  if (const auto* classifier = dynamic_cast<const SequenceClassifierImpl*>(&module)) {
    out = classifier->config_json(classes);
  } else if (const auto* gpt2 = dynamic_cast<const GPT2LMHeadModelImpl*>(&module)) {
    out = gpt2->config().to_json();
  } else if (const auto* lm = dynamic_cast<const LlamaForCausalLMImpl*>(&module)) {
    out = lm->config().to_json();
  } else {
    throw Error("config.json: the model is neither a sequence classifier nor a causal language model");
  }
  if (dynamic_cast<const CausalLMImpl*>(&module)) {
    out.erase("id2label");  // a language model has no labels
    out.erase("label2id");
  }
  out["architectures"] = json::array({architecture});
  out["torch_dtype"] = "float32";
  return out;
}

// Copies the tokenizer's files into dir under Hugging Face's names; returns the names written.
std::vector<std::string> save_tokenizer_files(const std::string& location, const Tokenizer& tokenizer,
                                              const std::string& dir) {
  std::vector<std::string> written;
  const bool folder = fs::is_directory(location);
  const fs::path base = folder ? fs::path(location) : fs::path(location).parent_path();
  auto copy = [&](const fs::path& from, const std::string& name) {
    if (std::find(written.begin(), written.end(), name) != written.end()) return;
    write_file_atomic((fs::path(dir) / name).string(), read_file(from.string()));
    written.push_back(name);
  };
  if (folder) {
    for (const auto& [from, to] : kTokenizerFiles)
      if (fs::is_regular_file(base / from)) copy(base / from, to);
  } else {
    const std::string name = fs::path(location).filename().string();
    const std::string ext = fs::path(location).extension().string();
    if (tokenizer.kind() == "wordpiece" && ext == ".txt") {
      copy(location, "vocab.txt");
    } else if (ext == ".json" && tokenizer.kind() == "byte_bpe" && name != "tokenizer.json" &&
               !fs::is_regular_file(base / "tokenizer.json")) {
      copy(location, "vocab.json");
      for (const char* merges : {"merges.txt", "vocab.bpe"})
        if (fs::is_regular_file(base / merges)) copy(base / merges, "merges.txt");
    } else {
      copy(location, "tokenizer.json");
    }
    if (fs::is_regular_file(base / "tokenizer_config.json"))
      copy(base / "tokenizer_config.json", "tokenizer_config.json");
  }
  if (std::find(written.begin(), written.end(), "tokenizer_config.json") == written.end()) {
    // The class and casing Python's AutoTokenizer needs to read the files as graft does.
    json config;
    if (tokenizer.kind() == "wordpiece") {
      config["tokenizer_class"] = "BertTokenizer";
      config["do_lower_case"] = dynamic_cast<const WordPieceTokenizer&>(tokenizer).options().lowercase;
    } else {
      config["tokenizer_class"] = "GPT2Tokenizer";
    }
    write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), config.dump(2) + "\n");
    written.push_back("tokenizer_config.json");
  }
  return written;
}

// The tensors save_pretrained writes: a tied GPT-2 LM head is stored too, as a copy of wte (transformers
// v4.31's safetensors files hold lm_head.weight; from_pretrained ties it again).
NamedTensors hf_state_dict(torch::nn::Module& module) {
  NamedTensors tensors = state_dict(module);
  if (auto gpt2 = dynamic_cast<GPT2LMHeadModelImpl*>(&module); gpt2 && !gpt2->lm_head)
    tensors.emplace_back("lm_head.weight", gpt2->lm_head_weight().detach().clone());
  return tensors;
}

// Encoded examples (or blocks) for training and validation, and the class names (text-classify).
struct TextData {
  std::vector<std::string> classes;
  ClassifyTensors train, val;
};

// text-classify: labelled examples, encoded to max_length; validation from --val-data or split off.
TextData classify_data(const TextTrainOptions& o, const Tokenizer& tokenizer, std::ostream& log) {
  TextData data;
  const std::vector<TextExample> examples = read_text_examples(o.data, o.columns);
  std::vector<TextExample> val_examples;
  if (!o.val_data.empty()) val_examples = read_text_examples(o.val_data, o.columns);
  data.classes = label_classes(examples);
  if (data.classes.size() < 2)
    throw Error(o.data + ": every example has the label '" + data.classes[0] +
                "'; classification needs two or more");
  data.train = encode_examples(tokenizer, examples, data.classes, o.max_length);
  if (!val_examples.empty()) {
    data.val = encode_examples(tokenizer, val_examples, data.classes, o.max_length);
  } else if (o.validate && o.val_split > 0) {
    std::tie(data.train, data.val) = split_rows(data.train, o.val_split, true, o.train.seed);
  }
  log << "data: " << examples.size() << " examples, " << data.classes.size() << " classes";
  // A quoted field may hold line breaks (valid CSV); one stray quote swallows the rows after it, so the
  // records that span lines are counted where a user sees them.
  size_t spanning = 0, lines = 0;
  const auto count = [&](const std::vector<TextExample>& set) {
    for (const TextExample& e : set) spanning += e.lines > 1, lines += e.lines;
  };
  count(examples);
  count(val_examples);
  if (spanning > 0)
    log << " (" << examples.size() + val_examples.size() << " records from " << lines
        << " lines: " << spanning << " with line breaks inside quotes)";
  if (data.train.truncated + data.val.truncated > 0)
    log << " (" << data.train.truncated + data.val.truncated << " longer than --max-length " << o.max_length
        << " tokens, truncated)";
  return data;
}

// The chat template that goes with a tokenizer: the one in tokenizer_config.json beside it (in the folder
// it names, or beside the file); nullopt when there is none.
std::optional<ChatTemplate> chat_template_near(const std::string& location) {
  if (location.empty()) return std::nullopt;
  const fs::path dir = fs::is_directory(location) ? fs::path(location) : fs::path(location).parent_path();
  const fs::path config = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(config)) return std::nullopt;
  return read_chat_template(config.string());
}

// causal-lm on conversations: one row per conversation as its chat template renders it, the loss on the
// assistant turns; validation from --val-data (conversations too) or split off.
TextData chat_data(const TextTrainOptions& o, const Tokenizer& tokenizer, std::ostream& log) {
  if (o.line_by_line)
    throw Error("--line-by-line does not apply to conversations (" + o.data +
                " holds \"messages\"): each conversation is one example already");
  const std::string location = tokenizer_location(o);
  const std::optional<ChatTemplate> chat = chat_template_near(location);
  if (!chat)
    throw Error(o.data +
                " holds conversations (\"messages\"), which are rendered by the tokenizer's chat "
                "template, but " +
                (location.empty()
                     ? std::string("no tokenizer folder is given")
                     : "there is no tokenizer_config.json with a \"chat_template\" beside " + location) +
                "; give --tokenizer a folder whose tokenizer_config.json has one (a chat model's)");
  TextData data;
  ChatCounts counts, val_counts;
  data.train = chat_tensors(tokenizer, *chat, read_conversations(o.data, o.columns.format), o.block_size,
                            o.data, &counts);
  if (!o.val_data.empty()) {
    if (!is_conversation_data(o.val_data, o.columns.format))
      throw Error("--val-data " + o.val_data + " is not conversations (JSON Lines with \"messages\"), as " +
                  o.data + " is");
    data.val = chat_tensors(tokenizer, *chat, read_conversations(o.val_data, o.columns.format), o.block_size,
                            o.val_data, &val_counts);
  } else if (o.validate && o.val_split > 0) {
    if (data.train.inputs.size(0) < 2)
      throw Error(o.data + ": one conversation cannot be split into training and validation data");
    std::tie(data.train, data.val) = split_rows(data.train, o.val_split, true, o.train.seed);
  }
  const int64_t tokens = counts.tokens + val_counts.tokens;
  const int64_t assistant = counts.assistant_tokens + val_counts.assistant_tokens;
  log << "data: " << counts.conversations + val_counts.conversations << " conversations rendered by "
      << chat->where() << "'s chat template; the loss counts the assistant turns, " << assistant << " of "
      << tokens << " tokens";
  if (counts.skipped + val_counts.skipped > 0)
    log << " (" << counts.skipped + val_counts.skipped
        << " without an assistant turn within --block-size, left out)";
  if (counts.truncated + val_counts.truncated > 0)
    log << " (" << counts.truncated + val_counts.truncated << " longer than --block-size " << o.block_size
        << " tokens, truncated)";
  return data;
}

// causal-lm: text packed into blocks of block_size tokens (or one example per line); validation from
// --val-data or split off.
TextData lm_data(const TextTrainOptions& o, const Tokenizer& tokenizer, std::ostream& log) {
  if (is_conversation_data(o.data, o.columns.format)) return chat_data(o, tokenizer, log);
  TextData data;
  const std::vector<std::string> docs =
      read_lm_documents(o.data, o.line_by_line, o.columns.text, o.columns.format);
  data.train = lm_tensors(tokenizer, docs, o.block_size, o.line_by_line, o.data);
  if (!o.val_data.empty()) {
    const auto val_docs = read_lm_documents(o.val_data, o.line_by_line, o.columns.text, o.columns.format);
    data.val = lm_tensors(tokenizer, val_docs, o.block_size, o.line_by_line, o.val_data);
  } else if (o.validate && o.val_split > 0) {
    if (data.train.inputs.size(0) < 2)
      throw Error(o.data + ": one block of text cannot be split into training and validation data");
    std::tie(data.train, data.val) = split_rows(data.train, o.val_split, o.line_by_line, o.train.seed);
  }
  log << "data: " << docs.size() << (o.line_by_line ? " lines" : " document(s)") << ", "
      << (o.line_by_line ? "examples" : "blocks of " + std::to_string(o.block_size) + " tokens");
  if (data.train.truncated + data.val.truncated > 0)
    log << " (" << data.train.truncated + data.val.truncated << " lines longer than --block-size "
        << o.block_size << " tokens, truncated)";
  return data;
}

// The model's positions as its config.json says (n_positions for GPT-2, max_position_embeddings for the
// others; Hugging Face's defaults when absent), read before the model is built so that the data, whose
// errors are commoner, is read first. 0 when there is no config.json to read (loading the model says what is
// missing).
int64_t config_positions(const TextTrainOptions& o) {
  fs::path config = o.model_config;
  if (!o.weights.empty())
    config = (fs::is_directory(o.weights) ? fs::path(o.weights) : fs::path(o.weights).parent_path()) /
             "config.json";
  std::error_code error;
  if (config.empty() || !fs::is_regular_file(config, error)) return 0;
  const json root = read_json_file(config.string());
  const std::string type = model_type_at(config.string());
  const bool gpt2 = type == "gpt2" || (type.empty() && o.task == "causal-lm");
  const char* key = gpt2 ? "n_positions" : "max_position_embeddings";
  if (root.is_object() && root.contains(key) && root.at(key).is_number_integer())
    return root.at(key).get<int64_t>();
  return gpt2 ? 1024 : type == "llama" ? 2048 : type == "qwen2" ? 32768 : 512;
}

// --max-length / --block-size 0: the model's positions, at most kDefaultTextLength; said in the log.
void resolve_text_length(TextTrainOptions& o, std::ostream& log) {
  const bool classify = o.task == "text-classify";
  int64_t& length = classify ? o.max_length : o.block_size;
  if (length != 0) return;
  const int64_t positions = config_positions(o);
  length = positions > 0 ? std::min(kDefaultTextLength, positions) : kDefaultTextLength;
  log << (classify ? "--max-length " : "--block-size ") << length << ": "
      << (positions > kDefaultTextLength
              ? "the default (the model has " + std::to_string(positions) + " positions)"
          : positions > 0 ? "the model's " + std::to_string(positions) + " positions"
                          : "the default")
      << "\n";
}

// The model a text run starts from: pretrained weights (a Hugging Face folder or a run), or a config.json
// trained from scratch (said as a warning); a new head of num_labels outputs when it differs.
HfModel start_model(const TextTrainOptions& o, const std::string& architecture, int64_t num_labels,
                    std::ostream& log) {
  HfLoadOptions load;
  load.architecture = architecture;
  load.num_labels = num_labels;
  if (!o.weights.empty()) {
    HfModel hf = load_hf_model(o.weights, load);
    log << "weights: " << hf.weights_path << " (" << hf.report.loaded.size() << " tensors loaded";
    if (!hf.report.skipped.empty()) log << ", " << hf.report.skipped.size() << " of another head skipped";
    log << ")\n";
    return hf;
  }
  if (o.model_config.empty())
    throw Error(
        "give --weights (a Hugging Face folder or run directory) or --model-config (config.json of a new "
        "model)");
  HfModel hf = build_hf_model(o.model_config, load);
  log << "warning: no --weights: " << architecture << " from " << o.model_config
      << " starts from random weights (training from scratch)\n";
  return hf;
}

}  // namespace

TextTrainOptions::TextTrainOptions() {
  train.epochs = 3;
  train.optimizer.name = "adamw";
  train.optimizer.lr = 5e-5;
  train.optimizer.weight_decay = 0.01;
  train.schedule.name = "linear";
  train.sample_unit = "seq";
}

namespace {

// Text classification's and causal language modelling's own steps, which train_run (transfer/driver.h)
// calls in order: the tokenizer first (cheap, and its errors are the commonest), the data encoded, the
// Hugging Face model with a new head where the classes differ, and a Hugging Face folder as the run
// directory.
class TextRecipe : public TrainRecipe {
 public:
  explicit TextRecipe(const TextTrainOptions& options) : o_(options) {}

  RunBasics basics() const override {
    return basics_of(o_, o_.task, "seq", classify() ? "classify" : "causal-lm");
  }
  json options() const override { return to_json(o_); }

  // Lengths are checked here; the model's own position count once it is loaded.
  void resolve(std::ostream& log) override {
    const std::string lora = adapter_flag(o_.lora, o_.adapter);
    if (!lora.empty() && !o_.freeze.empty())
      throw SpecError("--freeze " + o_.freeze + " does not apply to " + lora +
                      ", which freezes everything but the adapters and the head");
    if (!lora.empty() && o_.weights.empty() && o_.init_from.empty())
      throw Error(lora + " adapts pretrained weights: give --weights (a Hugging Face folder)");
    if (!o_.init_from.empty()) o_.weights = o_.init_from;  // a text run directory is a Hugging Face folder
    const std::string model_type = model_type_at(!o_.weights.empty() ? o_.weights : o_.model_config);
    architecture_ = model_class(o_.task, model_type);
    check_model_name(o_.model, o_.task, model_type);
    resolve_text_length(o_, log);
  }

  std::vector<std::string> open_data(std::ostream& log) override {
    tokenizer_path_ = tokenizer_location(o_);
    if (tokenizer_path_.empty())
      throw Error("no tokenizer: give --weights (a Hugging Face folder with tokenizer files) or --tokenizer");
    tokenizer_ = load_tokenizer(tokenizer_path_);
    data_ = classify() ? classify_data(o_, *tokenizer_, log) : lm_data(o_, *tokenizer_, log);
    if (!o_.validate) data_.val = {};
    log << ": " << data_.train.inputs.size(0) << " train, "
        << (data_.val.inputs.defined() ? data_.val.inputs.size(0) : 0) << " val\n";
    return data_.classes;
  }

  // A run's start is its weights (resolve); random weights are a --model-config trained from scratch.
  void build_model(const StartChoice&, std::ostream& log) override {
    hf_ = start_model(o_, architecture_, classify() ? static_cast<int64_t>(data_.classes.size()) : -1, log);
    const int64_t vocab = embedding_rows(*hf_.module);
    check_ids(data_.train.inputs, vocab, *tokenizer_);
    if (data_.val.inputs.defined()) check_ids(data_.val.inputs, vocab, *tokenizer_);
    const int64_t context = context_length(*hf_.module);
    if (length() > context)
      throw Error(std::string(classify() ? "--max-length " : "--block-size ") + std::to_string(length()) +
                  " exceeds the model's " + std::to_string(context) + " positions");
  }

  FreezeStep freeze_step() override {
    FreezeStep step;
    step.module = hf_.module.get();
    step.keep = classify() ? "classifier" : "";
    step.spec = step.named = step.saved = o_.freeze;
    return step;
  }

  std::vector<ParamGroup> param_groups() override { return decay_groups(*hf_.module); }

  // PEFT's task types: a sequence classifier's head trains whole (PEFT adds it to modules_to_save).
  LoraPlace lora_place() override {
    LoraPlace place;
    place.model = hf_.module.get();
    place.task_type = classify() ? "SEQ_CLS" : "CAUSAL_LM";
    place.base = o_.weights;
    place.base_file = hf_.weights_path;
    place.fan_in_fan_out = hf_.model_type == "gpt2";  // Conv1D, as PEFT sets it
    // DistilBERT's head is two layers, and PEFT saves only `classifier` by itself: a fresh pre_classifier
    // would stay frozen at random. Named in modules_to_save, it trains, and PEFT loads it back.
    if (classify() && hf_.model_type == "distilbert") place.whole.push_back("pre_classifier");
    return place;
  }

  FitPlan plan(TrainConfig& config, std::ostream&) override {
    train_source_ =
        std::make_unique<TokenBatchSource>(data_.train.inputs, data_.train.labels, o_.batch_size, true);
    if (data_.val.inputs.defined() && data_.val.inputs.size(0) > 0)
      val_source_ =
          std::make_unique<TokenBatchSource>(data_.val.inputs, data_.val.labels, o_.batch_size, false);
    if (config.schedule.warmup_steps == 0 && o_.warmup_ratio > 0) {
      const double steps =
          static_cast<double>(config.epochs) * static_cast<double>(train_source_->num_batches());
      config.schedule.warmup_steps = static_cast<int64_t>(std::ceil(o_.warmup_ratio * steps));
    }
    result.train_examples = data_.train.inputs.size(0);
    result.val_examples = val_source_ ? data_.val.inputs.size(0) : 0;
    FitPlan plan;
    plan.trained = plan.model = hf_.module;
    plan.trained_forward = plan.model_forward = forward_of(hf_.module, o_.task);
    plan.train = train_source_.get();
    plan.val = val_source_.get();
    return plan;
  }

  // A Hugging Face folder (config.json, model.safetensors, the tokenizer's files) plus graft.json.
  RunFiles run_files(const FitOutcome& outcome, std::ostream&) override {
    write_file_atomic((fs::path(o_.out) / "config.json").string(),
                      run_config(*hf_.module, architecture_, data_.classes).dump(2) + "\n");
    RunFiles files;
    files.fields["model_type"] = hf_.model_type;
    files.fields["architecture"] = architecture_;
    // The task's own length (the other one is unused, and left to its default).
    files.fields[classify() ? "max_length" : "block_size"] = length();
    files.fields["line_by_line"] = o_.line_by_line;
    files.fields["columns"] = columns_json(o_.columns);
    files.fields["config"] = "config.json";
    files.fields["tokenizer"] = save_tokenizer_files(tokenizer_path_, *tokenizer_, o_.out);
    if (outcome.val_metrics) {
      files.fields["val"] = {{"loss", outcome.val_metrics->loss},
                             {"accuracy", outcome.val_metrics->accuracy}};
      if (!classify()) files.fields["val"]["perplexity"] = outcome.val_metrics->perplexity();
    }
    files.weights = hf_state_dict(*hf_.module);
    files.listing = "Hugging Face files config.json, model.safetensors, tokenizer; graft.json";
    return files;
  }

  TextTrainResult result;  // history and metrics: train_run's outcome

 private:
  bool classify() const { return o_.task == "text-classify"; }
  int64_t length() const { return classify() ? o_.max_length : o_.block_size; }

  TextTrainOptions o_;
  std::string architecture_, tokenizer_path_;
  std::shared_ptr<Tokenizer> tokenizer_;
  TextData data_;
  HfModel hf_;
  std::unique_ptr<TokenBatchSource> train_source_, val_source_;
};

}  // namespace

TextTrainResult train_text_model(const TextTrainOptions& options, std::ostream& log) {
  return train_with<TextRecipe>(options, log);
}

bool is_text_run(const std::string& dir) {
  const std::string task = run_task(dir);
  return task == "text-classify" || task == "causal-lm";
}

namespace {

// A LoRA text run's model: the base (checked against graft.json) with a head for the run's classes, then
// the adapter, which holds that head.
HfModel load_lora_text_model(const RunDocument& doc, const std::string& dir) {
  const std::string base = checked_lora_base(doc, [&]() -> std::string {
    throw FormatError(doc.file, "lora.base: a text run's base is a folder or file, not a model tag");
  });
  HfLoadOptions load;
  load.architecture = model_class(doc.task, model_type_at(base));
  load.num_labels = doc.task == "text-classify" ? static_cast<int64_t>(doc.classes.size()) : -1;
  HfModel hf = load_hf_model(base, load);
  load_lora_adapter(*hf.module, dir);
  return hf;
}

}  // namespace

TextRun load_text_run(const std::string& dir, const std::string& tokenizer) {
  TextRun run;
  run.dir = dir;
  if (!fs::is_directory(dir))
    throw Error(dir + ": not a folder (expected a text run directory or Hugging Face folder)");
  const fs::path graft_json = fs::path(dir) / "graft.json";
  std::optional<RunDocument> doc;  // none in a Hugging Face folder
  if (fs::is_regular_file(graft_json)) {
    doc = read_run_document(graft_json.string());
    run.task = doc->task;
    if (run.task != "text-classify" && run.task != "causal-lm") {
      throw FormatError(graft_json.string(), "task '" + run.task + "' is not a text task",
                        "expected text-classify or causal-lm");
    }
  }
  const bool lora = doc && is_lora_run(*doc);
  HfModel hf = lora ? load_lora_text_model(*doc, dir) : load_hf_model(dir);
  if (doc)
    check_run_weights(doc->file, doc->weights_save_id,
                      lora ? (fs::path(dir) / "adapter_model.safetensors").string() : hf.weights_path);
  if (run.task.empty()) {
    run.task = task_of_class(hf.architecture);
    if (run.task.empty())
      throw Error(dir + ": a " + hf.architecture + " is neither a text classifier nor a language model");
  }
  if (task_of_class(hf.architecture) != run.task) {
    throw FormatError(graft_json.string(), "task " + run.task + " but config.json builds " + hf.architecture);
  }
  run.model_type = hf.model_type;
  run.architecture = hf.architecture;
  run.module = hf.module;
  run.module->eval();
  run.tokenizer = load_tokenizer(tokenizer.empty() ? dir : tokenizer);
  try {  // a template graft cannot read blocks chat and conversations only, not the run's other uses
    run.chat_template = chat_template_near(tokenizer.empty() ? dir : tokenizer);
  } catch (const Error& e) {
    run.chat_template_error = e.what();
  }
  const TextRunSpec spec = doc ? read_text_run_spec(*doc) : TextRunSpec{};
  run.max_length = spec.max_length;
  run.block_size = spec.block_size;
  if (!doc) {  // a Hugging Face folder: as a run of default lengths, within the model's positions
    run.max_length = std::min(run.max_length, context_length(*run.module));
    run.block_size = std::min(run.block_size, context_length(*run.module));
  }
  run.line_by_line = spec.line_by_line;
  run.columns = spec.columns;
  if (run.task == "text-classify") {
    // A LoRA run's base has its own labels.
    if (lora)
      run.classes = doc->classes;
    else if (const auto* classifier = dynamic_cast<const SequenceClassifierImpl*>(run.module.get()))
      run.classes = classifier->labels();
    else
      throw Error(dir + ": a " + hf.architecture + " is not a sequence classifier");
  }
  return run;
}

namespace {

// The run's data as the model reads it, checked against its vocabulary: labelled examples (text-classify)
// or blocks of text (causal-lm), with where each row comes from.
ClassifyTensors run_tensors(const TextRun& run, const std::string& data, std::vector<std::string>* ids) {
  ClassifyTensors set;
  if (run.task == "text-classify") {
    const std::vector<TextExample> examples = read_text_examples(data, run.columns);
    set = encode_examples(*run.tokenizer, examples, run.classes, run.max_length);
    if (ids)
      for (const TextExample& e : examples) ids->push_back(e.where);
  } else if (is_conversation_data(data, run.columns.format)) {
    if (!run.chat_template)
      throw Error(
          data + " holds conversations, but " +
          (run.chat_template_error.empty()
               ? run.dir + " has no chat template (tokenizer_config.json's chat_template) to render them"
               : "the chat template cannot be read: " + run.chat_template_error));
    set = chat_tensors(*run.tokenizer, *run.chat_template, read_conversations(data, run.columns.format),
                       run.block_size, data);
    if (ids)
      for (int64_t i = 0; i < set.inputs.size(0); ++i)
        ids->push_back(data + ": conversation " + std::to_string(i + 1));
  } else {
    set = lm_tensors(*run.tokenizer,
                     read_lm_documents(data, run.line_by_line, run.columns.text, run.columns.format),
                     run.block_size, run.line_by_line, data);
    if (ids)
      for (int64_t i = 0; i < set.inputs.size(0); ++i)
        ids->push_back(data + (run.line_by_line ? ": example " : ": block ") + std::to_string(i + 1));
  }
  check_ids(set.inputs, embedding_rows(*run.module), *run.tokenizer);
  return set;
}

// One vector per row, (B, hidden): a classifier's SequenceClassifierImpl::features (BERT's pooled output,
// RoBERTa's and DistilBERT's first token, a Llama classifier's mean); for a language model (GPT-2, Llama),
// its last hidden states averaged over the tokens the mask keeps.
torch::Tensor embed_tokens(torch::nn::Module& module, const torch::Tensor& x) {
  if (auto* classifier = dynamic_cast<SequenceClassifierImpl*>(&module))
    return classifier->features(classifier_inputs(*classifier, x));
  auto* lm = dynamic_cast<CausalLMImpl*>(&module);
  if (!lm) throw Error("features: the model is neither a sequence classifier nor a causal language model");
  const torch::Tensor hidden = lm->forward_base({x.select(1, 0), x.select(1, 1)}).last_hidden_state;
  const torch::Tensor mask = x.select(1, 1).unsqueeze(-1).to(hidden.scalar_type());
  return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1);
}

}  // namespace

Metrics evaluate_text(TextRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                      std::ostream& log) {
  const ClassifyTensors set = run_tensors(run, data, nullptr);
  TokenBatchSource source(set.inputs, set.labels, batch_size, false);
  TrainConfig config;
  config.device = device;
  config.log = &log;
  config.objective = run.task == "text-classify" ? "classify" : "causal-lm";
  config.sample_unit = "seq";
  Trainer evaluator(run.module, forward_of(run.module, run.task), config);
  Metrics metrics = evaluator.evaluate(source, "eval");
  run.module->to(torch::kCPU);
  return metrics;
}

FeatureSet text_features(TextRun& run, const std::string& data, int64_t batch_size, torch::Device device,
                         std::ostream& log) {
  if (batch_size <= 0) throw Error("--batch-size must be positive, got " + std::to_string(batch_size));
  FeatureSet out;
  const ClassifyTensors set = run_tensors(run, data, &out.ids);
  TokenBatchSource source(set.inputs, set.labels, batch_size, false);
  c10::InferenceMode inference;
  run.module->eval();
  run.module->to(device);
  std::vector<torch::Tensor> features;
  source.start_epoch(0);
  ProgressBar bar("features", static_cast<int64_t>(source.num_batches()), log, "seq");
  int64_t done = 0, rows = 0;
  while (auto batch = source.next()) {
    features.push_back(embed_tokens(*run.module, batch->first.to(device)).to(torch::kCPU, torch::kFloat));
    rows += batch->first.size(0);
    bar.update(++done, rows, std::nan(""), 0.0);
  }
  bar.finish("features: " + std::to_string(rows) + " " +
             (run.task == "text-classify" ? "examples" : "blocks"));
  run.module->to(torch::kCPU);
  out.features = torch::cat(features).clone();
  out.labels = run.task == "text-classify" ? set.labels.clone() : torch::full({rows}, -1, torch::kLong);
  return out;
}

std::vector<Prediction> predict_texts(TextRun& run, const std::vector<std::string>& texts, int64_t top_k,
                                      torch::Device device) {
  if (run.task != "text-classify")
    throw Error(run.dir + ": predict classifies text; this run is a " + run.task +
                " model (use graft generate)");
  c10::InferenceMode inference;
  run.module->to(device);
  const Trainer::Forward forward = forward_of(run.module, run.task);
  EncodeOptions options;
  options.truncation = Truncation::kLongestFirst;
  options.max_length = static_cast<size_t>(run.max_length);
  std::vector<Prediction> out;
  const int64_t k = std::clamp<int64_t>(top_k, 1, static_cast<int64_t>(run.classes.size()));
  for (const std::string& text : texts) {
    torch::Tensor packed =
        pack_encodings({run.tokenizer->encode(text, options)}, pad_id_of(*run.tokenizer), 3);
    check_ids(packed, embedding_rows(*run.module), *run.tokenizer);
    const torch::Tensor probs =
        torch::softmax(forward(packed.to(device)), -1, torch::kFloat).squeeze(0).cpu();
    out.push_back({text, top_labels(probs, k, run.classes), ""});
  }
  run.module->to(torch::kCPU);
  return out;
}

namespace {

// Length of the longest prefix of s that ends on a whole UTF-8 character (streamed text never shows half).
size_t complete_utf8_prefix(const std::string& s) {
  size_t end = s.size();
  for (size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[s.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    const size_t need = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (need > back) end = s.size() - back;
    break;
  }
  return end;
}

}  // namespace

std::string generate_text(TextRun& run, const std::string& prompt, GenerateOptions options,
                          torch::Device device,
                          const std::function<bool(const std::string& piece)>& on_text) {
  auto model = std::dynamic_pointer_cast<CausalLMImpl>(run.module);
  if (!model)
    throw Error(run.dir + ": generate needs a language model; this run is a " + run.task + " model");
  EncodeOptions encode;
  encode.add_special_tokens = false;
  std::vector<int64_t> ids = run.tokenizer->encode(prompt, encode).ids;
  const std::optional<int64_t> eos = run.tokenizer->eos_id();
  if (ids.empty()) {  // an empty prompt starts at eos (GPT-2's document separator), else at bos
    const int64_t start = eos.value_or(model->bos_token_id());
    if (start < 0)
      throw Error("an empty prompt needs a token to start from: the tokenizer has no eos token and " +
                  run.dir + "/config.json no bos_token_id");
    ids.push_back(start);
  }
  if (options.eos_token_id < 0 && eos) options.eos_token_id = *eos;
  const int64_t positions = model->position_limit();
  if (options.max_new_tokens >= positions) {
    throw Error("--max-new-tokens " + std::to_string(options.max_new_tokens) +
                " leaves no room for the prompt in " + std::to_string(positions) + " positions");
  }
  // A long prompt keeps its end: what the model sees last matters for what comes next.
  const size_t room = static_cast<size_t>(positions - options.max_new_tokens);
  if (ids.size() > room) ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(room));
  const int64_t vocab = embedding_rows(*model);
  for (int64_t id : ids) {
    if (id >= vocab)
      throw Error("the tokenizer gives id " + std::to_string(id) + " beyond the model's vocabulary");
  }
  model->to(device);
  model->eval();
  std::vector<int64_t> generated;
  size_t shown = 0;
  if (on_text) {
    options.on_token = [&](const torch::Tensor& next) {
      const int64_t id = next[0].item<int64_t>();
      if (options.eos_token_id >= 0 && id == options.eos_token_id) return false;
      generated.push_back(id);
      const std::string text = run.tokenizer->decode(generated, true);
      const size_t upto = complete_utf8_prefix(text);
      if (upto <= shown) return true;
      const std::string piece = text.substr(shown, upto - shown);
      shown = upto;
      return on_text(piece);
    };
  }
  const torch::Tensor input = torch::tensor(ids, torch::kLong).unsqueeze(0).to(device);
  const torch::Tensor sequences = model->generate(input, options).cpu();
  model->to(torch::kCPU);
  std::vector<int64_t> fresh;
  for (int64_t t = input.size(1); t < sequences.size(1); ++t) {
    const int64_t id = sequences[0][t].item<int64_t>();
    if (options.eos_token_id >= 0 && id == options.eos_token_id) break;
    fresh.push_back(id);
  }
  return run.tokenizer->decode(fresh, true);
}

void export_hf(const std::string& run_dir, const std::string& out_dir, bool merge) {
  const bool lora = fs::is_regular_file(fs::path(run_dir) / "adapter_config.json") &&
                    !fs::exists(fs::path(run_dir) / "model.safetensors");
  if (!fs::is_regular_file(fs::path(run_dir) / "config.json") ||
      !(lora || fs::is_regular_file(fs::path(run_dir) / "model.safetensors"))) {
    throw Error(run_dir +
                ": not a text run directory (expected config.json and model.safetensors from graft train "
                "--task text-classify or causal-lm)");
  }
  if (lora && !merge)
    throw Error(run_dir +
                " is a LoRA run (adapter_config.json + adapter_model.safetensors, which PEFT loads as they "
                "are beside its base): add --merge to write the base with the adapter merged in, a plain "
                "Hugging Face folder");
  if (merge && !lora)
    throw Error("--merge: " + run_dir + " holds no LoRA adapter (its model.safetensors is already whole)");
  if (fs::exists(out_dir) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
    throw Error(out_dir + ": already exists; export writes a new folder (remove it or choose another --out)");
  NamedTensors merged;  // a LoRA run's model with its adapter merged, in float32, and the branches gone
  if (lora) {
    TextRun run = load_text_run(run_dir);
    merge_and_unload_lora(*run.module);
    merged = hf_state_dict(*run.module);
  }
  std::vector<std::string> files = {"config.json"};
  if (!lora) files.push_back("model.safetensors");
  for (const auto& item : kTokenizerFiles)
    if (fs::is_regular_file(fs::path(run_dir) / item.second) &&
        std::find(files.begin(), files.end(), item.second) == files.end())
      files.push_back(item.second);
  // The folder is assembled beside its destination, in a temporary of its own (never a folder of the
  // user's that happens to have the name), and renamed into place whole.
  std::error_code error;
  const fs::path target = fs::weakly_canonical(fs::absolute(out_dir), error);  // "." and "a/../b" too
  if (error || target.filename().empty())
    throw Error(out_dir + ": cannot resolve the path: " + error.message());
  fs::path temporary;
  for (int attempt = 0;; ++attempt) {
    temporary = target.parent_path() / ("." + target.filename().string() + ".tmp-export-" +
                                        std::to_string(::getpid()) + "-" + std::to_string(attempt));
    if (fs::create_directory(temporary, error)) break;
    if (error || attempt == 100)
      throw Error(out_dir + ": cannot create a temporary folder beside it (" + temporary.string() +
                  "): " + (error ? error.message() : "the names are taken"));
  }
  try {
    // copy_file reports a full disk (filesystem_error naming both files); the fsyncs make the copies
    // durable before the rename publishes them.
    for (const auto& name : files) {
      fs::copy_file(fs::path(run_dir) / name, temporary / name);
      fsync_path((temporary / name).string(), /*directory=*/false);
    }
    if (lora) {
      write_safetensors((temporary / "model.safetensors").string(), merged, {{"format", "pt"}});
      files.push_back("model.safetensors");
    }
    fsync_path(temporary.string(), /*directory=*/true);
    if (fs::is_directory(target)) {
      // An empty folder that exists (such as "."): the files move into it, and the folder itself stays.
      for (const auto& name : files) fs::rename(temporary / name, target / name);
      fs::remove(temporary);
      fsync_path(target.string(), /*directory=*/true);
    } else {
      fs::rename(temporary, target);
    }
  } catch (const fs::filesystem_error& e) {  // a half-assembled folder is of no use
    fs::remove_all(temporary, error);
    throw Error(out_dir + ": cannot write the exported folder: " + e.code().message() + " (" +
                e.path1().string() + ")");
  } catch (...) {
    fs::remove_all(temporary, error);
    throw;
  }
  fsync_path(target.parent_path().string(), /*directory=*/true);
}

TaskEntry text_task_entry(const std::string& name) {
  using Files = std::vector<std::string>;
  TaskEntry entry;
  entry.name = name;
  entry.needs_model = false;
  TextTrainOptions defaults;
  defaults.task = name;
  entry.train = train_from_values(
      defaults, train_text_model,
      [](const TextTrainOptions& o) {
        return Files{o.data, o.val_data};
      },
      [](const TextTrainOptions& o) {
        return Files{o.weights, o.init_from, o.tokenizer, o.model_config, o.adapter};
      });
  entry.open = [](const std::string& dir) -> std::unique_ptr<Run> {
    TextRun run = load_text_run(dir);
    const std::string task = run.task;
    const std::vector<std::string> classes = run.classes;
    return std::make_unique<LoadedRunUse<TextRun>>(
        std::move(run), task, classes, "examples", true,
        LoadedRunUse<TextRun>::Uses{evaluate_text, predict_texts, text_features});
  };
  return entry;
}

}  // namespace graft
