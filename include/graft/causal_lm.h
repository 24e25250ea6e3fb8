// What every causal language model of graft shares (GPT-2, Llama, Qwen2): the inputs and outputs of a
// forward pass as Hugging Face's *ForCausalLM classes take and return them, the key/value cache, and
// generation with Hugging Face's logits processors, written once for all of them.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace graft {

// One layer's attention keys and values for the tokens seen so far: (B, kv_heads, T_past, head_dim) each.
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
  torch::Tensor token_type_ids;   // (B, T), GPT-2 only: embedded with wte as Hugging Face does
  torch::Tensor labels;           // (B, T) next-token targets = input_ids (shifted inside); -100 ignored
  PastKeyValues past_key_values;  // from a previous call's `present`
  bool use_cache = false;         // return `present` for the next call
  bool output_hidden_states = false;
};

struct CausalLMOutput {
  torch::Tensor logits;                      // (B, T, vocab); the base models leave it undefined
  torch::Tensor loss;                        // mean next-token cross-entropy; undefined without labels
  torch::Tensor last_hidden_state;           // (B, T, hidden), after the final norm
  PastKeyValues present;                     // past + these tokens, when use_cache
  std::vector<torch::Tensor> hidden_states;  // embeddings, each block's input after that, last after the norm
};

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

// A model with a language-modelling head: GPT2LMHeadModel, LlamaForCausalLM. The task layer (training,
// eval, generate, chat) holds models through this class, so a new family needs no change there.
class CausalLMImpl : public torch::nn::Module {
 public:
  // Logits, the loss when labels are given (causal_lm_loss), the cache when asked.
  virtual CausalLMOutput forward(const CausalLMInputs& inputs) = 0;
  // The model without its head (GPT2Model, LlamaModel): last_hidden_state, hidden_states, present.
  virtual CausalLMOutput forward_base(const CausalLMInputs& inputs) = 0;

  // The most positions (cached + new) a sequence may hold, and the config.json key that says so
  // (n_positions, max_position_embeddings).
  virtual int64_t position_limit() const = 0;
  virtual const char* position_limit_key() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_token_id() const = 0;  // -1: none
  virtual int64_t eos_token_id() const = 0;  // -1: none
  // The output projection (vocab, hidden): the input embedding when the two are tied.
  virtual torch::Tensor lm_head_weight() const = 0;
  // Whether the head is the input embedding (one matrix, saved once).
  virtual bool tied_head() const = 0;

  // Autoregressive continuation of (B, T) prompts with the key/value cache: each new token costs one
  // one-token forward. Returns (B, T + new) ids; sequences that hit eos_token_id are padded with it.
  // Throws graft::Error when T + max_new_tokens exceeds position_limit() or an option is out of range.
  torch::Tensor generate(const torch::Tensor& input_ids, const GenerateOptions& options = {});
};

// Mean next-token cross-entropy of a causal language model, as every Hugging Face *ForCausalLM computes it:
// logits (N, T, V) at position t predict labels[:, t + 1]; labels equal to -100 (padding) are left out.
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace graft
