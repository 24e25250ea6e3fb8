// BERT (Devlin et al. 2018, arXiv:1810.04805), a port of Hugging Face transformers v4.31
// src/transformers/models/bert/modeling_bert.py: BertEmbeddings, BertSelfAttention (absolute positions,
// no cross-attention, no cache), BertSelfOutput, BertIntermediate, BertOutput, BertLayer, BertPooler,
// BertModel and BertForSequenceClassification, with the same operations in the same order so float32
// results agree with Hugging Face's to rounding. Fresh weights follow BertPreTrainedModel._init_weights.
// BertConfig's config.json reader takes configuration_bert.py's defaults (shared keys: hf_config.h).
#include "graft/bert.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "graft/json_file.h"
#include "layers/linear.h"
#include "models/common.h"
#include "models/hf_config.h"

namespace graft {
namespace {

namespace nn = torch::nn;

void check_divisible(const BertConfig& config) {
  if (config.hidden_size <= 0 || config.num_attention_heads <= 0 ||
      config.hidden_size % config.num_attention_heads != 0) {
    throw Error("BertConfig: hidden_size (" + std::to_string(config.hidden_size) +
                ") must be a positive multiple of num_attention_heads (" +
                std::to_string(config.num_attention_heads) + ")");
  }
}

}  // namespace

bool BertConfig::positions_after_padding() const {
  return model_type == "roberta" || model_type == "xlm-roberta";
}

BertConfig BertConfig::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  BertConfig config;
  std::string model_type = "bert";
  reader.get("model_type", model_type);
  if (model_type != "bert" && model_type != "roberta" && model_type != "xlm-roberta")
    reader.unsupported("model_type",
                       "expected \"bert\", \"roberta\" or \"xlm-roberta\" for this model class");
  if (model_type != "bert") {  // RobertaConfig's and XLMRobertaConfig's defaults
    config.vocab_size = model_type == "roberta" ? 50265 : 30522;
    config.pad_token_id = 1;
  }
  read_common(reader, config, model_type);
  reader.get_positive("vocab_size", config.vocab_size);
  read_encoder_keys(reader, config);
  reader.get_positive("max_position_embeddings", config.max_position_embeddings);
  reader.get_positive("type_vocab_size", config.type_vocab_size);
  reader.get("pad_token_id", config.pad_token_id);
  reader.get("classifier_dropout", config.classifier_dropout);
  if (config.pad_token_id && (*config.pad_token_id < 0 || *config.pad_token_id >= config.vocab_size)) {
    reader.unsupported("pad_token_id",
                       "must be a token id below vocab_size (" + std::to_string(config.vocab_size) + ")");
  }
  if (config.positions_after_padding()) {
    // Positions are numbered from pad_token_id + 1, so the table must hold more rows than that.
    if (!config.pad_token_id)
      reader.unsupported("pad_token_id", "RoBERTa numbers positions after the padding id, so it needs one");
    if (*config.pad_token_id + 1 >= config.max_position_embeddings)
      reader.unsupported("max_position_embeddings", "RoBERTa's positions start after pad_token_id (" +
                                                        std::to_string(*config.pad_token_id) +
                                                        "), so the table needs more rows than that");
  }
  std::string position_type = "absolute";
  reader.get("position_embedding_type", position_type);
  if (position_type != "absolute") {
    reader.unsupported("position_embedding_type",
                       "graft implements BERT's \"absolute\" position embeddings only");
  }
  bool flag = false;
  reader.get("is_decoder", flag);
  if (flag) reader.unsupported("is_decoder", "graft's BERT is an encoder (no causal mask, no cache)");
  reader.get("add_cross_attention", flag);
  if (flag) reader.unsupported("add_cross_attention", "graft's BERT has no cross-attention");
  return config;
}

