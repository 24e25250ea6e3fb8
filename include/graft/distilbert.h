// DistilBERT (Sanh et al. 2019, arXiv:1910.01108) as Hugging Face transformers v4.31
// models/distilbert/modeling_distilbert.py builds it: BERT's encoder distilled to six layers, without token
// types or a pooler, with its own names (distilbert.embeddings, transformer.layer.N.attention.q_lin,
// sa_layer_norm, ffn.lin1, output_layer_norm, pre_classifier), so a Hub model.safetensors loads with no
// renaming.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

#include "graft/dropout.h"
#include "graft/layer_norm.h"
#include "graft/sequence_classifier.h"
#include "graft/transformers.h"

namespace graft {

// DistilBertConfig (configuration_distilbert.py). Defaults are distilbert-base-uncased's.
struct DistilBertConfig : HfCommonConfig {
  int64_t vocab_size = 30522;
  int64_t max_position_embeddings = 512;
  int64_t n_layers = 6;
  int64_t n_heads = 12;
  int64_t dim = 768;
  int64_t hidden_dim = 3072;  // width of the feed-forward layer
  double dropout = 0.1;
  double attention_dropout = 0.1;
  std::string activation = "gelu";
  double seq_classif_dropout = 0.2;  // before the classifier
  int64_t pad_token_id = 0;          // its word embedding gets no gradient

  DistilBertConfig() { set_num_labels(2); }
  static DistilBertConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  // config.json of these values, read back by from_json (and by transformers' DistilBertConfig) to the same.
  nlohmann::json to_json() const;
};

// Word + position embeddings (no token types), LayerNorm, dropout. Hugging Face's class is `Embeddings`.
class DistilBertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit DistilBertEmbeddingsImpl(const DistilBertConfig& config);
  torch::Tensor forward(const torch::Tensor& input_ids);  // (B, T) -> (B, T, dim)

  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  FloatLayerNorm LayerNorm{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(DistilBertEmbeddings);

// Hugging Face's MultiHeadSelfAttention: q_lin, k_lin, v_lin, out_lin; masked scores filled with the
// dtype's lowest value.
class DistilBertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit DistilBertSelfAttentionImpl(const DistilBertConfig& config);
  // (B, T, dim), (B, T) 0/1 mask -> (B, T, dim)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  torch::nn::Linear q_lin{nullptr}, k_lin{nullptr}, v_lin{nullptr}, out_lin{nullptr};
  Dropout dropout{nullptr};
  int64_t n_heads = 0;
};
TORCH_MODULE(DistilBertSelfAttention);

// Hugging Face's FFN: lin1, activation, lin2, dropout.
class DistilBertFFNImpl : public torch::nn::Module {
 public:
  explicit DistilBertFFNImpl(const DistilBertConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear lin1{nullptr}, lin2{nullptr};
  Dropout dropout{nullptr};
  Activation activation;
};
TORCH_MODULE(DistilBertFFN);

// Hugging Face's TransformerBlock: attention, sa_layer_norm(x + attention), ffn, output_layer_norm.
class DistilBertBlockImpl : public torch::nn::Module {
 public:
  explicit DistilBertBlockImpl(const DistilBertConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  DistilBertSelfAttention attention{nullptr};
  FloatLayerNorm sa_layer_norm{nullptr};
  DistilBertFFN ffn{nullptr};
  FloatLayerNorm output_layer_norm{nullptr};
};
TORCH_MODULE(DistilBertBlock);

// Holds `layer`, a ModuleList of blocks, as Hugging Face's Transformer does.
class DistilBertTransformerImpl : public torch::nn::Module {
 public:
  explicit DistilBertTransformerImpl(const DistilBertConfig& config);

  torch::nn::ModuleList layer{nullptr};
};
TORCH_MODULE(DistilBertTransformer);

class DistilBertModelImpl : public torch::nn::Module {
 public:
  explicit DistilBertModelImpl(const DistilBertConfig& config);
  // input_ids and attention_mask (token_type_ids refused); hidden_states: the embeddings, then each layer's
  // output.
  EncoderOutput forward(const TextInputs& inputs);
  const DistilBertConfig& config() const { return config_; }

  DistilBertEmbeddings embeddings{nullptr};
  DistilBertTransformer transformer{nullptr};

 private:
  DistilBertConfig config_;
};
TORCH_MODULE(DistilBertModel);

// DistilBertModel, then on the first token: pre_classifier, ReLU, dropout, classifier.
class DistilBertForSequenceClassificationImpl : public SequenceClassifierImpl {
 public:
  explicit DistilBertForSequenceClassificationImpl(const DistilBertConfig& config);
  ClassifierOutput forward(const TextInputs& inputs) override;
  torch::Tensor features(const TextInputs& inputs) override;  // the first token's last hidden state
  bool reads_token_types() const override { return false; }
  int64_t position_limit() const override { return config().max_position_embeddings; }
  const std::vector<std::string>& labels() const override { return config_.id2label; }
  nlohmann::json config_json(const std::vector<std::string>& labels) const override;
  const DistilBertConfig& config() const { return config_; }

  DistilBertModel distilbert{nullptr};
  torch::nn::Linear pre_classifier{nullptr}, classifier{nullptr};
  Dropout dropout{nullptr};

 private:
  DistilBertConfig config_;
};
TORCH_MODULE(DistilBertForSequenceClassification);

}  // namespace graft
