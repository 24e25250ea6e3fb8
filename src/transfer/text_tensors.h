// Text as a text model reads it: examples and documents encoded, packed as (N, K, L) token tensors and
// batched; the model class of each text task and its forward on those tensors. What training a text
// model and using a text run both need (text_task.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "graft/batches.h"
#include "graft/chat_template.h"
#include "graft/sequence_classifier.h"
#include "graft/text_data.h"
#include "graft/tokenizer.h"
#include "graft/trainer.h"

namespace graft {

// The Hugging Face class that does a text task on a model type (config.json's model_type; "" for the
// task's first: bert, gpt2): text-classify with {Bert,Roberta,XLMRoberta,DistilBert,Llama,Qwen2}
// ForSequenceClassification, causal-lm with GPT2LMHeadModel or {Llama,Qwen2}ForCausalLM.
// Throws graft::Error naming what graft does for another task or type.
std::string model_class(const std::string& task, const std::string& model_type = "");
// The text task a Hugging Face class does ("" for none).
std::string task_of_class(const std::string& architecture);
// The model_type of the config.json that goes with weights or a config (a Hugging Face folder, its
// model.safetensors or its config.json); "" when there is none to read.
std::string model_type_at(const std::string& path);
// Rows of the model's word-embedding matrix: its vocabulary size.
int64_t embedding_rows(torch::nn::Module& module);
// Positions the model can read (max_position_embeddings, n_positions).
int64_t context_length(const torch::nn::Module& module);
// A classifier's inputs from packed (N, K, L) tensors: ids (row 0), mask (row 1), and token types (row 2)
// where the model reads them.
TextInputs classifier_inputs(const SequenceClassifierImpl& model, const torch::Tensor& x);
// The task's forward on packed tensors: logits of (N, K, L) inputs.
Trainer::Forward forward_of(const std::shared_ptr<torch::nn::Module>& module, const std::string& task);

// Batches of packed token tensors, each cut to its longest unpadded row (dynamic padding): inputs
// (N, K, L) whose row 1 is the attention mask, labels (N) or (N, L).
class TokenBatchSource : public BatchSource {
 public:
  TokenBatchSource(torch::Tensor inputs, torch::Tensor labels, int64_t batch_size, bool shuffle)
      : inner_(std::move(inputs), std::move(labels), batch_size, shuffle) {}
  size_t num_batches() override { return inner_.num_batches(); }
  void start_epoch(int64_t epoch) override { inner_.start_epoch(epoch); }
  void set_seed(uint64_t seed) override { inner_.set_seed(seed); }
  std::optional<std::pair<torch::Tensor, torch::Tensor>> next() override {
    auto batch = inner_.next();
    if (!batch) return batch;
    const int64_t used = std::max<int64_t>(1, batch->first.select(1, 1).sum(1).max().item<int64_t>());
    if (used < batch->first.size(2)) {
      batch->first = batch->first.narrow(2, 0, used);
      if (batch->second.dim() == 2) batch->second = batch->second.narrow(1, 0, used);
    }
    return batch;
  }

 private:
  TensorBatchSource inner_;
};

// The id padding fills with: the tokenizer's pad token, else its eos (GPT-2 has no pad token: the
// tutorials pad with eos), else 0.
int64_t pad_id_of(const Tokenizer& tokenizer);
// Encodings packed as (N, K, L) rows of ids, mask, token types (K = 3) or ids, mask (K = 2), padded to
// the longest with pad_id.
torch::Tensor pack_encodings(const std::vector<Encoding>& encodings, int64_t pad_id, int64_t rows);
// Throws graft::Error when an id is beyond the model's vocabulary (the tokenizer is another model's).
void check_ids(const torch::Tensor& packed, int64_t vocab, const Tokenizer& tokenizer);

struct ClassifyTensors {
  torch::Tensor inputs, labels;
  int64_t truncated = 0;  // examples (or lines) that were longer than the length and were cut
};

// Labelled examples encoded to max_length (longest-first truncation, counted), labels by class index.
ClassifyTensors encode_examples(const Tokenizer& tokenizer, const std::vector<TextExample>& examples,
                                const std::vector<std::string>& classes, int64_t max_length);
// What chat_tensors found: conversations kept, those skipped (no assistant token within the block) and
// truncated, tokens in all and in assistant turns.
struct ChatCounts {
  int64_t conversations = 0, skipped = 0, truncated = 0, tokens = 0, assistant_tokens = 0;
};
// Conversations as a chat model is fine-tuned on them (TRL's assistant-only loss): each rendered by the
// chat template and encoded as apply_chat_template(tokenize=True) encodes it, one row per conversation
// (its first block_size tokens), the labels the ids of the tokens inside assistant turns (their end
// marker included) and -100 elsewhere and at padding. A conversation without an assistant token is left
// out; none with one throws, naming `source`.
ClassifyTensors chat_tensors(const Tokenizer& tokenizer, const ChatTemplate& chat,
                             const std::vector<std::vector<ChatMessage>>& conversations, int64_t block_size,
                             const std::string& source, ChatCounts* counts = nullptr);
// Causal-LM examples: packed blocks (inputs (N, 2, block), labels = ids) or, line by line, one example
// per document ending in eos, padded, with -100 labels on the padding.
ClassifyTensors lm_tensors(const Tokenizer& tokenizer, const std::vector<std::string>& documents,
                           int64_t block_size, bool line_by_line, const std::string& source);
// Rows split into training and validation: a seeded portable shuffle, or in order (the last part is
// validation, as nanoGPT splits text).
std::pair<ClassifyTensors, ClassifyTensors> split_rows(const ClassifyTensors& all, double fraction,
                                                       bool shuffle, uint64_t seed);

}  // namespace graft
