// RoBERTa (Liu et al. 2019, arXiv:1907.11692) and XLM-R as Hugging Face transformers v4.31
// models/roberta/modeling_roberta.py builds them. The encoder is BERT's (graft/bert.h) with RoBERTa's
// position numbering (BertConfig::positions_after_padding), so RobertaModel is a BertModel built from a
// "roberta" config; what is RoBERTa's own is the classification head, a two-layer MLP on the first token
// (<s>) instead of BERT's pooler. Names are Hugging Face's (roberta.encoder.layer.N..., classifier.dense,
// classifier.out_proj), so a Hub model.safetensors loads with no renaming.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "graft/bert.h"
#include "graft/dropout.h"
#include "graft/sequence_classifier.h"
#include "graft/transformers.h"

namespace graft {

using RobertaModel = BertModel;

// dropout, dense, tanh, dropout, out_proj on the first token's last hidden state.
class RobertaClassificationHeadImpl : public torch::nn::Module {
 public:
  explicit RobertaClassificationHeadImpl(const BertConfig& config);
  torch::Tensor forward(const torch::Tensor& features);  // (B, T, hidden) -> (B, num_labels)

  torch::nn::Linear dense{nullptr}, out_proj{nullptr};
  Dropout dropout{nullptr};
};
TORCH_MODULE(RobertaClassificationHead);

// RobertaModel without a pooler + RobertaClassificationHead; Hugging Face's loss when labels are given.
// XLMRobertaForSequenceClassification is the same class with an "xlm-roberta" config.
class RobertaForSequenceClassificationImpl : public SequenceClassifierImpl {
 public:
  explicit RobertaForSequenceClassificationImpl(const BertConfig& config);
  ClassifierOutput forward(const TextInputs& inputs) override;
  torch::Tensor features(const TextInputs& inputs) override;  // the first token's last hidden state
  bool reads_token_types() const override { return true; }
  int64_t position_limit() const override { return roberta->embeddings->position_limit(); }
  const std::vector<std::string>& labels() const override { return config_.id2label; }
  nlohmann::json config_json(const std::vector<std::string>& labels) const override;
  const BertConfig& config() const { return config_; }

  RobertaModel roberta{nullptr};
  RobertaClassificationHead classifier{nullptr};

 private:
  BertConfig config_;
};
TORCH_MODULE(RobertaForSequenceClassification);

}  // namespace graft
