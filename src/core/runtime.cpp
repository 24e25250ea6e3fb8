// Runtime settings and the `graft info` report.
#include "graft/runtime.h"

#include <dlfcn.h>
#include <malloc.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "graft/errors.h"
#include "graft/precision.h"

namespace graft {

void retain_freed_memory() {
#ifdef __GLIBC__
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
}

void set_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
}

torch::Device parse_device(const std::string& text) {
  if (text == "auto")
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  if (text == "cpu") return torch::Device(torch::kCPU);
  if (text.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      throw Error("--device " + text + ": this libtorch has no usable CUDA device (" +
                  std::to_string(torch::cuda::device_count()) +
                  " found); build against a CUDA libtorch with -DCMAKE_PREFIX_PATH, or use --device cpu");
    }
    try {
      return torch::Device(text);
    } catch (const std::exception&) {
      throw Error("--device " + text + ": expected cuda or cuda:N");
    }
  }
  throw Error("--device " + text + ": expected auto, cpu, cuda or cuda:N");
}

std::string blas_in_use() {
  std::ifstream maps("/proc/self/maps");
  std::string line, found;
  while (std::getline(maps, line)) {
    const size_t slash = line.rfind('/');
    if (slash == std::string::npos) continue;
    const std::string lib = line.substr(slash + 1);
    if (lib.find("openblas") != std::string::npos || lib.find("mkl_") != std::string::npos ||
        lib.find("libblis") != std::string::npos) {
      found = line.substr(line.find('/'));
      break;
    }
    if (lib.rfind("libblas.so", 0) == 0 && found.empty()) found = line.substr(line.find('/'));
  }
  if (found.empty()) return "unknown";
  // Debian's alternatives link libblas.so.3 to whichever implementation is installed: name the real one.
  std::string description = found;
  using ConfigFn = const char* (*)();
  if (auto config = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    description += " (" + std::string(config()) + ")";
  } else if (found.find("openblas") == std::string::npos && found.find("mkl") == std::string::npos) {
    description += " (reference BLAS: install libopenblas0-pthread, matrix products are ~25x slower)";
  }
  return description;
}

std::string openmp_wait_policy() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  if (const char* spins = std::getenv("GOMP_SPINCOUNT"))
    return std::string("GOMP_SPINCOUNT=") + spins +
           (policy ? std::string(", OMP_WAIT_POLICY=") + policy : "") + " (from the environment)";
  if (policy && std::getenv("GRAFT_OMP_WAIT_POLICY"))
    return std::string("OMP_WAIT_POLICY=") + policy +
           " (set by graft: idle workers sleep at once and leave the cores to OpenBLAS's threads)";
  if (policy) return std::string("OMP_WAIT_POLICY=") + policy + " (from the environment)";
  return "libgomp's default: idle workers spin for milliseconds, which slows OpenBLAS's matrix products "
         "(set OMP_WAIT_POLICY=PASSIVE; the graft command does)";
}

std::string runtime_info() {
  std::ostringstream out;
  out << "graft      " << GRAFT_VERSION << "\n";
  out << "libtorch   " << TORCH_VERSION << "\n";
  out << "threads    " << at::get_num_threads() << " intra-op, " << at::get_num_interop_threads()
      << " inter-op (machine cores: " << std::thread::hardware_concurrency() << ")\n";
  out << "BLAS       " << blas_in_use() << "\n";
  out << "OpenMP     " << openmp_wait_policy() << "\n";
  out << "oneDNN     " << (at::hasMKLDNN() ? "yes, dispatching to " + onednn_isa() : std::string("no"))
      << "\n";
  const CpuBf16Support bf16 = cpu_bf16_support();
  out << "bf16       AVX512_BF16 " << (bf16.avx512_bf16 ? "yes" : "no") << ", AMX-BF16 "
      << (bf16.amx_bf16 ? "yes" : "no") << ": --precision auto is "
      << (bf16.native() ? "bf16 on this CPU" : "fp32 on this CPU (bf16 would be emulated)") << "\n";
  out << "CUDA       ";
  if (torch::cuda::is_available()) {
    out << torch::cuda::device_count() << " device(s)\n";
  } else {
    out << "none\n";
  }
  out << "devices    cpu" << (torch::cuda::is_available() ? ", cuda" : "") << "\n";
  return out.str();
}

}  // namespace graft
