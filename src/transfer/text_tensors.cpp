// Text as a text model reads it (text_tensors.h).
#include "transfer/text_tensors.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "graft/bert.h"
#include "graft/errors.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/llama.h"
#include "graft/run_document.h"
#include "graft/strings.h"

namespace graft {
namespace {

// Whether truncation cut the text of sequence `sequence` (0 or 1) of an encoding: its last token ends before
// the text's last non-space byte.
bool was_cut(const Encoding& e, const std::string& text, int sequence) {
  const size_t last = text.find_last_not_of(" \t\r\n");
  if (last == std::string::npos) return false;
  size_t end = 0;
  for (size_t i = 0; i < e.size() && i < e.sequence_ids.size() && i < e.offsets.size(); ++i)
    if (e.sequence_ids[i] == sequence) end = std::max(end, e.offsets[i].end);
  return end < last + 1;
}

}  // namespace

namespace {

// The classes of the text tasks, the task's first being its default.
struct TextClass {
  const char* task;
  const char* model_type;
  const char* architecture;
};
constexpr TextClass kTextClasses[] = {
    {"text-classify", "bert", "BertForSequenceClassification"},
    {"text-classify", "roberta", "RobertaForSequenceClassification"},
    {"text-classify", "xlm-roberta", "XLMRobertaForSequenceClassification"},
    {"text-classify", "distilbert", "DistilBertForSequenceClassification"},
    {"text-classify", "llama", "LlamaForSequenceClassification"},
    {"text-classify", "qwen2", "Qwen2ForSequenceClassification"},
    {"causal-lm", "gpt2", "GPT2LMHeadModel"},
    {"causal-lm", "llama", "LlamaForCausalLM"},
    {"causal-lm", "qwen2", "Qwen2ForCausalLM"},
};

}  // namespace

std::string model_class(const std::string& task, const std::string& model_type) {
  std::string types;
  for (const TextClass& c : kTextClasses) {
    if (c.task != task) continue;
    if (model_type.empty() || model_type == c.model_type) return c.architecture;
    types += (types.empty() ? "" : ", ") + std::string(c.model_type);
  }
  if (types.empty()) throw Error("task '" + task + "': expected text-classify or causal-lm");
  throw Error("a \"" + model_type + "\" model cannot do " + task + ": graft does " + task +
              " with model types " + types);
}

std::string task_of_class(const std::string& architecture) {
  for (const TextClass& c : kTextClasses)
    if (c.architecture == architecture) return c.task;
  return "";
}

std::string model_type_at(const std::string& path) {
  if (path.empty()) return "";
  namespace fs = std::filesystem;
  fs::path config = path;
  if (fs::is_directory(config))
    config /= "config.json";
  else if (config.extension() != ".json")
    config = config.parent_path() / "config.json";
  if (!fs::is_regular_file(config)) return "";  // the loader says what is missing
  const nlohmann::json root = read_json_file(config.string());
  if (root.is_object() && root.contains("model_type") && root["model_type"].is_string())
    return root["model_type"].get<std::string>();
  return "";
}

int64_t embedding_rows(torch::nn::Module& module) {
  for (const auto& item : module.named_parameters(true)) {
    const std::string& name = item.key();
    if (ends_with(name, "word_embeddings.weight") || name == "transformer.wte.weight" ||
        name == "wte.weight" || name == "model.embed_tokens.weight" || name == "embed_tokens.weight")
      return item.value().size(0);
  }
  throw Error("the model has no word embedding matrix");
}

int64_t pad_id_of(const Tokenizer& tokenizer) {
  if (auto id = tokenizer.pad_id()) return *id;
  if (auto id = tokenizer.eos_id()) return *id;  // GPT-2 has no pad token: the tutorials pad with eos
  return 0;
}

torch::Tensor pack_encodings(const std::vector<Encoding>& encodings, int64_t pad_id, int64_t rows) {
  size_t longest = 1;
  for (const auto& e : encodings) longest = std::max(longest, e.size());
  const int64_t n = static_cast<int64_t>(encodings.size()), length = static_cast<int64_t>(longest);
  torch::Tensor out = torch::zeros({n, rows, length}, torch::kLong);
  out.select(1, 0).fill_(pad_id);
  auto a = out.accessor<int64_t, 3>();
  for (int64_t i = 0; i < n; ++i) {
    const Encoding& e = encodings[static_cast<size_t>(i)];
    for (size_t t = 0; t < e.size(); ++t) {
      const int64_t j = static_cast<int64_t>(t);
      a[i][0][j] = e.ids[t];
      a[i][1][j] = e.attention_mask.empty() ? 1 : e.attention_mask[t];
      if (rows > 2) a[i][2][j] = e.token_type_ids.empty() ? 0 : e.token_type_ids[t];
    }
  }
  return out;
}

void check_ids(const torch::Tensor& packed, int64_t vocab, const Tokenizer& tokenizer) {
  if (packed.numel() == 0) return;
  const int64_t top = packed.select(1, 0).max().item<int64_t>();
  if (top >= vocab) {
    throw Error(
        "the tokenizer (" + tokenizer.source() + ") gives token id " + std::to_string(top) +
        " but the model's vocabulary has " + std::to_string(vocab) +
        " entries; the tokenizer does not belong to this model (name the right one with --tokenizer)");
  }
}

ClassifyTensors encode_examples(const Tokenizer& tokenizer, const std::vector<TextExample>& examples,
                                const std::vector<std::string>& classes, int64_t max_length) {
  std::map<std::string, int64_t> index;
  for (size_t i = 0; i < classes.size(); ++i) index[classes[i]] = static_cast<int64_t>(i);
  EncodeOptions options;
  options.truncation = Truncation::kLongestFirst;
  options.max_length = static_cast<size_t>(max_length);
  std::vector<Encoding> encodings;
  encodings.reserve(examples.size());
  torch::Tensor labels = torch::empty({static_cast<int64_t>(examples.size())}, torch::kLong);
  int64_t truncated = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const TextExample& e = examples[i];
    auto it = index.find(e.label);
    if (it == index.end()) {
      std::string known;
      for (const auto& c : classes) known += (known.empty() ? "" : ", ") + c;
      throw Error(e.where + ": label '" + e.label + "' is not one of the run's classes (" + known + ")");
    }
    labels[static_cast<int64_t>(i)] = it->second;
    encodings.push_back(e.text_pair.empty() ? tokenizer.encode(e.text, options)
                                            : tokenizer.encode_pair(e.text, e.text_pair, options));
    truncated += was_cut(encodings.back(), e.text, 0) ||
                 (!e.text_pair.empty() && was_cut(encodings.back(), e.text_pair, 1));
  }
  return {pack_encodings(encodings, pad_id_of(tokenizer), 3), labels, truncated};
}

