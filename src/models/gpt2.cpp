// GPT-2 (Radford et al. 2019), a port of Hugging Face transformers v4.31
// src/transformers/models/gpt2/modeling_gpt2.py (GPT2Attention without cross-attention, GPT2MLP, GPT2Block,
// GPT2Model, GPT2LMHeadModel) and pytorch_utils.py (Conv1D), with the same operations in the same order.
// The causal mask is made per call instead of sliced from a stored `bias` buffer: Hugging Face keeps that
// buffer out of the state dict since v4.31, and older files that hold it (`h.N.attn.bias`,
// `h.N.attn.masked_bias`) are accepted and ignored by the loader. Fresh weights follow
// GPT2PreTrainedModel._init_weights, including the 1/sqrt(2 * n_layer) scaling of c_proj.
// GPT2Config's config.json reader takes configuration_gpt2.py's defaults (shared keys: hf_config.h).
#include "graft/gpt2.h"

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "graft/json_file.h"
#include "layers/lora.h"
#include "models/hf_config.h"

namespace graft {
namespace {

namespace nn = torch::nn;

void check_config(const GPT2Config& config) {
  if (config.n_embd <= 0 || config.n_head <= 0 || config.n_embd % config.n_head != 0) {
    throw Error("GPT2Config: n_embd (" + std::to_string(config.n_embd) +
                ") must be a positive multiple of n_head (" + std::to_string(config.n_head) + ")");
  }
}

void init_gpt2_weights(nn::Module& root, const GPT2Config& config) {
  torch::NoGradGuard no_grad;
  const double std = config.initializer_range;
  // modules(include_self) needs the root in a shared_ptr, which it is not yet inside a constructor.
  std::vector<nn::Module*> all{&root};
  for (auto& child : root.modules(/*include_self=*/false)) all.push_back(child.get());
  for (nn::Module* module : all) {
    if (auto* conv = module->as<Conv1DImpl>()) {
      conv->weight.normal_(0, std);
      conv->bias.zero_();
    } else if (auto* linear = module->as<nn::Linear>()) {
      linear->weight.normal_(0, std);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* embedding = module->as<nn::Embedding>()) {
      embedding->weight.normal_(0, std);
    } else if (auto* norm = module->as<nn::LayerNorm>()) {
      norm->weight.fill_(1);
      norm->bias.zero_();
    }
  }
  // GPT-2 paper: residual projections scaled by 1/sqrt(N) for N residual layers (2 per block).
  for (auto& item : root.named_parameters()) {
    const std::string& name = item.key();
    if (name.size() >= 13 && name.compare(name.size() - 13, 13, "c_proj.weight") == 0) {
      item.value().normal_(0, std / std::sqrt(2.0 * static_cast<double>(config.n_layer)));
    }
  }
}

}  // namespace

GPT2Config GPT2Config::from_json(const json& root, const std::string& source) {
  const ConfigReader reader(root, source);
  GPT2Config config;
  read_common(reader, config, "gpt2");
  reader.get_positive("vocab_size", config.vocab_size);
  reader.get_positive("n_positions", config.n_positions);
  reader.get_positive("n_embd", config.n_embd);
  reader.get_positive("n_layer", config.n_layer);
  reader.get_positive("n_head", config.n_head);
  reader.get("n_inner", config.n_inner);
  if (config.n_inner && (*config.n_inner <= 0 || *config.n_inner > size_limit("intermediate_size")))
    reader.unsupported("n_inner", "must lie in 1.." + std::to_string(size_limit("intermediate_size")) +
                                      " or be null (4 * n_embd)");
  reader.get("activation_function", config.activation_function);
  check_activation(reader, "activation_function", config.activation_function);
  reader.get_probability("resid_pdrop", config.resid_pdrop);
  reader.get_probability("embd_pdrop", config.embd_pdrop);
  reader.get_probability("attn_pdrop", config.attn_pdrop);
  reader.get_epsilon("layer_norm_epsilon", config.layer_norm_epsilon);
  reader.get("scale_attn_weights", config.scale_attn_weights);
  reader.get("scale_attn_by_inverse_layer_idx", config.scale_attn_by_inverse_layer_idx);
  reader.get("reorder_and_upcast_attn", config.reorder_and_upcast_attn);
  std::optional<int64_t> token = config.bos_token_id;
  reader.get("bos_token_id", token);
  config.bos_token_id = token.value_or(-1);
  token = config.eos_token_id;
  reader.get("eos_token_id", token);
  config.eos_token_id = token.value_or(-1);
  check_heads(reader, config.n_embd, "n_embd", config.n_head, "n_head");
  bool flag = false;
  reader.get("add_cross_attention", flag);
  if (flag) reader.unsupported("add_cross_attention", "graft's GPT-2 has no cross-attention");
  return config;
}

json GPT2Config::to_json() const {
  json out = common_json();
  out["vocab_size"] = vocab_size;
  out["n_positions"] = n_positions;
  out["n_embd"] = n_embd;
  out["n_layer"] = n_layer;
  out["n_head"] = n_head;
  out["n_inner"] = n_inner ? json(*n_inner) : json(nullptr);
  out["activation_function"] = activation_function;
  out["resid_pdrop"] = resid_pdrop;
  out["embd_pdrop"] = embd_pdrop;
  out["attn_pdrop"] = attn_pdrop;
  out["layer_norm_epsilon"] = layer_norm_epsilon;
  out["scale_attn_weights"] = scale_attn_weights;
  out["scale_attn_by_inverse_layer_idx"] = scale_attn_by_inverse_layer_idx;
  out["reorder_and_upcast_attn"] = reorder_and_upcast_attn;
  out["bos_token_id"] = bos_token_id;
  out["eos_token_id"] = eos_token_id;
  return out;
}

GPT2Config GPT2Config::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

Conv1DImpl::Conv1DImpl(int64_t nf, int64_t nx) {
  weight = register_parameter("weight", torch::empty({nx, nf}).normal_(0, 0.02));
  bias = register_parameter("bias", torch::zeros({nf}));
}

torch::Tensor Conv1DImpl::forward(const torch::Tensor& x) {
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = weight.size(1);
  torch::Tensor y = torch::addmm(bias, x.reshape({-1, x.size(-1)}), weight).view(out_shape);
  return children().empty() ? y : add_lora(*this, x, y);  // a LoRA branch, if any
}

GPT2AttentionImpl::GPT2AttentionImpl(const GPT2Config& config, int64_t layer_idx)
    : num_heads_(config.n_head),
      head_dim_(config.n_embd / config.n_head),
      layer_idx_(layer_idx),
      scale_attn_weights_(config.scale_attn_weights),
      scale_by_layer_(config.scale_attn_by_inverse_layer_idx) {
  check_config(config);
  c_attn = register_module("c_attn", Conv1D(3 * config.n_embd, config.n_embd));
  c_proj = register_module("c_proj", Conv1D(config.n_embd, config.n_embd));
  attn_dropout = register_module("attn_dropout", Dropout(config.attn_pdrop));
  resid_dropout = register_module("resid_dropout", Dropout(config.resid_pdrop));
}

torch::Tensor GPT2AttentionImpl::forward(const torch::Tensor& hidden_states, const LayerKeyValue* past,
                                         const torch::Tensor& attention_mask, LayerKeyValue* present) {
  const int64_t batch = hidden_states.size(0), length = hidden_states.size(1), width = hidden_states.size(2);
  auto qkv = c_attn(hidden_states).split(width, 2);  // 3 x (B, T, C)
  // (B, T, C) -> (B, heads, T, head_dim)
  auto split_heads = [&](const torch::Tensor& x) {
    return x.view({batch, length, num_heads_, head_dim_}).permute({0, 2, 1, 3});
  };
  torch::Tensor query = split_heads(qkv[0]);
  torch::Tensor key = split_heads(qkv[1]);
  torch::Tensor value = split_heads(qkv[2]);
  if (past && past->key.defined()) {
    key = torch::cat({past->key, key}, -2);  // (B, heads, T_past + T, head_dim)
    value = torch::cat({past->value, value}, -2);
  }
  if (present) *present = {key, value};

  torch::Tensor weights = torch::matmul(query, key.transpose(-1, -2));  // (B, heads, T, T_past + T)
  if (scale_attn_weights_) weights = weights / std::sqrt(static_cast<double>(value.size(-1)));
  if (scale_by_layer_) weights = weights / static_cast<double>(layer_idx_ + 1);
  // Query i (absolute position T_past + i) sees keys 0 .. T_past + i.
  const int64_t query_length = query.size(-2), key_length = key.size(-2);
  torch::Tensor causal = torch::ones({query_length, key_length}, hidden_states.options().dtype(torch::kBool))
                             .tril(key_length - query_length);
  weights = torch::where(causal, weights,
                         torch::scalar_tensor(lowest_of(weights.scalar_type()), weights.options()));
  if (attention_mask.defined()) weights = weights + attention_mask;
  weights = attn_dropout(torch::softmax(weights, -1, torch::kFloat));
  torch::Tensor context =
      torch::matmul(weights, value).permute({0, 2, 1, 3}).contiguous();  // (B, T, heads, d)
  return resid_dropout(c_proj(context.view({batch, length, width})));
}

GPT2MLPImpl::GPT2MLPImpl(const GPT2Config& config) {
  c_fc = register_module("c_fc", Conv1D(config.inner_size(), config.n_embd));
  c_proj = register_module("c_proj", Conv1D(config.n_embd, config.inner_size()));
  act = hf_activation(config.activation_function, "GPT2Config.activation_function");
  dropout = register_module("dropout", Dropout(config.resid_pdrop));
}

torch::Tensor GPT2MLPImpl::forward(const torch::Tensor& hidden_states) {
  return dropout(c_proj(act(c_fc(hidden_states))));
}

GPT2BlockImpl::GPT2BlockImpl(const GPT2Config& config, int64_t layer_idx) {
  auto norm = [&] {
    return FloatLayerNorm(nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon));
  };
  ln_1 = register_module("ln_1", norm());
  attn = register_module("attn", GPT2Attention(config, layer_idx));
  ln_2 = register_module("ln_2", norm());
  mlp = register_module("mlp", GPT2MLP(config));
}

