// Dropout in one pass (see graft/dropout.h).
#include "graft/dropout.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <string>

#include "graft/errors.h"

namespace graft {
namespace {

void check_probability(double p) {
  if (!(p >= 0.0 && p <= 1.0))  // also rejects NaN
    throw Error("dropout: the drop probability must be in [0, 1], got " + std::to_string(p));
}

// SplitMix64's k-th output for `seed` (Steele, Lea and Flood, 2014): a bijective mix of seed + k * golden
// ratio, which passes BigCrush as a stream; each output gives two elements their 32 bits.
inline uint64_t splitmix64(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get<at::CPUGeneratorImpl>()->random64();
}

constexpr int64_t kGrain = 1 << 15;  // elements a thread takes at least
constexpr int64_t kBlock = 4096;     // elements whose mask is drawn before they are scaled (even)

// out = x * keep / (1 - p) over the contiguous float32 `x`, keep[i] = the element's 32 bits >= p * 2^32
// (a keep probability within 2^-32 of 1 - p); `mask` (bytes, may be null) records keep. The draws are
// scalar (64-bit products), the scaling a separate loop the compiler vectorises (a branch in it would not).
void fill_dropout(const float* x, float* out, uint8_t* mask, int64_t n, double p, uint64_t seed) {
  const uint64_t threshold = static_cast<uint64_t>(std::llround(p * 4294967296.0));
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  // Threads split by blocks, so each element's draw (pair k = i / 2) is the same whatever the split.
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrain / kBlock, [&](int64_t begin, int64_t end) {
    uint8_t local[kBlock];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock, count = std::min(kBlock, n - first);
      uint8_t* keep = mask ? mask + first : local;
      for (int64_t j = 0; j < count; j += 2) {
        const uint64_t bits = splitmix64(seed, static_cast<uint64_t>((first + j) / 2));
        keep[j] = (bits & 0xFFFFFFFFull) >= threshold;
        if (j + 1 < count) keep[j + 1] = (bits >> 32) >= threshold;
      }
      const float* in = x + first;
      float* o = out + first;
      for (int64_t j = 0; j < count; ++j) o[j] = in[j] * (static_cast<float>(keep[j]) * scale);
    }
  });
}

// The autograd form: backward is grad * mask / (1 - p), from the byte mask.
class DropoutFunction : public torch::autograd::Function<DropoutFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, double p) {
    const torch::Tensor input = x.contiguous();
    torch::Tensor out = torch::empty_like(input);
    torch::Tensor mask = torch::empty(input.sizes(), input.options().dtype(torch::kUInt8));
    fill_dropout(input.data_ptr<float>(), out.data_ptr<float>(), mask.data_ptr<uint8_t>(), input.numel(), p,
                 draw_seed());
    ctx->save_for_backward({mask});
    ctx->saved_data["p"] = p;
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor mask = ctx->get_saved_variables()[0];
    const float scale = static_cast<float>(1.0 / (1.0 - ctx->saved_data["p"].toDouble()));
    const torch::Tensor grad = grads[0].contiguous();
    if (grad.scalar_type() != torch::kFloat) return {grad * mask * scale, torch::Tensor()};
    torch::Tensor out = torch::empty_like(grad);
    const float* g = grad.data_ptr<float>();
    const uint8_t* m = mask.data_ptr<uint8_t>();
    float* o = out.data_ptr<float>();
    at::parallel_for(0, grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) o[i] = g[i] * (static_cast<float>(m[i]) * scale);
    });
    return {out, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor dropout(const torch::Tensor& x, double p, bool training) {
  check_probability(p);
  if (!training || p == 0.0) return x;
  if (!x.device().is_cpu() || x.scalar_type() != torch::kFloat || p == 1.0) return torch::dropout(x, p, true);
  if (x.requires_grad() && torch::GradMode::is_enabled()) return DropoutFunction::apply(x, p);
  const torch::Tensor input = x.contiguous();
  torch::Tensor out = torch::empty_like(input);
  fill_dropout(input.data_ptr<float>(), out.data_ptr<float>(), nullptr, input.numel(), p, draw_seed());
  return out;
}

DropoutImpl::DropoutImpl(double p) : p(p) {
  check_probability(p);
}

void DropoutImpl::pretty_print(std::ostream& stream) const {
  stream << "Dropout(p=" << p << ")";
}

}  // namespace graft