ClassifyTensors lm_tensors(const Tokenizer& tokenizer, const std::vector<std::string>& documents,
                           int64_t block_size, bool line_by_line, const std::string& source) {
  // A block predicts each token from those before it: one token predicts nothing (a NaN loss), 0 divides by
  // 0.
  if (block_size < 2 || block_size > kMaxSequenceLength)
    throw Error(source + ": block size " + std::to_string(block_size) + " is out of range (2.." +
                std::to_string(kMaxSequenceLength) + " tokens)");
  EncodeOptions options;
  const std::optional<int64_t> eos = tokenizer.eos_id();
  if (line_by_line) {
    options.truncation = Truncation::kLongestFirst;
    options.max_length = static_cast<size_t>(block_size - (eos ? 1 : 0));
    std::vector<Encoding> encodings = tokenizer.encode_batch(documents, options);
    int64_t truncated = 0;
    for (size_t d = 0; d < encodings.size(); ++d) truncated += was_cut(encodings[d], documents[d], 0);
    for (auto& e : encodings) {
      if (!eos) continue;
      e.ids.push_back(*eos);
      e.attention_mask.push_back(1);
      if (!e.token_type_ids.empty()) e.token_type_ids.push_back(0);
      e.tokens.push_back(tokenizer.id_to_token(*eos));
    }
    torch::Tensor inputs = pack_encodings(encodings, pad_id_of(tokenizer), 2);
    torch::Tensor labels = inputs.select(1, 0).masked_fill(inputs.select(1, 1).eq(0), -100).contiguous();
    return {inputs, labels, truncated};
  }
  std::vector<int64_t> ids;
  const std::vector<Encoding> encodings = tokenizer.encode_batch(documents, options);
  for (size_t d = 0; d < encodings.size(); ++d) {
    ids.insert(ids.end(), encodings[d].ids.begin(), encodings[d].ids.end());
    if (eos && encodings.size() > 1) ids.push_back(*eos);  // documents stay apart
  }
  const int64_t blocks = static_cast<int64_t>(ids.size()) / block_size;
  if (blocks == 0) {
    throw Error(source + ": the text has " + std::to_string(ids.size()) +
                " tokens, fewer than one block of " + std::to_string(block_size) +
                " (lower --block-size or give more text)");
  }
  // The remainder after the last whole block is dropped, as Hugging Face's run_clm group_texts does.
  torch::Tensor flat =
      torch::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + blocks * block_size), torch::kLong);
  torch::Tensor block_ids = flat.view({blocks, block_size});
  torch::Tensor inputs = torch::stack({block_ids, torch::ones_like(block_ids)}, 1);
  return {inputs, block_ids.clone(), 0};
}

