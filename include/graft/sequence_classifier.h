// What every text classifier of graft shares (BERT, RoBERTa, DistilBERT, the Llama family): the inputs of
// Hugging Face's *ForSequenceClassification classes and one interface that the text task layer (training,
// eval, predict, features, export, `graft forward`) holds them through, so a new family needs no change
// there.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "graft/transformers.h"

namespace graft {

// A batch of token sequences. Only input_ids is required.
struct TextInputs {
  TextInputs() = default;
  // model->forward({ids, mask}) and model->forward(ids) read as Hugging Face's model(ids, mask).
  TextInputs(torch::Tensor ids, torch::Tensor mask = {})  // NOLINT(google-explicit-constructor)
      : input_ids(std::move(ids)), attention_mask(std::move(mask)) {}
  torch::Tensor input_ids;       // (B, T) int64 token ids
  torch::Tensor attention_mask;  // (B, T) 1 = attend, 0 = padding; undefined: all ones
  torch::Tensor token_type_ids;  // (B, T) segment ids; undefined: zeros (models without segments refuse it)
  torch::Tensor position_ids;    // (B, T) or (1, T); undefined: the model's own numbering
  torch::Tensor labels;          // (B,) class ids (float for regression); undefined: no loss
  bool output_hidden_states = false;
};

// A model with a sequence-classification head: BertForSequenceClassification,
// RobertaForSequenceClassification, DistilBertForSequenceClassification, LlamaForSequenceClassification.
class SequenceClassifierImpl : public torch::nn::Module {
 public:
  // Logits (B, num_labels), Hugging Face's loss of problem_type when labels are given, and the base
  // model's outputs.
  virtual ClassifierOutput forward(const TextInputs& inputs) = 0;
  // (B, hidden), one vector per row for `graft features`: what the head reads where it reads one token's
  // state (BERT's pooled output, RoBERTa's and DistilBERT's first token); a decoder's last hidden states
  // averaged over the attended tokens.
  virtual torch::Tensor features(const TextInputs& inputs) = 0;
  // Whether forward reads token_type_ids (BERT, RoBERTa); the others refuse them, as their Python
  // forward() has no such argument.
  virtual bool reads_token_types() const = 0;
  // The longest sequence the position embeddings allow.
  virtual int64_t position_limit() const = 0;
  // The label names (config.json's id2label), one per output.
  virtual const std::vector<std::string>& labels() const = 0;
  // config.json of this model with `labels` as its id2label (the typed configuration's to_json).
  virtual nlohmann::json config_json(const std::vector<std::string>& labels) const = 0;
};

// Refuses token_type_ids for a model whose forward() has none (DistilBERT, Llama), naming the class.
void refuse_token_types(const TextInputs& inputs, const char* model);

}  // namespace graft
