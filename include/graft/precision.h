// Numeric precision of the model's computation: float32, or mixed precision through ATen's autocast
// (matrix products and convolutions in bfloat16 or float16, normalisation, softmax, losses, weights and
// optimiser state in float32), and what the machine's hardware multiplies natively.
#pragma once
#include <torch/types.h>

#include <iosfwd>
#include <string>

namespace graft {

enum class Precision { kFloat32, kBFloat16, kFloat16 };

// "fp32", "bf16", "fp16": as --precision and graft.json say it.
std::string precision_name(Precision precision);

// What this CPU multiplies in bfloat16 natively (cpuid), and the instruction set oneDNN dispatches to.
struct CpuBf16Support {
  bool avx512_bf16 = false;  // AVX512_BF16: bf16 dot products (AMD Zen 4, Intel Cooper Lake and later)
  bool amx_bf16 = false;     // AMX-BF16 tiles (Intel Xeon 4th generation and later)
  bool native() const { return avx512_bf16 || amx_bf16; }
};
CpuBf16Support cpu_bf16_support();
// oneDNN's dispatch ISA ("avx512_core_bf16", "avx512_core_amx", "avx2" ...), which ONEDNN_MAX_CPU_ISA may
// lower; "unknown" when libtorch's oneDNN cannot be asked.
std::string onednn_isa();

// Resolves --precision for a device: "fp32" | "bf16" | "fp16" | "auto" (bf16 where the device multiplies it
// natively, else fp32; said on `log`). bf16 on a CPU without native bf16 runs emulated, several times slower
// than fp32: a warning on `log`. fp16 on a CPU is refused (no CPU fp16 kernels), as is fp16 anywhere until
// graft has a loss scaler. Throws graft::Error naming --precision and the choices.
Precision resolve_precision(const std::string& text, torch::Device device, std::ostream& log);

// Mixed precision for the scope of the guard, as PyTorch's `with torch.autocast(device, dtype)`: ATen's
// thread-local autocast enabled for the device's type at the given precision, its cast cache cleared when
// the outermost guard ends, and the earlier state restored. Float32 changes nothing.
class Autocast {
 public:
  Autocast(Precision precision, torch::Device device);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  torch::ScalarType was_dtype_ = torch::kBFloat16;
};

}  // namespace graft