ClassifyTensors chat_tensors(const Tokenizer& tokenizer, const ChatTemplate& chat,
                             const std::vector<std::vector<ChatMessage>>& conversations, int64_t block_size,
                             const std::string& source, ChatCounts* counts) {
  if (block_size < 2 || block_size > kMaxSequenceLength)
    throw Error(source + ": block size " + std::to_string(block_size) + " is out of range (2.." +
                std::to_string(kMaxSequenceLength) + " tokens)");
  const std::map<std::string, std::string> special = special_token_names(tokenizer);
  EncodeOptions options;
  options.add_special_tokens = false;  // apply_chat_template(tokenize=True): the template writes them
  std::vector<Encoding> encodings;
  std::vector<std::vector<int64_t>> labels;
  ChatCounts seen;
  for (size_t c = 0; c < conversations.size(); ++c) {
    const std::vector<ChatMessage>& messages = conversations[c];
    std::vector<std::pair<size_t, size_t>> spans;
    std::string text;
    try {
      text = render_chat(chat, messages, false, special);
      spans = assistant_spans(chat, messages, special);
    } catch (const Error& e) {
      throw Error(source + ": conversation " + std::to_string(c + 1) + ": " + e.what());
    }
    Encoding e = tokenizer.encode(text, options);
    if (e.size() > static_cast<size_t>(block_size)) {  // the start is kept: the first turns set the scene
      ++seen.truncated;
      e.ids.resize(static_cast<size_t>(block_size));
      e.offsets.resize(static_cast<size_t>(block_size));
      e.attention_mask.resize(static_cast<size_t>(block_size));
      e.tokens.resize(static_cast<size_t>(block_size));
      if (!e.token_type_ids.empty()) e.token_type_ids.resize(static_cast<size_t>(block_size));
    }
    std::vector<int64_t> row(e.size(), -100);
    int64_t trained = 0;
    for (size_t t = 0; t < e.size(); ++t) {
      for (const auto& [begin, end] : spans) {
        if (e.offsets[t].begin >= begin && e.offsets[t].begin < end) {
          row[t] = e.ids[t];
          ++trained;
          break;
        }
      }
    }
    seen.tokens += static_cast<int64_t>(e.size());
    if (trained == 0) {  // nothing to learn (no assistant turn, or all of it cut off): a row of -100 only
      ++seen.skipped;
      continue;
    }
    seen.assistant_tokens += trained;
    encodings.push_back(std::move(e));
    labels.push_back(std::move(row));
  }
  if (encodings.empty())
    throw Error(source + ": no conversation has an assistant turn within the first " +
                std::to_string(block_size) + " tokens, so there is nothing to learn");
  seen.conversations = static_cast<int64_t>(encodings.size());
  if (counts) *counts = seen;
  torch::Tensor inputs = pack_encodings(encodings, pad_id_of(tokenizer), 2);
  torch::Tensor label_tensor = torch::full({inputs.size(0), inputs.size(2)}, -100, torch::kLong);
  for (size_t r = 0; r < labels.size(); ++r)
    label_tensor[static_cast<int64_t>(r)]
        .narrow(0, 0, static_cast<int64_t>(labels[r].size()))
        .copy_(torch::tensor(labels[r], torch::kLong));
  return {inputs, label_tensor, seen.truncated};
}

std::pair<ClassifyTensors, ClassifyTensors> split_rows(const ClassifyTensors& all, double fraction,
                                                       bool shuffle, uint64_t seed) {
  const int64_t n = all.inputs.size(0);
  int64_t val = static_cast<int64_t>(std::llround(static_cast<double>(n) * fraction));
  val = std::clamp<int64_t>(val, fraction > 0 ? 1 : 0, n - 1);
  torch::Tensor order;
  if (shuffle) {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    std::mt19937_64 rng(seed);
    portable_shuffle(idx, rng);
    order = torch::tensor(idx, torch::kLong);
  } else {
    order = torch::arange(n, torch::kLong);  // text: the last part is validation, as nanoGPT splits
  }
  const torch::Tensor train_idx = order.narrow(0, 0, n - val), val_idx = order.narrow(0, n - val, val);
  return {{all.inputs.index_select(0, train_idx), all.labels.index_select(0, train_idx), all.truncated},
          {all.inputs.index_select(0, val_idx), all.labels.index_select(0, val_idx), 0}};
}

TextInputs classifier_inputs(const SequenceClassifierImpl& model, const torch::Tensor& x) {
  TextInputs inputs(x.select(1, 0), x.select(1, 1));
  if (model.reads_token_types() && x.size(1) > 2) inputs.token_type_ids = x.select(1, 2);
  return inputs;
}

Trainer::Forward forward_of(const std::shared_ptr<torch::nn::Module>& module, const std::string& task) {
  if (task == "text-classify") {
    if (auto classifier = std::dynamic_pointer_cast<SequenceClassifierImpl>(module))
      return [classifier](const torch::Tensor& x) {
        return classifier->forward(classifier_inputs(*classifier, x)).logits;
      };
    throw Error("text-classify needs a sequence classifier (" + model_class(task) + ", ...)");
  }
  auto model = std::dynamic_pointer_cast<CausalLMImpl>(module);
  if (!model) throw Error("causal-lm needs a causal language model (" + model_class(task) + ", ...)");
  return [model](const torch::Tensor& x) { return model->forward({x.select(1, 0), x.select(1, 1)}).logits; };
}

int64_t context_length(const torch::nn::Module& module) {
  if (auto classifier = dynamic_cast<const SequenceClassifierImpl*>(&module))
    return classifier->position_limit();
  if (auto lm = dynamic_cast<const CausalLMImpl*>(&module)) return lm->position_limit();
  return 512;
}

}  // namespace graft
