// The Llama family (Touvron et al. 2023) as Hugging Face transformers builds it (models/llama/
// modeling_llama.py, v4.31, with the config keys later versions added), with Hugging Face's names
// (model.embed_tokens, model.layers.N.self_attn.q_proj, mlp.gate_proj, input_layernorm, model.norm,
// lm_head): RMSNorm, rotary position embeddings, grouped-query attention, the SwiGLU MLP. One
// implementation serves every config of that shape: Llama 2 and 3, TinyLlama, SmolLM2 (`model_type`
// "llama") and Qwen2 / Qwen2.5 ("qwen2": bias on the q, k and v projections).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <optional>
#include <string>
#include <vector>

#include "graft/causal_lm.h"
#include "graft/sequence_classifier.h"
#include "graft/transformers.h"

namespace graft {

// LlamaConfig (configuration_llama.py), also read for Qwen2Config (configuration_qwen2.py): the keys are
// the same, the defaults are the model type's (Llama 2 7B's; Qwen2-7B's).
struct LlamaConfig : HfCommonConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // grouped-query attention: each key/value head serves heads / this
  int64_t head_dim = 128;            // hidden_size / num_attention_heads unless config.json says
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  // rope_scaling: "" (none), "linear" (positions / factor), "dynamic" (NTK: theta grows with the length
  // beyond max_position_embeddings) or "llama3" (Llama 3.1/3.2's per-frequency scaling).
  std::string rope_scaling_type;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;  // llama3
  int64_t rope_original_max_positions = 8192;                      // llama3
  bool qkv_bias = false;  // Qwen2; Llama's attention_bias sets it and o_bias
  bool o_bias = false;
  bool mlp_bias = false;
  std::optional<int64_t> pad_token_id;  // LlamaForSequenceClassification reads the last token before it
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;  // -1: none

  LlamaConfig() {
    set_num_labels(2);
    tie_word_embeddings = false;
  }
  // Reads a "llama" or a "qwen2" config.json (model_type decides the defaults).
  static LlamaConfig from_json(const nlohmann::json& json, const std::string& source = "config.json");
  static LlamaConfig from_file(const std::string& path);
  // config.json of these values, read back by from_json (and by transformers' LlamaConfig / Qwen2Config)
  // to the same.
  nlohmann::json to_json() const;
  int64_t kv_groups() const { return num_attention_heads / num_key_value_heads; }
};

// LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * weight, the statistics in float32 whatever x's precision.
class LlamaRMSNormImpl : public torch::nn::Module {
 public:
  LlamaRMSNormImpl(int64_t hidden_size, double eps);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(LlamaRMSNorm);

// The rotary embedding's angles, from the config's theta and scaling; no parameters (inv_freq is a buffer
// Hugging Face keeps out of its files).
class LlamaRotaryEmbedding {
 public:
  explicit LlamaRotaryEmbedding(const LlamaConfig& config);
  // cos and sin (B or 1, T, head_dim) at these (B or 1, T) positions; `length` (cached + new tokens) decides
  // dynamic scaling.
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& position_ids, int64_t length,
                                                  torch::ScalarType dtype) const;

 private:
  torch::Tensor inverse_frequencies(int64_t length) const;
  LlamaConfig config_;
  torch::Tensor inv_freq_;  // (head_dim / 2)
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const LlamaConfig& config);
  // (B, T, hidden) -> (B, T, hidden). cos/sin: the rotary angles of these tokens; attention_mask:
  // additive (B, 1, T, T_past + T); `past` extended by this step's keys/values goes to *present when given.
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& attention_mask,
                        const LayerKeyValue* past, LayerKeyValue* present);

  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

 private:
  int64_t num_heads_, num_kv_heads_, head_dim_;
};
TORCH_MODULE(LlamaAttention);

// SwiGLU: down_proj(act(gate_proj(x)) * up_proj(x)).
class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  Activation act;
};
TORCH_MODULE(LlamaMLP);

// Pre-norm block: x + attn(input_layernorm(x)), then that + mlp(post_attention_layernorm(that)).
class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& attention_mask,
                        const LayerKeyValue* past, LayerKeyValue* present);

  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  LlamaRMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& config);
  CausalLMOutput forward(const CausalLMInputs& inputs);  // fills last_hidden_state, present, hidden_states

  const LlamaConfig& config() const { return config_; }

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  LlamaRMSNorm norm{nullptr};

 private:
  LlamaConfig config_;
  LlamaRotaryEmbedding rotary_;
};
TORCH_MODULE(LlamaModel);

// LlamaModel + lm_head (untied, or tied to embed_tokens when tie_word_embeddings); float32 logits and the
// next-token loss as Hugging Face computes them.
class LlamaForCausalLMImpl : public CausalLMImpl {
 public:
  explicit LlamaForCausalLMImpl(const LlamaConfig& config);
  CausalLMOutput forward(const CausalLMInputs& inputs) override;
  CausalLMOutput forward_base(const CausalLMInputs& inputs) override { return model(inputs); }

  const LlamaConfig& config() const { return model->config(); }
  int64_t position_limit() const override { return config().max_position_embeddings; }
  const char* position_limit_key() const override { return "max_position_embeddings"; }
  int64_t vocab_size() const override { return config().vocab_size; }
  int64_t bos_token_id() const override { return config().bos_token_id; }
  int64_t eos_token_id() const override { return config().eos_token_id; }
  torch::Tensor lm_head_weight() const override;
  bool tied_head() const override { return !lm_head; }

  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied
};
TORCH_MODULE(LlamaForCausalLM);

// LlamaModel + `score` (no bias) read at each row's last real token: the last one the attention mask keeps,
// else the last that is not pad_token_id (as Hugging Face picks it), else the last position.
class LlamaForSequenceClassificationImpl : public SequenceClassifierImpl {
 public:
  explicit LlamaForSequenceClassificationImpl(const LlamaConfig& config);
  // input_ids, attention_mask, position_ids and labels (the classification loss of problem_type).
  ClassifierOutput forward(const TextInputs& inputs) override;
  // The last hidden states averaged over the attended tokens.
  torch::Tensor features(const TextInputs& inputs) override;
  bool reads_token_types() const override { return false; }
  int64_t position_limit() const override { return config().max_position_embeddings; }
  const std::vector<std::string>& labels() const override { return config().id2label; }
  nlohmann::json config_json(const std::vector<std::string>& labels) const override;

  const LlamaConfig& config() const { return model->config(); }

  LlamaModel model{nullptr};
  torch::nn::Linear score{nullptr};
};
TORCH_MODULE(LlamaForSequenceClassification);

}  // namespace graft
