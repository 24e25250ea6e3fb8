// DistilBERT, a port of Hugging Face transformers v4.31 src/transformers/models/distilbert/
// modeling_distilbert.py: Embeddings, MultiHeadSelfAttention, FFN, TransformerBlock, Transformer,
// DistilBertModel and DistilBertForSequenceClassification, with the same operations in the same order
// (the query scaled before the product, masked scores filled rather than added to) so float32 results agree
// with Hugging Face's to rounding. DistilBertConfig's reader takes configuration_distilbert.py's defaults.
#include "graft/distilbert.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "graft/json_file.h"
#include "layers/linear.h"
#include "models/common.h"
#include "models/hf_config.h"

namespace graft {

namespace nn = torch::nn;

// DistilBERT's layer norms have a fixed epsilon (modeling_distilbert.py's nn.LayerNorm(dim, eps=1e-12)).
constexpr double kLayerNormEps = 1e-12;

DistilBertConfig DistilBertConfig::from_json(const nlohmann::json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  DistilBertConfig config;
  read_common(reader, config, "distilbert");
  reader.get_positive("vocab_size", config.vocab_size);
  reader.get_positive("max_position_embeddings", config.max_position_embeddings);
  reader.get_positive("n_layers", config.n_layers);
  reader.get_positive("n_heads", config.n_heads);
  reader.get_positive("dim", config.dim);
  reader.get_positive("hidden_dim", config.hidden_dim);
  check_heads(reader, config.dim, "dim", config.n_heads, "n_heads");
  reader.get_probability("dropout", config.dropout);
  reader.get_probability("attention_dropout", config.attention_dropout);
  reader.get_probability("seq_classif_dropout", config.seq_classif_dropout);
  reader.get("activation", config.activation);
  check_activation(reader, "activation", config.activation);
  reader.get("pad_token_id", config.pad_token_id);
  if (config.pad_token_id < 0 || config.pad_token_id >= config.vocab_size) {
    reader.unsupported("pad_token_id",
                       "must be a token id below vocab_size (" + std::to_string(config.vocab_size) + ")");
  }
  bool sinusoidal = false;
  reader.get("sinusoidal_pos_embds", sinusoidal);
  if (sinusoidal) {
    reader.unsupported(
        "sinusoidal_pos_embds",
        "graft implements DistilBERT's learned position embeddings only (every Hub checkpoint of "
        "distilbert-base has false)");
  }
  return config;
}

nlohmann::json DistilBertConfig::to_json() const {
  nlohmann::json out = common_json();
  out["vocab_size"] = vocab_size;
  out["max_position_embeddings"] = max_position_embeddings;
  out["sinusoidal_pos_embds"] = false;
  out["n_layers"] = n_layers;
  out["n_heads"] = n_heads;
  out["dim"] = dim;
  out["hidden_dim"] = hidden_dim;
  out["dropout"] = dropout;
  out["attention_dropout"] = attention_dropout;
  out["activation"] = activation;
  out["seq_classif_dropout"] = seq_classif_dropout;
  out["pad_token_id"] = pad_token_id;
  return out;
}

DistilBertEmbeddingsImpl::DistilBertEmbeddingsImpl(const DistilBertConfig& config) {
  word_embeddings = register_module(
      "word_embeddings",
      nn::Embedding(nn::EmbeddingOptions(config.vocab_size, config.dim).padding_idx(config.pad_token_id)));
  position_embeddings =
      register_module("position_embeddings", nn::Embedding(config.max_position_embeddings, config.dim));
  LayerNorm =
      register_module("LayerNorm", FloatLayerNorm(nn::LayerNormOptions({config.dim}).eps(kLayerNormEps)));
  dropout = register_module("dropout", Dropout(config.dropout));
}

torch::Tensor DistilBertEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  const int64_t length = input_ids.size(1), limit = position_embeddings->options.num_embeddings();
  if (length > limit) {
    throw Error("DistilBertModel: " + std::to_string(length) + " tokens, but max_position_embeddings is " +
                std::to_string(limit) + "; truncate the input");
  }
  const torch::Tensor positions = torch::arange(length, input_ids.options()).unsqueeze(0);  // (1, T)
  return dropout(LayerNorm(word_embeddings(input_ids) + position_embeddings(positions)));
}

DistilBertSelfAttentionImpl::DistilBertSelfAttentionImpl(const DistilBertConfig& config)
    : n_heads(config.n_heads) {
  q_lin = register_module("q_lin", nn::Linear(config.dim, config.dim));
  k_lin = register_module("k_lin", nn::Linear(config.dim, config.dim));
  v_lin = register_module("v_lin", nn::Linear(config.dim, config.dim));
  out_lin = register_module("out_lin", nn::Linear(config.dim, config.dim));
  dropout = register_module("dropout", Dropout(config.attention_dropout));
}

torch::Tensor DistilBertSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t batch = x.size(0), dim = x.size(2), head_dim = dim / n_heads;
  auto shape = [&](const torch::Tensor& t) {  // (B, T, dim) -> (B, heads, T, head_dim)
    return t.view({batch, -1, n_heads, head_dim}).transpose(1, 2);
  };
  torch::Tensor q = shape(linear(q_lin, x)), k = shape(linear(k_lin, x)), v = shape(linear(v_lin, x));
  q = q / std::sqrt(static_cast<double>(head_dim));
  torch::Tensor scores = torch::matmul(q, k.transpose(2, 3));  // (B, heads, T, T)
  const torch::Tensor masked = mask.eq(0).view({batch, 1, 1, -1}).expand_as(scores);
  scores = scores.masked_fill(masked, lowest_of(scores.scalar_type()));
  const torch::Tensor weights = dropout(torch::softmax(scores, -1));
  const torch::Tensor context = torch::matmul(weights, v).transpose(1, 2).contiguous().view({batch, -1, dim});
  return linear(out_lin, context);
}

