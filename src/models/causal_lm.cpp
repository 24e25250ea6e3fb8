// The next-token loss and generation of every causal language model (graft/causal_lm.h). Generation is
// Hugging Face's greedy and sampling decoding with its logits processors (generation/logits_process.py:
// RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper), one cached
// one-token forward per new token.
#include "graft/causal_lm.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "graft/errors.h"

namespace graft {

torch::Tensor CausalLMImpl::generate(const torch::Tensor& input_ids, const GenerateOptions& options) {
  const int64_t positions = position_limit();
  if (input_ids.dim() != 2 || input_ids.size(1) == 0)
    throw Error("generate: expected (batch, length) prompt ids, got " + shape_str(input_ids.sizes().vec()));
  if (options.max_new_tokens < 0 || input_ids.size(1) + options.max_new_tokens > positions) {
    throw Error("generate: a prompt of " + std::to_string(input_ids.size(1)) + " tokens plus " +
                std::to_string(options.max_new_tokens) + " new tokens exceeds the model's " +
                std::to_string(positions) + " positions (" + position_limit_key() + ")");
  }
  // Each setting by its flag and value: a NaN temperature used to reach libtorch's multinomial.
  if (!(std::isfinite(options.temperature) && options.temperature >= 0))
    throw Error("--temperature must be a finite number >= 0 (0: greedy), got " +
                std::to_string(options.temperature));
  if (options.top_k < 0)
    throw Error("--top-k must be >= 0 (0: every token), got " + std::to_string(options.top_k));
  if (!(options.top_p > 0 && options.top_p <= 1))
    throw Error("--top-p must lie in (0, 1], got " + std::to_string(options.top_p));
  if (!(std::isfinite(options.repetition_penalty) && options.repetition_penalty > 0))
    throw Error("--repetition-penalty must be a finite number > 0 (1: none), got " +
                std::to_string(options.repetition_penalty));
  torch::NoGradGuard no_grad;
  std::optional<at::Generator> generator;
  if (options.seed) generator = at::make_generator<at::CPUGeneratorImpl>(*options.seed);
  const double inf = std::numeric_limits<double>::infinity();
  CausalLMInputs step;
  step.input_ids = input_ids;
  step.use_cache = true;
  torch::Tensor sequences = input_ids;
  torch::Tensor finished = torch::zeros({input_ids.size(0)}, input_ids.options().dtype(torch::kBool));
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    CausalLMOutput out = forward(step);
    torch::Tensor logits = out.logits.select(1, -1).to(torch::kFloat);  // (B, vocab): the last position's
    if (options.repetition_penalty != 1.0) {
      const torch::Tensor seen = logits.gather(1, sequences);
      const torch::Tensor penalised =
          torch::where(seen < 0, seen * options.repetition_penalty, seen / options.repetition_penalty);
      logits = logits.scatter(1, sequences, penalised);
    }
    torch::Tensor next;
    if (options.temperature <= 0) {
      next = logits.argmax(-1);
    } else {
      logits = logits / options.temperature;
      if (options.top_k > 0 && options.top_k < logits.size(-1)) {
        torch::Tensor kth = std::get<0>(logits.topk(options.top_k, -1)).narrow(-1, options.top_k - 1, 1);
        logits = logits.masked_fill(logits < kth, -inf);
      }
      if (options.top_p < 1.0) {
        // Ascending order: drop the tokens whose cumulative probability stays within 1 - top_p, never the
        // most likely one.
        auto [sorted, order] = logits.sort(-1, /*descending=*/false);
        torch::Tensor remove = torch::softmax(sorted, -1).cumsum(-1) <= (1.0 - options.top_p);
        remove.select(-1, -1).fill_(false);
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -inf);
      }
      const torch::Tensor probs = torch::softmax(logits, -1).cpu();
      next = (generator ? torch::multinomial(probs, 1, false, *generator) : torch::multinomial(probs, 1))
                 .squeeze(-1)
                 .to(logits.device());
    }
    if (options.eos_token_id >= 0) {
      next = torch::where(finished, torch::full_like(next, options.eos_token_id), next);
      finished = finished | (next == options.eos_token_id);
    }
    sequences = torch::cat({sequences, next.unsqueeze(1)}, 1);
    if (options.on_token && !options.on_token(next)) break;
    if (options.eos_token_id >= 0 && finished.all().item<bool>()) break;
    step.input_ids = next.unsqueeze(1);  // (B, 1): only the new token; the cache holds the rest
    step.past_key_values = std::move(out.present);
  }
  return sequences;
}

torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.dim() != 3 || labels.dim() != 2 || logits.size(0) != labels.size(0) ||
      logits.size(1) != labels.size(1)) {
    throw Error("causal_lm_loss: expected logits (N, T, V) and labels (N, T), got logits " +
                shape_str(logits.sizes().vec()) + " and labels " + shape_str(labels.sizes().vec()));
  }
  const int64_t vocab = logits.size(2);
  const torch::Tensor shifted_logits = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, vocab});
  const torch::Tensor shifted_labels = labels.narrow(1, 1, labels.size(1) - 1).reshape({-1}).to(torch::kLong);
  return torch::nn::functional::cross_entropy(
      shifted_logits, shifted_labels, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

}  // namespace graft
