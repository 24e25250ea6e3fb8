// GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") as Hugging Face
// transformers v4.31 models/gpt2/modeling_gpt2.py builds it, with Hugging Face's names (transformer.wte,
// transformer.h.N.attn.c_attn, mlp.c_fc, ln_f, ...) and its Conv1D weight layout (in, out). The LM head is
// tied to wte: it owns no weight of its own, so the optimiser sees the shared matrix once.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <functional>
#include <optional>
#include <vector>

#include "graft/causal_lm.h"
#include "graft/dropout.h"
#include "graft/layer_norm.h"
#include "graft/transformers.h"

namespace graft {

// Hugging Face's Conv1D (transformers/pytorch_utils.py): a Linear whose weight is stored transposed,
// (in, out), as the original TensorFlow GPT-2: y = x @ weight + bias.
class Conv1DImpl : public torch::nn::Module {
 public:
  Conv1DImpl(int64_t nf, int64_t nx);             // nf outputs, nx inputs (Hugging Face's argument order)
  torch::Tensor forward(const torch::Tensor& x);  // (..., nx) -> (..., nf)

  torch::Tensor weight;  // (nx, nf)
  torch::Tensor bias;    // (nf)
};
TORCH_MODULE(Conv1D);

class GPT2AttentionImpl : public torch::nn::Module {
 public:
  GPT2AttentionImpl(const GPT2Config& config, int64_t layer_idx);
  // (B, T, C) -> (B, T, C); `past` extended by this step's keys/values is written to *present when given.
  torch::Tensor forward(const torch::Tensor& hidden_states, const LayerKeyValue* past,
                        const torch::Tensor& attention_mask, LayerKeyValue* present);

  Conv1D c_attn{nullptr}, c_proj{nullptr};
  Dropout attn_dropout{nullptr}, resid_dropout{nullptr};

 private:
  int64_t num_heads_ = 0, head_dim_ = 0, layer_idx_ = 0;
  bool scale_attn_weights_ = true, scale_by_layer_ = false;
};
TORCH_MODULE(GPT2Attention);

class GPT2MLPImpl : public torch::nn::Module {
 public:
  explicit GPT2MLPImpl(const GPT2Config& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  Conv1D c_fc{nullptr}, c_proj{nullptr};
  Dropout dropout{nullptr};
  Activation act;
};
TORCH_MODULE(GPT2MLP);

// Pre-norm block: x + attn(ln_1(x)), then that + mlp(ln_2(that)).
class GPT2BlockImpl : public torch::nn::Module {
 public:
  GPT2BlockImpl(const GPT2Config& config, int64_t layer_idx);
  torch::Tensor forward(const torch::Tensor& hidden_states, const LayerKeyValue* past,
                        const torch::Tensor& attention_mask, LayerKeyValue* present);

  FloatLayerNorm ln_1{nullptr}, ln_2{nullptr};
  GPT2Attention attn{nullptr};
  GPT2MLP mlp{nullptr};
};
TORCH_MODULE(GPT2Block);

class GPT2ModelImpl : public torch::nn::Module {
 public:
  explicit GPT2ModelImpl(const GPT2Config& config);
  CausalLMOutput forward(const CausalLMInputs& inputs);  // fills last_hidden_state, present, hidden_states

  const GPT2Config& config() const { return config_; }

  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  Dropout drop{nullptr};
  torch::nn::ModuleList h{nullptr};
  FloatLayerNorm ln_f{nullptr};

 private:
  GPT2Config config_;
};
TORCH_MODULE(GPT2Model);

// GPT2Model + the LM head (tied to wte, or untied when config tie_word_embeddings is false, then holding
// lm_head.weight); next-token loss with the shift done inside, as Hugging Face.
class GPT2LMHeadModelImpl : public CausalLMImpl {
 public:
  explicit GPT2LMHeadModelImpl(const GPT2Config& config);
  CausalLMOutput forward(const CausalLMInputs& inputs) override;
  CausalLMOutput forward_base(const CausalLMInputs& inputs) override { return transformer(inputs); }

  const GPT2Config& config() const { return transformer->config(); }
  int64_t position_limit() const override { return config().n_positions; }
  const char* position_limit_key() const override { return "n_positions"; }
  int64_t vocab_size() const override { return config().vocab_size; }
  int64_t bos_token_id() const override { return config().bos_token_id; }
  int64_t eos_token_id() const override { return config().eos_token_id; }
  torch::Tensor lm_head_weight() const override;  // (vocab, n_embd): wte.weight when tied
  bool tied_head() const override { return !lm_head; }

  GPT2Model transformer{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied to transformer.wte
};
TORCH_MODULE(GPT2LMHeadModel);

}  // namespace graft
