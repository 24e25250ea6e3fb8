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

#include "graft/dropout.h"
#include "graft/layer_norm.h"
#include "graft/transformers.h"

namespace graft {

// One layer's attention keys and values for the tokens seen so far: (B, heads, T_past, head_dim) each.
struct LayerKeyValue {
  torch::Tensor key, value;
};
using PastKeyValues = std::vector<LayerKeyValue>;  // one per layer; empty: nothing cached

struct CausalLMInputs {
  CausalLMInputs() = default;
  // model->forward({ids, mask}) and model->forward(ids) read as Hugging Face's model(ids, mask).
  CausalLMInputs(torch::Tensor ids, torch::Tensor mask = {})  // NOLINT(google-explicit-constructor)
      : input_ids(std::move(ids)), attention_mask(std::move(mask)) {}
  torch::Tensor input_ids;        // (B, T) new tokens
  torch::Tensor attention_mask;   // (B, T_past + T) 1 = attend, 0 = padding; undefined: all ones
  torch::Tensor position_ids;     // (B, T) or (1, T); undefined: T_past .. T_past + T - 1
  torch::Tensor token_type_ids;   // (B, T), embedded with wte as Hugging Face does; undefined: none
  torch::Tensor labels;           // (B, T) next-token targets = input_ids (shifted inside); -100 ignored
  PastKeyValues past_key_values;  // from a previous call's `present`
  bool use_cache = false;         // return `present` for the next call
  bool output_hidden_states = false;
};

struct CausalLMOutput {
  torch::Tensor logits;                      // (B, T, vocab); GPT2Model leaves it undefined
  torch::Tensor loss;                        // mean next-token cross-entropy; undefined without labels
  torch::Tensor last_hidden_state;           // (B, T, n_embd), after ln_f
  PastKeyValues present;                     // past + these tokens, when use_cache
  std::vector<torch::Tensor> hidden_states;  // embeddings, each block's input after that, last after ln_f
};

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

// Decoding as Hugging Face's generate() does it with its logits processors, in its order: repetition
// penalty, then (sampling only) temperature, top-k, top-p.
struct GenerateOptions {
  int64_t max_new_tokens = 20;
  double temperature = 0.0;         // 0: greedy; > 0: sample from softmax(logits / temperature)
  int64_t top_k = 0;                // sample among the k most likely tokens only (0: all)
  double top_p = 1.0;               // nucleus: the smallest set of tokens whose probability reaches top_p
  double repetition_penalty = 1.0;  // CTRL's: scores of tokens already in the sequence / p (x p when < 0)
  int64_t eos_token_id = -1;        // stop a sequence once it emits this token (-1: never)
  // Sampling draws from a generator seeded with this, so a seed gives the same text on every run;
  // unset: torch's global generator.
  std::optional<uint64_t> seed;
  // Called after each step with the new tokens (B); returning false stops (streaming output, stop strings).
  std::function<bool(const torch::Tensor& next)> on_token;
};

// GPT2Model + the LM head (tied to wte, or untied when config tie_word_embeddings is false, then holding
// lm_head.weight); next-token loss with the shift done inside, as Hugging Face.
class GPT2LMHeadModelImpl : public torch::nn::Module {
 public:
  explicit GPT2LMHeadModelImpl(const GPT2Config& config);
  CausalLMOutput forward(const CausalLMInputs& inputs);

  // Autoregressive continuation of (B, T) prompts with the key/value cache: each new token costs one
  // one-token forward. Returns (B, T + new) ids; sequences that hit eos_token_id are padded with it.
  // Throws graft::Error when T + max_new_tokens exceeds n_positions or an option is out of range.
  torch::Tensor generate(const torch::Tensor& input_ids, const GenerateOptions& options = {});

  const GPT2Config& config() const { return transformer->config(); }
  torch::Tensor lm_head_weight() const;  // (vocab, n_embd): wte.weight when tied

  GPT2Model transformer{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied to transformer.wte
};
TORCH_MODULE(GPT2LMHeadModel);

}  // namespace graft
