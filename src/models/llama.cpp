// The Llama family, a port of Hugging Face transformers v4.31 src/transformers/models/llama/modeling_llama.py
// (LlamaRMSNorm, LlamaRotaryEmbedding and its linear / dynamic-NTK scalings, LlamaAttention with
// repeat_kv, LlamaMLP, LlamaDecoderLayer, LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification),
// with the same operations in the same order, plus the config keys of later versions that today's
// checkpoints use: head_dim, attention_bias, mlp_bias, rope_scaling of type "llama3"
// (modeling_rope_utils.py _compute_llama3_parameters), and Qwen2's q/k/v bias (modeling_qwen2.py).
// The rotary angles are computed per call from the positions (as transformers does since v4.38) instead of
// read from a table of max_position_embeddings rows: the same float32 products, and no buffer.
#include "graft/llama.h"

#include <cmath>
#include <limits>
#include <string>

#include "graft/json_file.h"
#include "layers/linear.h"
#include "models/common.h"
#include "models/hf_config.h"

namespace graft {
namespace {

namespace nn = torch::nn;

constexpr double kPi = 3.14159265358979323846;

// (B, kv_heads, T, D) -> (B, kv_heads * groups, T, D): each key/value head repeated for the query heads it
// serves (repeat_kv).
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const int64_t batch = x.size(0), heads = x.size(1), length = x.size(2), dim = x.size(3);
  return x.unsqueeze(2)
      .expand({batch, heads, groups, length, dim})
      .reshape({batch, heads * groups, length, dim});
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, x.size(-1) - half), x.narrow(-1, 0, half)}, -1);
}