json BertConfig::to_json() const {
  json out = common_json();
  out["vocab_size"] = vocab_size;
  out["hidden_size"] = hidden_size;
  out["num_hidden_layers"] = num_hidden_layers;
  out["num_attention_heads"] = num_attention_heads;
  out["intermediate_size"] = intermediate_size;
  out["hidden_act"] = hidden_act;
  out["hidden_dropout_prob"] = hidden_dropout_prob;
  out["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  out["max_position_embeddings"] = max_position_embeddings;
  out["type_vocab_size"] = type_vocab_size;
  out["layer_norm_eps"] = layer_norm_eps;
  out["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  out["classifier_dropout"] = classifier_dropout ? json(*classifier_dropout) : json(nullptr);
  out["position_embedding_type"] = "absolute";
  return out;
}

BertConfig BertConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

torch::Tensor extended_attention_mask(const torch::Tensor& attention_mask, torch::ScalarType dtype) {
  // (B, T) -> (B, 1, 1, T): broadcast over heads and query positions.
  torch::Tensor mask = attention_mask.unsqueeze(1).unsqueeze(2).to(dtype);
  double lowest = 0;  // torch.finfo(dtype).min
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, dtype, "extended_attention_mask", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  return (1.0 - mask) * lowest;
}

BertEmbeddingsImpl::BertEmbeddingsImpl(const BertConfig& config) {
  nn::EmbeddingOptions word_options(config.vocab_size, config.hidden_size);
  if (config.pad_token_id) word_options.padding_idx(*config.pad_token_id);
  word_embeddings = register_module("word_embeddings", nn::Embedding(word_options));
  nn::EmbeddingOptions position_options(config.max_position_embeddings, config.hidden_size);
  if (config.positions_after_padding()) {
    position_padding_idx = *config.pad_token_id;
    position_options.padding_idx(*position_padding_idx);  // as RobertaEmbeddings builds it
  }
  position_embeddings = register_module("position_embeddings", nn::Embedding(position_options));
  token_type_embeddings =
      register_module("token_type_embeddings", nn::Embedding(config.type_vocab_size, config.hidden_size));
  LayerNorm = register_module(
      "LayerNorm", FloatLayerNorm(nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
}

int64_t BertEmbeddingsImpl::position_limit() const {
  const int64_t rows = position_embeddings->options.num_embeddings();
  return position_padding_idx ? rows - *position_padding_idx - 1 : rows;
}

torch::Tensor BertEmbeddingsImpl::forward(const torch::Tensor& input_ids, torch::Tensor token_type_ids,
                                          torch::Tensor position_ids) {
  const int64_t seq_length = input_ids.size(1);
  if (!position_ids.defined()) {
    if (seq_length > position_limit()) {
      throw Error("BertModel: " + std::to_string(seq_length) + " tokens, but max_position_embeddings (" +
                  std::to_string(position_embeddings->options.num_embeddings()) + ") allows " +
                  std::to_string(position_limit()) + "; truncate the input");
    }
    if (position_padding_idx) {
      // create_position_ids_from_input_ids: a running count of real tokens after padding_idx, and
      // padding_idx itself at pad tokens.
      const torch::Tensor real = input_ids.ne(*position_padding_idx).to(torch::kInt);
      position_ids = (torch::cumsum(real, 1).to(torch::kInt) * real).to(torch::kLong) + *position_padding_idx;
    } else {
      position_ids = torch::arange(seq_length, input_ids.options()).unsqueeze(0);  // (1, T)
    }
  }
  if (!token_type_ids.defined()) token_type_ids = torch::zeros_like(input_ids);
  torch::Tensor embeddings = word_embeddings(input_ids) + token_type_embeddings(token_type_ids);  // (B, T, C)
  embeddings = embeddings + position_embeddings(position_ids);
  return dropout(LayerNorm(embeddings));
}

BertSelfAttentionImpl::BertSelfAttentionImpl(const BertConfig& config) {
  check_divisible(config);
  num_attention_heads = config.num_attention_heads;
  attention_head_size = config.hidden_size / config.num_attention_heads;
  query = register_module("query", nn::Linear(config.hidden_size, config.hidden_size));
  key = register_module("key", nn::Linear(config.hidden_size, config.hidden_size));
  value = register_module("value", nn::Linear(config.hidden_size, config.hidden_size));
  dropout = register_module("dropout", Dropout(config.attention_probs_dropout_prob));
}

torch::Tensor BertSelfAttentionImpl::forward(const torch::Tensor& hidden_states,
                                             const torch::Tensor& attention_mask) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1);
  // (B, T, C) -> (B, heads, T, head_size)
  auto split_heads = [&](const torch::Tensor& x) {
    return x.view({batch, length, num_attention_heads, attention_head_size}).permute({0, 2, 1, 3});
  };
  torch::Tensor q = split_heads(linear(query, hidden_states));
  torch::Tensor k = split_heads(linear(key, hidden_states));
  torch::Tensor v = split_heads(linear(value, hidden_states));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2));  // (B, heads, T, T)
  scores = scores / std::sqrt(static_cast<double>(attention_head_size));
  if (attention_mask.defined()) scores = scores + attention_mask;
  torch::Tensor probs = dropout(torch::softmax(scores, -1, torch::kFloat));
  torch::Tensor context = torch::matmul(probs, v).permute({0, 2, 1, 3}).contiguous();  // (B, T, heads, d)
  return context.view({batch, length, num_attention_heads * attention_head_size});
}