DistilBertFFNImpl::DistilBertFFNImpl(const DistilBertConfig& config) {
  lin1 = register_module("lin1", nn::Linear(config.dim, config.hidden_dim));
  lin2 = register_module("lin2", nn::Linear(config.hidden_dim, config.dim));
  dropout = register_module("dropout", Dropout(config.dropout));
  activation = hf_activation(config.activation, "DistilBertConfig.activation");
}

torch::Tensor DistilBertFFNImpl::forward(const torch::Tensor& x) {
  return dropout(linear(lin2, activation(linear(lin1, x))));
}

DistilBertBlockImpl::DistilBertBlockImpl(const DistilBertConfig& config) {
  attention = register_module("attention", DistilBertSelfAttention(config));
  sa_layer_norm =
      register_module("sa_layer_norm", FloatLayerNorm(nn::LayerNormOptions({config.dim}).eps(kLayerNormEps)));
  ffn = register_module("ffn", DistilBertFFN(config));
  output_layer_norm = register_module("output_layer_norm",
                                      FloatLayerNorm(nn::LayerNormOptions({config.dim}).eps(kLayerNormEps)));
}

torch::Tensor DistilBertBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const torch::Tensor sa_output = sa_layer_norm(attention(x, mask) + x);
  return output_layer_norm(ffn(sa_output) + sa_output);
}

DistilBertTransformerImpl::DistilBertTransformerImpl(const DistilBertConfig& config) {
  layer = register_module("layer", nn::ModuleList());
  for (int64_t i = 0; i < config.n_layers; ++i) layer->push_back(DistilBertBlock(config));
}

DistilBertModelImpl::DistilBertModelImpl(const DistilBertConfig& config) : config_(config) {
  embeddings = register_module("embeddings", DistilBertEmbeddings(config));
  transformer = register_module("transformer", DistilBertTransformer(config));
  init_hf_weights(*this, config.initializer_range);
}

EncoderOutput DistilBertModelImpl::forward(const TextInputs& inputs) {
  const torch::Tensor& input_ids = inputs.input_ids;
  if (!input_ids.defined() || input_ids.dim() != 2) {
    throw Error("DistilBertModel: input_ids must be a (batch, length) tensor of token ids, got " +
                (input_ids.defined() ? shape_str(input_ids.sizes().vec()) : std::string("none")));
  }
  refuse_token_types(inputs, "DistilBertModel");
  if (inputs.position_ids.defined())
    throw Error("DistilBertModel: position_ids are not an input of DistilBERT (it numbers tokens 0 .. T-1)");
  if (inputs.attention_mask.defined() && inputs.attention_mask.sizes() != input_ids.sizes())
    throw ShapeMismatch("DistilBertModel", "attention_mask", input_ids.sizes().vec(),
                        inputs.attention_mask.sizes().vec());
  check_token_ids(input_ids, embeddings->word_embeddings->options.num_embeddings(), "DistilBertModel",
                  "input_ids");
  check_attention_mask(inputs.attention_mask, "DistilBertModel");
  const torch::Tensor mask =
      inputs.attention_mask.defined() ? inputs.attention_mask : torch::ones_like(input_ids);

  EncoderOutput out;
  const bool keep = inputs.output_hidden_states || config_.output_hidden_states;
  torch::Tensor hidden = embeddings(input_ids);
  for (const auto& module : *transformer->layer) {
    if (keep) out.hidden_states.push_back(hidden);
    hidden = module->as<DistilBertBlockImpl>()->forward(hidden, mask);
  }
  if (keep) out.hidden_states.push_back(hidden);
  out.last_hidden_state = hidden;
  return out;
}

DistilBertForSequenceClassificationImpl::DistilBertForSequenceClassificationImpl(
    const DistilBertConfig& config)
    : config_(config) {
  distilbert = register_module("distilbert", DistilBertModel(config));
  pre_classifier = register_module("pre_classifier", nn::Linear(config.dim, config.dim));
  classifier = register_module("classifier", nn::Linear(config.dim, config.num_labels()));
  dropout = register_module("dropout", Dropout(config.seq_classif_dropout));
  init_hf_weights(*pre_classifier, config.initializer_range);
  init_hf_weights(*classifier, config.initializer_range);
}

ClassifierOutput DistilBertForSequenceClassificationImpl::forward(const TextInputs& inputs) {
  ClassifierOutput out;
  out.base = distilbert(inputs);
  const torch::Tensor pooled = torch::relu(linear(pre_classifier, out.base.last_hidden_state.select(1, 0)));
  out.logits = linear(classifier, dropout(pooled));  // (B, num_labels)
  if (inputs.labels.defined())
    out.loss = hf_classification_loss(out.logits, inputs.labels, config_.problem_type);
  return out;
}

torch::Tensor DistilBertForSequenceClassificationImpl::features(const TextInputs& inputs) {
  return distilbert(inputs).last_hidden_state.select(1, 0);
}

nlohmann::json DistilBertForSequenceClassificationImpl::config_json(
    const std::vector<std::string>& labels) const {
  DistilBertConfig config = config_;
  config.id2label = labels;
  config.problem_type = "single_label_classification";
  return config.to_json();
}

}  // namespace graft
