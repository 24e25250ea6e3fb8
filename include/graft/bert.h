// BERT (Devlin et al. 2018, arXiv:1810.04805) as Hugging Face transformers v4.31
// models/bert/modeling_bert.py builds it (absolute position embeddings, encoder only). Every submodule is
// registered under Hugging Face's name (embeddings.LayerNorm, encoder.layer.N.attention.self.query, ...),
// so a Hugging Face model.safetensors loads with no renaming and graft's saved weights load in Python.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <optional>
#include <vector>

#include "graft/dropout.h"
#include "graft/layer_norm.h"
#include "graft/sequence_classifier.h"
#include "graft/transformers.h"

namespace graft {

// word + position + token type embeddings, LayerNorm, dropout.
class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertConfig& config);
  // (B, T) ids -> (B, T, hidden)
  torch::Tensor forward(const torch::Tensor& input_ids, torch::Tensor token_type_ids,
                        torch::Tensor position_ids);
  // The longest input without position_ids.
  int64_t position_limit() const;

  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  FloatLayerNorm LayerNorm{nullptr};
  Dropout dropout{nullptr};
  // RoBERTa's numbering (modeling_roberta.py create_position_ids_from_input_ids): real tokens count from
  // padding_idx + 1, pad tokens sit at padding_idx. Unset: BERT's 0 .. T-1.
  std::optional<int64_t> position_padding_idx;
};
TORCH_MODULE(BertEmbeddings);

class BertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit BertSelfAttentionImpl(const BertConfig& config);
  // (B, T, hidden), additive mask (B, 1, 1, T) or undefined -> (B, T, hidden) context
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& attention_mask);

  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
  Dropout dropout{nullptr};
  int64_t num_attention_heads = 0, attention_head_size = 0;
};
TORCH_MODULE(BertSelfAttention);

// dense, dropout, LayerNorm(x + input): closes the attention sub-block.
class BertSelfOutputImpl : public torch::nn::Module {
 public:
  explicit BertSelfOutputImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& input_tensor);

  torch::nn::Linear dense{nullptr};
  FloatLayerNorm LayerNorm{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(BertSelfOutput);

class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& attention_mask);

  BertSelfAttention self{nullptr};
  BertSelfOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

class BertIntermediateImpl : public torch::nn::Module {
 public:
  explicit BertIntermediateImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // (B, T, hidden) -> (B, T, intermediate)

  torch::nn::Linear dense{nullptr};
  Activation act;
};
TORCH_MODULE(BertIntermediate);

// Hugging Face's BertOutput: dense back to hidden, dropout, LayerNorm(x + attention output).
class BertOutputImpl : public torch::nn::Module {
 public:
  explicit BertOutputImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& input_tensor);

  torch::nn::Linear dense{nullptr};
  FloatLayerNorm LayerNorm{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(BertOutput);

class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& attention_mask);

  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertOutput output{nullptr};
};
TORCH_MODULE(BertLayer);

// First token's hidden state through dense + tanh.
class BertPoolerImpl : public torch::nn::Module {
 public:
  explicit BertPoolerImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);  // (B, T, hidden) -> (B, hidden)

  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(BertPooler);

// Holds `layer`, a ModuleList of BertLayer, as Hugging Face's BertEncoder does.
class BertEncoderImpl : public torch::nn::Module {
 public:
  explicit BertEncoderImpl(const BertConfig& config);

  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(BertEncoder);

class BertModelImpl : public torch::nn::Module {
 public:
  explicit BertModelImpl(const BertConfig& config, bool add_pooling_layer = true);
  EncoderOutput forward(const TextInputs& inputs);

  const BertConfig& config() const { return config_; }

  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};  // null without add_pooling_layer

 private:
  BertConfig config_;
};
TORCH_MODULE(BertModel);

// BertModel + dropout + Linear classifier on the pooled output; Hugging Face's loss when labels are given.
class BertForSequenceClassificationImpl : public SequenceClassifierImpl {
 public:
  explicit BertForSequenceClassificationImpl(const BertConfig& config);
  ClassifierOutput forward(const TextInputs& inputs) override;
  torch::Tensor features(const TextInputs& inputs) override;  // the pooled output
  bool reads_token_types() const override { return true; }
  int64_t position_limit() const override { return bert->embeddings->position_limit(); }
  const std::vector<std::string>& labels() const override { return config_.id2label; }
  nlohmann::json config_json(const std::vector<std::string>& labels) const override;

  // A fresh classifier of num_labels outputs (Hugging Face's init: normal(0, initializer_range), zero
  // bias), on the device and dtype of the old one; labels are renamed LABEL_i.
  void reset_classifier(int64_t num_labels);
  const BertConfig& config() const { return config_; }

  BertModel bert{nullptr};
  Dropout dropout{nullptr};
  torch::nn::Linear classifier{nullptr};

 private:
  BertConfig config_;
};
TORCH_MODULE(BertForSequenceClassification);

// (B, T) 0/1 mask -> (B, 1, 1, T) additive mask in `dtype`: 0 where attended, the dtype's lowest value
// where masked (Hugging Face's get_extended_attention_mask for an encoder).
torch::Tensor extended_attention_mask(const torch::Tensor& attention_mask, torch::ScalarType dtype);

}  // namespace graft