void read_rope_scaling(const ConfigReader& reader, LlamaConfig& config) {
  if (!reader.has("rope_scaling")) return;
  const json& scaling = reader.root().at("rope_scaling");
  if (!scaling.is_object())
    reader.fail("rope_scaling", "an object {\"rope_type\": ..., \"factor\": ...}", scaling);
  const ConfigReader inner(scaling, reader.source() + ": key 'rope_scaling'");
  std::string type;
  inner.get("type", type);       // transformers < 4.45
  inner.get("rope_type", type);  // later
  if (type.empty() || type == "default") return;
  if (type != "linear" && type != "dynamic" && type != "llama3")
    reader.unsupported(
        "rope_scaling",
        "graft implements rope_scaling types linear, dynamic and llama3, not \"" + type + "\"");
  config.rope_scaling_type = type;
  inner.get("factor", config.rope_factor);
  if (!(config.rope_factor >= 1.0 && std::isfinite(config.rope_factor)))
    reader.unsupported("rope_scaling", "its factor must be a number >= 1");
  if (type == "llama3") {
    inner.get("low_freq_factor", config.rope_low_freq_factor);
    inner.get("high_freq_factor", config.rope_high_freq_factor);
    inner.get("original_max_position_embeddings", config.rope_original_max_positions);
    if (!(config.rope_low_freq_factor > 0 && config.rope_high_freq_factor > config.rope_low_freq_factor) ||
        config.rope_original_max_positions <= 0)
      reader.unsupported("rope_scaling",
                         "llama3 scaling needs 0 < low_freq_factor < high_freq_factor and a positive "
                         "original_max_position_embeddings");
  }
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  LlamaConfig config;
  std::string model_type = "llama";
  reader.get("model_type", model_type);
  if (model_type != "llama" && model_type != "qwen2")
    reader.unsupported("model_type", "expected \"llama\" or \"qwen2\" for this model class");
  if (model_type == "qwen2") {  // Qwen2Config's defaults (Qwen2-7B)
    config.vocab_size = 151936;
    config.intermediate_size = 22016;
    config.max_position_embeddings = 32768;
    config.qkv_bias = true;  // modeling_qwen2.py: q, k and v with bias, o_proj without
    config.bos_token_id = -1;
    config.eos_token_id = -1;
  }
  read_common(reader, config, model_type);
  reader.get_positive("vocab_size", config.vocab_size);
  reader.get_positive("hidden_size", config.hidden_size);
  reader.get_positive("intermediate_size", config.intermediate_size);
  reader.get_positive("num_hidden_layers", config.num_hidden_layers);
  reader.get_positive("num_attention_heads", config.num_attention_heads);
  config.num_key_value_heads = config.num_attention_heads;  // null or absent: one per query head
  if (reader.has("num_key_value_heads"))
    reader.get_positive("num_key_value_heads", config.num_key_value_heads);
  if (config.num_attention_heads % config.num_key_value_heads != 0)
    reader.unsupported("num_key_value_heads", "must divide num_attention_heads (" +
                                                  std::to_string(config.num_attention_heads) + ")");
  if (reader.has("head_dim")) {
    reader.get_positive("head_dim", config.head_dim);
  } else {
    check_heads(reader, config.hidden_size, "hidden_size", config.num_attention_heads, "num_attention_heads");
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  if (config.head_dim % 2 != 0)
    throw FormatError(source, "the head width (head_dim " + std::to_string(config.head_dim) +
                                  ") must be even: rotary embeddings turn pairs of features");
  reader.get("hidden_act", config.hidden_act);
  check_activation(reader, "hidden_act", config.hidden_act);
  reader.get_positive("max_position_embeddings", config.max_position_embeddings);
  reader.get("rms_norm_eps", config.rms_norm_eps);
  if (!(config.rms_norm_eps > 0 && config.rms_norm_eps < 1))
    reader.unsupported("rms_norm_eps", "RMSNorm's epsilon must lie in (0, 1)");
  reader.get("rope_theta", config.rope_theta);
  if (!(config.rope_theta > 1 && std::isfinite(config.rope_theta)))
    reader.unsupported("rope_theta", "the rotary base must be a finite number > 1");
  read_rope_scaling(reader, config);
  if (model_type == "llama" && reader.has("attention_bias")) {
    bool bias = false;
    reader.get("attention_bias", bias);
    config.qkv_bias = config.o_bias = bias;
  }
  reader.get("mlp_bias", config.mlp_bias);
  double attention_dropout = 0;
  reader.get("attention_dropout", attention_dropout);
  if (attention_dropout != 0)
    reader.unsupported("attention_dropout",
                       "graft's Llama has no attention dropout (0.0, as every released "
                       "checkpoint)");
  bool sliding = false;
  reader.get("use_sliding_window", sliding);
  if (sliding)
    reader.unsupported("use_sliding_window",
                       "graft's Qwen2 attends to every earlier position (no sliding window)");
  // pretraining_tp > 1 only splits the products into slices in transformers; the sums are the same.
  reader.get("pad_token_id", config.pad_token_id);
  if (config.pad_token_id && (*config.pad_token_id < 0 || *config.pad_token_id >= config.vocab_size))
    reader.unsupported("pad_token_id", "must be a token id below vocab_size (" +
                                           std::to_string(config.vocab_size) + ") or null");
  for (const char* key : {"bos_token_id", "eos_token_id"}) {
    if (!reader.root().contains(key)) continue;
    const json& value = reader.root().at(key);
    int64_t& out = std::string(key) == "bos_token_id" ? config.bos_token_id : config.eos_token_id;
    if (value.is_null()) {
      out = -1;
    } else if (value.is_number_integer()) {
      out = value.get<int64_t>();
    } else if (value.is_array() && !value.empty() && value[0].is_number_integer()) {
      out = value[0].get<int64_t>();  // Llama 3 lists its end tokens; generation stops at the first
    } else {
      reader.fail(key, "a token id, a list of them or null", value);
    }
  }
  return config;
}

json LlamaConfig::to_json() const {
  json out = common_json();
  out["vocab_size"] = vocab_size;
  out["hidden_size"] = hidden_size;
  out["intermediate_size"] = intermediate_size;
  out["num_hidden_layers"] = num_hidden_layers;
  out["num_attention_heads"] = num_attention_heads;
  out["num_key_value_heads"] = num_key_value_heads;
  out["head_dim"] = head_dim;
  out["hidden_act"] = hidden_act;
  out["max_position_embeddings"] = max_position_embeddings;
  out["rms_norm_eps"] = rms_norm_eps;
  out["rope_theta"] = rope_theta;
  if (rope_scaling_type.empty()) {
    out["rope_scaling"] = nullptr;
  } else {
    json scaling = {{"rope_type", rope_scaling_type}, {"type", rope_scaling_type}, {"factor", rope_factor}};
    if (rope_scaling_type == "llama3") {
      scaling["low_freq_factor"] = rope_low_freq_factor;
      scaling["high_freq_factor"] = rope_high_freq_factor;
      scaling["original_max_position_embeddings"] = rope_original_max_positions;
    }
    out["rope_scaling"] = scaling;
  }
  if (model_type == "llama") out["attention_bias"] = qkv_bias;  // Qwen2's bias is its architecture's
  out["mlp_bias"] = mlp_bias;
  out["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  out["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  out["eos_token_id"] = eos_token_id >= 0 ? json(eos_token_id) : json(nullptr);
  return out;
}

LlamaConfig LlamaConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

LlamaRMSNormImpl::LlamaRMSNormImpl(int64_t hidden_size, double eps_in) : eps(eps_in) {
  weight = register_parameter("weight", torch::ones({hidden_size}));
}

torch::Tensor LlamaRMSNormImpl::forward(const torch::Tensor& hidden_states) {
  const torch::ScalarType input_dtype = hidden_states.scalar_type();
  const torch::Tensor x = hidden_states.to(torch::kFloat);
  const torch::Tensor variance = x.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (x * torch::rsqrt(variance + eps)).to(input_dtype);
}

LlamaRotaryEmbedding::LlamaRotaryEmbedding(const LlamaConfig& config) : config_(config) {
  inv_freq_ = inverse_frequencies(0);
}

torch::Tensor LlamaRotaryEmbedding::inverse_frequencies(int64_t length) const {
  const int64_t dim = config_.head_dim;
  double base = config_.rope_theta;
  const double factor = config_.rope_factor;
  const int64_t max_positions = config_.max_position_embeddings;
  if (config_.rope_scaling_type == "dynamic" && length > max_positions) {
    // LlamaDynamicNTKScalingRotaryEmbedding: a larger base for sequences longer than the trained length.
    base = base *
           std::pow(factor * static_cast<double>(length) / static_cast<double>(max_positions) - (factor - 1),
                    static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  torch::Tensor inv_freq = 1.0 / torch::pow(base, torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) /
                                                      static_cast<double>(dim));
  if (config_.rope_scaling_type == "llama3") {
    const double old_context = static_cast<double>(config_.rope_original_max_positions);
    const double low = config_.rope_low_freq_factor, high = config_.rope_high_freq_factor;
    const double low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
    const torch::Tensor wavelen = 2 * kPi / inv_freq;
    // Long wavelengths are slowed by the factor, short ones kept, the band between interpolated.
    torch::Tensor scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
    const torch::Tensor smooth = (old_context / wavelen - low) / (high - low);
    const torch::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    const torch::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv_freq = torch::where(medium, smoothed, scaled);
  }
  return inv_freq;
}

std::pair<torch::Tensor, torch::Tensor> LlamaRotaryEmbedding::cos_sin(const torch::Tensor& position_ids,
                                                                      int64_t length,
                                                                      torch::ScalarType dtype) const {
  torch::Tensor inv_freq = config_.rope_scaling_type == "dynamic" && length > config_.max_position_embeddings
                               ? inverse_frequencies(length)
                               : inv_freq_;
  inv_freq = inv_freq.to(position_ids.device());
  torch::Tensor t = position_ids.to(torch::kFloat);
  if (config_.rope_scaling_type == "linear") t = t / config_.rope_factor;
  const torch::Tensor freqs = t.unsqueeze(-1) * inv_freq;  // (B, T, D/2): outer(t, inv_freq)
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& config)
    : num_heads_(config.num_attention_heads),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim) {
  const int64_t hidden = config.hidden_size;
  auto proj = [&](int64_t in, int64_t out, bool bias) {
    return nn::Linear(nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", proj(hidden, num_heads_ * head_dim_, config.qkv_bias));
  k_proj = register_module("k_proj", proj(hidden, num_kv_heads_ * head_dim_, config.qkv_bias));
  v_proj = register_module("v_proj", proj(hidden, num_kv_heads_ * head_dim_, config.qkv_bias));
  o_proj = register_module("o_proj", proj(num_heads_ * head_dim_, hidden, config.o_bias));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& hidden_states, const torch::Tensor& cos,
                                          const torch::Tensor& sin, const torch::Tensor& attention_mask,
                                          const LayerKeyValue* past, LayerKeyValue* present) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1);
  torch::Tensor query =
      linear(q_proj, hidden_states).view({batch, length, num_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor key =
      linear(k_proj, hidden_states).view({batch, length, num_kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor value =
      linear(v_proj, hidden_states).view({batch, length, num_kv_heads_, head_dim_}).transpose(1, 2);
  // apply_rotary_pos_emb: the angles in the projections' precision, one per (row, position), every head.
  const torch::Tensor c = cos.to(value.scalar_type()).unsqueeze(1),
                      s = sin.to(value.scalar_type()).unsqueeze(1);
  query = query * c + rotate_half(query) * s;
  key = key * c + rotate_half(key) * s;
  if (past && past->key.defined()) {
    key = torch::cat({past->key, key}, 2);  // (B, kv_heads, T_past + T, D)
    value = torch::cat({past->value, value}, 2);
  }
  if (present) *present = {key, value};  // kept per key/value head: the cache is heads / kv_heads smaller
  const int64_t groups = num_heads_ / num_kv_heads_;
  key = repeat_kv(key, groups);
  value = repeat_kv(value, groups);

  torch::Tensor weights =
      torch::matmul(query, key.transpose(2, 3)) / std::sqrt(static_cast<double>(head_dim_));  // (B, H, T, T')
  if (attention_mask.defined()) weights = weights + attention_mask;
  weights = torch::softmax(weights, -1, torch::kFloat).to(query.scalar_type());
  const torch::Tensor context = torch::matmul(weights, value).transpose(1, 2).reshape({batch, length, -1});
  return linear(o_proj, context);
}

LlamaMLPImpl::LlamaMLPImpl(const LlamaConfig& config) {
  auto proj = [&](int64_t in, int64_t out) {
    return nn::Linear(nn::LinearOptions(in, out).bias(config.mlp_bias));
  };
  gate_proj = register_module("gate_proj", proj(config.hidden_size, config.intermediate_size));
  up_proj = register_module("up_proj", proj(config.hidden_size, config.intermediate_size));
  down_proj = register_module("down_proj", proj(config.intermediate_size, config.hidden_size));
  act = hf_activation(config.hidden_act, "LlamaConfig.hidden_act");
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  return linear(down_proj, act(linear(gate_proj, x)) * linear(up_proj, x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& config) {
  self_attn = register_module("self_attn", LlamaAttention(config));
  mlp = register_module("mlp", LlamaMLP(config));
  input_layernorm = register_module("input_layernorm", LlamaRMSNorm(config.hidden_size, config.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", LlamaRMSNorm(config.hidden_size, config.rms_norm_eps));
}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& hidden_states, const torch::Tensor& cos,
                                             const torch::Tensor& sin, const torch::Tensor& attention_mask,
                                             const LayerKeyValue* past, LayerKeyValue* present) {
  torch::Tensor hidden =
      hidden_states + self_attn(input_layernorm(hidden_states), cos, sin, attention_mask, past, present);
  return hidden + mlp(post_attention_layernorm(hidden));
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& config) : config_(config), rotary_(config) {
  auto embedding = nn::EmbeddingOptions(config.vocab_size, config.hidden_size);
  if (config.pad_token_id) embedding.padding_idx(*config.pad_token_id);  // no gradient for the padding row
  embed_tokens = register_module("embed_tokens", nn::Embedding(embedding));
  layers = register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(config));
  norm = register_module("norm", LlamaRMSNorm(config.hidden_size, config.rms_norm_eps));
  init_hf_weights(*this, config.initializer_range);  // RMSNorm weights start at 1 (their constructor)
}

CausalLMOutput LlamaModelImpl::forward(const CausalLMInputs& inputs) {
  const torch::Tensor& input_ids = inputs.input_ids;
  const std::string name = config_.model_type == "qwen2" ? "Qwen2Model" : "LlamaModel";
  if (!input_ids.defined() || input_ids.dim() != 2) {
    throw Error(name + ": input_ids must be a (batch, length) tensor of token ids, got " +
                (input_ids.defined() ? shape_str(input_ids.sizes().vec()) : std::string("none")));
  }
  if (inputs.token_type_ids.defined())
    throw Error(name + ": token_type_ids are GPT-2's; a Llama-family model has no token types");
  check_token_ids(input_ids, config_.vocab_size, name, "input_ids");
  check_attention_mask(inputs.attention_mask, name);
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  const auto& past = inputs.past_key_values;
  if (!past.empty() && past.size() != layers->size()) {
    throw Error(name + ": past_key_values holds " + std::to_string(past.size()) + " layers, the model has " +
                std::to_string(layers->size()));
  }
  const int64_t past_length = past.empty() ? 0 : past[0].key.size(2), total = past_length + length;
  const torch::Tensor position_ids =
      inputs.position_ids.defined()
          ? inputs.position_ids
          : torch::arange(past_length, total, input_ids.options().dtype(torch::kLong)).unsqueeze(0);

  // _prepare_decoder_attention_mask: finfo.min above the diagonal (after the cached columns) plus finfo.min
  // at padded keys; where both apply the float32 sum is -inf, as in transformers.
  const torch::ScalarType dtype = embed_tokens->weight.scalar_type();
  const double lowest = lowest_of(dtype);
  const auto float_options = embed_tokens->weight.options();
  torch::Tensor mask;  // (B or 1, 1, T, T_past + T)
  if (length > 1) {
    mask =
        torch::full({length, total}, lowest, float_options).triu(past_length + 1).view({1, 1, length, total});
  }
  if (inputs.attention_mask.defined()) {
    if (inputs.attention_mask.numel() != batch * total)
      throw ShapeMismatch(name, "attention_mask", {batch, total}, inputs.attention_mask.sizes().vec());
    const torch::Tensor padding =
        (1.0 - inputs.attention_mask.view({batch, 1, 1, total}).to(dtype)).mul(lowest);
    mask = mask.defined() ? padding + mask : padding;
  }

  auto [cos, sin] = rotary_.cos_sin(position_ids, total, torch::kFloat);
  CausalLMOutput out;
  const bool keep = inputs.output_hidden_states || config_.output_hidden_states;
  torch::Tensor hidden = embed_tokens(input_ids);
  if (inputs.use_cache) out.present.resize(layers->size());
  for (size_t i = 0; i < layers->size(); ++i) {
    if (keep) out.hidden_states.push_back(hidden);
    hidden = layers->ptr<LlamaDecoderLayerImpl>(i)->forward(hidden, cos, sin, mask,
                                                            past.empty() ? nullptr : &past[i],
                                                            inputs.use_cache ? &out.present[i] : nullptr);
  }
  hidden = norm(hidden);
  if (keep) out.hidden_states.push_back(hidden);
  out.last_hidden_state = hidden;
  return out;
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const LlamaConfig& config) {
  model = register_module("model", LlamaModel(config));
  if (!config.tie_word_embeddings) {
    lm_head = register_module(
        "lm_head", nn::Linear(nn::LinearOptions(config.hidden_size, config.vocab_size).bias(false)));
    torch::NoGradGuard no_grad;
    lm_head->weight.normal_(0, config.initializer_range);
  }
}

torch::Tensor LlamaForCausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

CausalLMOutput LlamaForCausalLMImpl::forward(const CausalLMInputs& inputs) {
  CausalLMOutput out = model(inputs);
  out.logits = (lm_head ? linear(lm_head, out.last_hidden_state)
                        : torch::linear(out.last_hidden_state, model->embed_tokens->weight))
                   .to(torch::kFloat);
  if (inputs.labels.defined()) out.loss = causal_lm_loss(out.logits, inputs.labels);
  return out;
}

LlamaForSequenceClassificationImpl::LlamaForSequenceClassificationImpl(const LlamaConfig& config) {
  model = register_module("model", LlamaModel(config));
  score = register_module("score",
                          nn::Linear(nn::LinearOptions(config.hidden_size, config.num_labels()).bias(false)));
  torch::NoGradGuard no_grad;
  score->weight.normal_(0, config.initializer_range);
}

namespace {

CausalLMInputs base_inputs(const TextInputs& inputs, const char* model) {
  refuse_token_types(inputs, model);
  CausalLMInputs base(inputs.input_ids, inputs.attention_mask);
  base.position_ids = inputs.position_ids;
  base.output_hidden_states = inputs.output_hidden_states;
  return base;
}

}  // namespace

ClassifierOutput LlamaForSequenceClassificationImpl::forward(const TextInputs& inputs) {
  CausalLMOutput hidden = model(base_inputs(inputs, "LlamaForSequenceClassification"));
  const torch::Tensor logits = linear(score, hidden.last_hidden_state);  // (B, T, labels)
  const torch::Tensor& ids = inputs.input_ids;
  const int64_t batch = ids.size(0), length = ids.size(1);
  torch::Tensor last;  // (B): the position each row is classified at
  const torch::Tensor positions = torch::arange(length, ids.options().dtype(torch::kLong));
  if (inputs.attention_mask.defined() && inputs.attention_mask.size(-1) == length) {
    // The last attended token. transformers finds it from pad_token_id instead, which gives the same token
    // when pad tokens are only padding, needs a pad_token_id in config.json (many Llama configs have none),
    // and skips a real final token that equals it (GPT-2-style tokenizers pad with eos).
    last = (positions * inputs.attention_mask.ne(0).to(torch::kLong)).argmax(-1);
  } else if (config().pad_token_id) {
    // The last token that is not padding (transformers >= 4.48; 4.31's "one before the first pad" picks
    // the same one for right padding and wrapped around to the last position for left padding).
    last = (positions * ids.ne(*config().pad_token_id).to(torch::kLong)).argmax(-1);
  } else {
    if (batch > 1)
      throw Error(
          "LlamaForSequenceClassification: rows of a batch can only be told apart from their padding "
          "with an attention_mask or a pad_token_id, and neither is given");
    last = torch::full({batch}, length - 1, ids.options().dtype(torch::kLong));
  }
  ClassifierOutput out;
  out.logits = logits.index({torch::arange(batch, last.options()), last});
  if (inputs.labels.defined())
    out.loss = hf_classification_loss(out.logits, inputs.labels, config().problem_type);
  out.base.last_hidden_state = hidden.last_hidden_state;
  out.base.hidden_states = std::move(hidden.hidden_states);
  return out;
}

torch::Tensor LlamaForSequenceClassificationImpl::features(const TextInputs& inputs) {
  const torch::Tensor hidden =
      model(base_inputs(inputs, "LlamaForSequenceClassification")).last_hidden_state;  // (B, T, C)
  if (!inputs.attention_mask.defined()) return hidden.mean(1);
  const torch::Tensor mask = inputs.attention_mask.unsqueeze(-1).to(hidden.scalar_type());
  return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1);
}

nlohmann::json LlamaForSequenceClassificationImpl::config_json(const std::vector<std::string>& labels) const {
  LlamaConfig copy = config();
  copy.id2label = labels;
  copy.problem_type = "single_label_classification";
  return copy.to_json();
}

}  // namespace graft
