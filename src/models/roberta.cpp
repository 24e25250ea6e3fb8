// RoBERTa's sequence classifier, a port of Hugging Face transformers v4.31
// src/transformers/models/roberta/modeling_roberta.py: RobertaClassificationHead and
// RobertaForSequenceClassification (whose RobertaModel has no pooler), with the same operations in the same
// order. The encoder and RoBERTa's position numbering are in bert.cpp.
#include "graft/roberta.h"

#include <nlohmann/json.hpp>

#include "layers/linear.h"
#include "models/common.h"

namespace graft {

namespace nn = torch::nn;

RobertaClassificationHeadImpl::RobertaClassificationHeadImpl(const BertConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.hidden_size));
  dropout =
      register_module("dropout", Dropout(config.classifier_dropout.value_or(config.hidden_dropout_prob)));
  out_proj = register_module("out_proj", nn::Linear(config.hidden_size, config.num_labels()));
}

torch::Tensor RobertaClassificationHeadImpl::forward(const torch::Tensor& features) {
  torch::Tensor x = dropout(features.select(1, 0));  // <s>, RoBERTa's [CLS]
  x = torch::tanh(linear(dense, x));
  return linear(out_proj, dropout(x));
}

RobertaForSequenceClassificationImpl::RobertaForSequenceClassificationImpl(const BertConfig& config)
    : config_(config) {
  roberta = register_module("roberta", RobertaModel(config, /*add_pooling_layer=*/false));
  classifier = register_module("classifier", RobertaClassificationHead(config));
  init_hf_weights(*classifier, config.initializer_range);
}

ClassifierOutput RobertaForSequenceClassificationImpl::forward(const TextInputs& inputs) {
  ClassifierOutput out;
  out.base = roberta(inputs);
  out.logits = classifier(out.base.last_hidden_state);  // (B, num_labels)
  if (inputs.labels.defined())
    out.loss = hf_classification_loss(out.logits, inputs.labels, config_.problem_type);
  return out;
}

torch::Tensor RobertaForSequenceClassificationImpl::features(const TextInputs& inputs) {
  return roberta(inputs).last_hidden_state.select(1, 0);
}

nlohmann::json RobertaForSequenceClassificationImpl::config_json(
    const std::vector<std::string>& labels) const {
  BertConfig config = config_;
  config.id2label = labels;
  config.problem_type = "single_label_classification";
  return config.to_json();
}

}  // namespace graft