BertSelfOutputImpl::BertSelfOutputImpl(const BertConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.hidden_size));
  LayerNorm = register_module(
      "LayerNorm", FloatLayerNorm(nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
}

torch::Tensor BertSelfOutputImpl::forward(const torch::Tensor& hidden_states,
                                          const torch::Tensor& input_tensor) {
  return LayerNorm(dropout(linear(dense, hidden_states)) + input_tensor);
}

BertAttentionImpl::BertAttentionImpl(const BertConfig& config) {
  self = register_module("self", BertSelfAttention(config));
  output = register_module("output", BertSelfOutput(config));
}

torch::Tensor BertAttentionImpl::forward(const torch::Tensor& hidden_states,
                                         const torch::Tensor& attention_mask) {
  return output(self(hidden_states, attention_mask), hidden_states);
}

BertIntermediateImpl::BertIntermediateImpl(const BertConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.intermediate_size));
  act = hf_activation(config.hidden_act, "BertConfig.hidden_act");
}

torch::Tensor BertIntermediateImpl::forward(const torch::Tensor& hidden_states) {
  return act(linear(dense, hidden_states));
}

BertOutputImpl::BertOutputImpl(const BertConfig& config) {
  dense = register_module("dense", nn::Linear(config.intermediate_size, config.hidden_size));
  LayerNorm = register_module(
      "LayerNorm", FloatLayerNorm(nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
  dropout = register_module("dropout", Dropout(config.hidden_dropout_prob));
}

torch::Tensor BertOutputImpl::forward(const torch::Tensor& hidden_states, const torch::Tensor& input_tensor) {
  return LayerNorm(dropout(linear(dense, hidden_states)) + input_tensor);
}

BertLayerImpl::BertLayerImpl(const BertConfig& config) {
  attention = register_module("attention", BertAttention(config));
  intermediate = register_module("intermediate", BertIntermediate(config));
  output = register_module("output", BertOutput(config));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& hidden_states,
                                     const torch::Tensor& attention_mask) {
  torch::Tensor attention_output = attention(hidden_states, attention_mask);
  return output(intermediate(attention_output), attention_output);
}

BertPoolerImpl::BertPoolerImpl(const BertConfig& config) {
  dense = register_module("dense", nn::Linear(config.hidden_size, config.hidden_size));
}

torch::Tensor BertPoolerImpl::forward(const torch::Tensor& hidden_states) {
  return torch::tanh(linear(dense, hidden_states.select(1, 0)));  // the [CLS] token
}

BertEncoderImpl::BertEncoderImpl(const BertConfig& config) {
  layer = register_module("layer", nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layer->push_back(BertLayer(config));
}

BertModelImpl::BertModelImpl(const BertConfig& config, bool add_pooling_layer) : config_(config) {
  check_divisible(config);
  embeddings = register_module("embeddings", BertEmbeddings(config));
  encoder = register_module("encoder", BertEncoder(config));
  if (add_pooling_layer) pooler = register_module("pooler", BertPooler(config));
  init_hf_weights(*this, config.initializer_range);
}

EncoderOutput BertModelImpl::forward(const TextInputs& inputs) {
  const torch::Tensor& input_ids = inputs.input_ids;
  if (!input_ids.defined() || input_ids.dim() != 2) {
    throw Error("BertModel: input_ids must be a (batch, length) tensor of token ids, got " +
                (input_ids.defined() ? shape_str(input_ids.sizes().vec()) : std::string("none")));
  }
  for (const auto* named : {&inputs.attention_mask, &inputs.token_type_ids}) {
    if (named->defined() && named->sizes() != input_ids.sizes()) {
      throw ShapeMismatch("BertModel", named == &inputs.attention_mask ? "attention_mask" : "token_type_ids",
                          input_ids.sizes().vec(), named->sizes().vec());
    }
  }
  check_token_ids(input_ids, embeddings->word_embeddings->options.num_embeddings(), "BertModel", "input_ids");
  check_token_ids(inputs.token_type_ids, embeddings->token_type_embeddings->options.num_embeddings(),
                  "BertModel", "token_type_ids");
  check_attention_mask(inputs.attention_mask, "BertModel");
  const torch::ScalarType dtype = embeddings->word_embeddings->weight.scalar_type();
  torch::Tensor mask = inputs.attention_mask.defined() ? inputs.attention_mask : torch::ones_like(input_ids);
  torch::Tensor additive_mask = extended_attention_mask(mask, dtype);  // (B, 1, 1, T)

  EncoderOutput out;
  const bool keep = inputs.output_hidden_states || config_.output_hidden_states;
  torch::Tensor hidden = embeddings(input_ids, inputs.token_type_ids, inputs.position_ids);  // (B, T, C)
  for (const auto& module : *encoder->layer) {
    if (keep) out.hidden_states.push_back(hidden);
    hidden = module->as<BertLayerImpl>()->forward(hidden, additive_mask);
  }
  if (keep) out.hidden_states.push_back(hidden);
  out.last_hidden_state = hidden;
  if (pooler) out.pooler_output = pooler(hidden);
  return out;
}

BertForSequenceClassificationImpl::BertForSequenceClassificationImpl(const BertConfig& config)
    : config_(config) {
  bert = register_module("bert", BertModel(config));
  dropout =
      register_module("dropout", Dropout(config.classifier_dropout.value_or(config.hidden_dropout_prob)));
  classifier = register_module("classifier", nn::Linear(config.hidden_size, config.num_labels()));
  init_hf_weights(*classifier, config.initializer_range);
}

torch::Tensor BertForSequenceClassificationImpl::features(const TextInputs& inputs) {
  return bert(inputs).pooler_output;
}

json BertForSequenceClassificationImpl::config_json(const std::vector<std::string>& labels) const {
  BertConfig config = config_;
  config.id2label = labels;
  config.problem_type = "single_label_classification";
  return config.to_json();
}

ClassifierOutput BertForSequenceClassificationImpl::forward(const TextInputs& inputs) {
  ClassifierOutput out;
  out.base = bert(inputs);
  out.logits = linear(classifier, dropout(out.base.pooler_output));  // (B, num_labels)
  if (inputs.labels.defined())
    out.loss = hf_classification_loss(out.logits, inputs.labels, config_.problem_type);
  return out;
}

void BertForSequenceClassificationImpl::reset_classifier(int64_t num_labels) {
  if (num_labels <= 0) {
    throw Error("BertForSequenceClassification: num_labels must be >= 1, got " + std::to_string(num_labels));
  }
  const torch::Tensor like = classifier->weight;
  classifier = replace_module("classifier", nn::Linear(config_.hidden_size, num_labels));
  init_hf_weights(*classifier, config_.initializer_range);
  classifier->to(like.device(), like.scalar_type());
  config_.id2label.clear();
  config_.set_num_labels(num_labels);
}

}  // namespace graft
