// --precision and the autocast guard.
#include "graft/precision.h"

#include <ATen/autocast_mode.h>
#include <cpuid.h>
#include <dlfcn.h>

#include <ostream>

#include "graft/errors.h"

namespace graft {

std::string precision_name(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return "fp32";
    case Precision::kBFloat16:
      return "bf16";
    case Precision::kFloat16:
      return "fp16";
  }
  return "fp32";
}

CpuBf16Support cpu_bf16_support() {
  CpuBf16Support support;
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    const unsigned max_subleaf = eax;
    support.amx_bf16 = (edx >> 22) & 1u;  // CPUID.(7,0):EDX[22] AMX-BF16
    if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx))
      support.avx512_bf16 = (eax >> 5) & 1u;  // CPUID.(7,1):EAX[5] AVX512_BF16
  }
#endif
  return support;
}

std::string onednn_isa() {
  // libtorch ships oneDNN without its headers; its C entry point is asked by name.
  using IsaFn = int (*)();
  const auto isa = reinterpret_cast<IsaFn>(dlsym(RTLD_DEFAULT, "dnnl_get_effective_cpu_isa"));
  if (!isa) return "unknown";
  switch (isa()) {  // oneDNN 2.x's dnnl_cpu_isa_t
    case 0x1:
      return "sse41";
    case 0x3:
      return "avx";
    case 0x7:
      return "avx2";
    case 0x27:
      return "avx512_core";
    case 0x67:
      return "avx512_core_vnni";
    case 0xe7:
      return "avx512_core_bf16";
    case 0x3e7:
      return "avx512_core_amx";
    case 0x407:
      return "avx2_vnni";
    default:
      return "unknown";
  }
}

Precision resolve_precision(const std::string& text, torch::Device device, std::ostream& log) {
  const bool cpu = device.is_cpu();
  if (text == "fp32") return Precision::kFloat32;
  if (text == "auto") {
    if (cpu ? cpu_bf16_support().native() : true) {
      log << "--precision auto: bf16 (" << (cpu ? "this CPU multiplies bf16 natively" : "CUDA device")
          << ")\n";
      return Precision::kBFloat16;
    }
    log << "--precision auto: fp32 (this CPU has neither AVX512_BF16 nor AMX-BF16)\n";
    return Precision::kFloat32;
  }
  if (text == "bf16") {
    if (cpu && !cpu_bf16_support().native())
      log << "warning: --precision bf16 on a CPU without AVX512_BF16 or AMX-BF16 runs emulated, slower than "
             "fp32; --precision auto chooses fp32 here\n";
    return Precision::kBFloat16;
  }
  if (text == "fp16") {
    if (cpu) throw Error("--precision fp16: CPUs have no float16 kernels; use bf16 (or auto) on a CPU");
    throw Error("--precision fp16 needs a loss scaler, which graft does not have yet; use bf16 on this GPU");
  }
  throw Error("--precision " + text + ": expected fp32, bf16, fp16 or auto");
}

Autocast::Autocast(Precision precision, torch::Device device) {
  if (precision == Precision::kFloat32) return;
  const torch::ScalarType dtype = precision == Precision::kBFloat16 ? torch::kBFloat16 : torch::kHalf;
  active_ = true;
  cuda_ = device.is_cuda();
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    was_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_enabled(true);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    was_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!active_) return;
  // The cast cache holds low-precision copies of weights that require grad: kept while any guard is open
  // (one step's forward), dropped by the outermost so that an optimiser step is seen by the next forward.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(was_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(was_dtype_);
  }
}

}  // namespace graft