torch::Tensor GPT2BlockImpl::forward(const torch::Tensor& hidden_states, const LayerKeyValue* past,
                                     const torch::Tensor& attention_mask, LayerKeyValue* present) {
  torch::Tensor hidden = attn(ln_1(hidden_states), past, attention_mask, present) + hidden_states;
  return mlp(ln_2(hidden)) + hidden;
}

GPT2ModelImpl::GPT2ModelImpl(const GPT2Config& config) : config_(config) {
  check_config(config);
  wte = register_module("wte", nn::Embedding(config.vocab_size, config.n_embd));
  wpe = register_module("wpe", nn::Embedding(config.n_positions, config.n_embd));
  drop = register_module("drop", Dropout(config.embd_pdrop));
  h = register_module("h", nn::ModuleList());
  for (int64_t i = 0; i < config.n_layer; ++i) h->push_back(GPT2Block(config, i));
  ln_f = register_module(
      "ln_f", FloatLayerNorm(nn::LayerNormOptions({config.n_embd}).eps(config.layer_norm_epsilon)));
  init_gpt2_weights(*this, config);
}

CausalLMOutput GPT2ModelImpl::forward(const CausalLMInputs& inputs) {
  const torch::Tensor& input_ids = inputs.input_ids;
  if (!input_ids.defined() || input_ids.dim() != 2) {
    throw Error("GPT2Model: input_ids must be a (batch, length) tensor of token ids, got " +
                (input_ids.defined() ? shape_str(input_ids.sizes().vec()) : std::string("none")));
  }
  const int64_t vocab = wte->options.num_embeddings();
  check_token_ids(input_ids, vocab, "GPT2Model", "input_ids");
  check_token_ids(inputs.token_type_ids, vocab, "GPT2Model", "token_type_ids");  // embedded by wte
  check_attention_mask(inputs.attention_mask, "GPT2Model");
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  const auto& past = inputs.past_key_values;
  if (!past.empty() && static_cast<int64_t>(past.size()) != static_cast<int64_t>(h->size())) {
    throw Error("GPT2Model: past_key_values holds " + std::to_string(past.size()) +
                " layers, the model has " + std::to_string(h->size()));
  }
  const int64_t past_length = past.empty() ? 0 : past[0].key.size(-2);
  if (past_length + length > config_.n_positions && !inputs.position_ids.defined()) {
    throw Error("GPT2Model: " + std::to_string(past_length + length) +
                " positions (cached + new), but n_positions is " + std::to_string(config_.n_positions));
  }
  torch::Tensor position_ids =
      inputs.position_ids.defined()
          ? inputs.position_ids
          : torch::arange(past_length, past_length + length, input_ids.options()).unsqueeze(0);

  const torch::ScalarType dtype = wte->weight.scalar_type();
  torch::Tensor additive_mask;  // (B, 1, 1, T_past + T): 0 attended, finfo.min padding
  if (inputs.attention_mask.defined()) {
    if (inputs.attention_mask.numel() != batch * (past_length + length)) {
      throw ShapeMismatch("GPT2Model", "attention_mask", {batch, past_length + length},
                          inputs.attention_mask.sizes().vec());
    }
    torch::Tensor mask = inputs.attention_mask.view({batch, -1}).unsqueeze(1).unsqueeze(2).to(dtype);
    additive_mask = (1.0 - mask) * lowest_of(dtype);
  }

  CausalLMOutput out;
  const bool keep = inputs.output_hidden_states || config_.output_hidden_states;
  torch::Tensor hidden = wte(input_ids) + wpe(position_ids);  // (B, T, C)
  if (inputs.token_type_ids.defined()) hidden = hidden + wte(inputs.token_type_ids);
  hidden = drop(hidden);
  if (inputs.use_cache) out.present.resize(h->size());
  for (size_t i = 0; i < h->size(); ++i) {
    if (keep) out.hidden_states.push_back(hidden);
    hidden = h->ptr<GPT2BlockImpl>(i)->forward(hidden, past.empty() ? nullptr : &past[i], additive_mask,
                                               inputs.use_cache ? &out.present[i] : nullptr);
  }
  hidden = ln_f(hidden);
  if (keep) out.hidden_states.push_back(hidden);
  out.last_hidden_state = hidden;
  return out;
}

GPT2LMHeadModelImpl::GPT2LMHeadModelImpl(const GPT2Config& config) {
  transformer = register_module("transformer", GPT2Model(config));
  if (!config.tie_word_embeddings) {
    lm_head = register_module("lm_head",
                              nn::Linear(nn::LinearOptions(config.n_embd, config.vocab_size).bias(false)));
    torch::NoGradGuard no_grad;
    lm_head->weight.normal_(0, config.initializer_range);
  }
}

torch::Tensor GPT2LMHeadModelImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : transformer->wte->weight;
}

CausalLMOutput GPT2LMHeadModelImpl::forward(const CausalLMInputs& inputs) {
  CausalLMOutput out = transformer(inputs);
  out.logits = torch::linear(out.last_hidden_state, lm_head_weight());  // (B, T, vocab)
  if (inputs.labels.defined()) out.loss = causal_lm_loss(out.logits, inputs.labels);
  return out;
}

}  // namespace graft
