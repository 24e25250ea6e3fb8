// Process-wide runtime settings: intra-op threads, device choice, and what the engine is built with.
#pragma once
#include <torch/types.h>

#include <string>

namespace graft {

// Sets libtorch's intra-op threads; 0 means the machine's cores (std::thread::hardware_concurrency).
void set_threads(int threads);

// "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N". Throws graft::Error when CUDA is asked
// for and this libtorch has none.
torch::Device parse_device(const std::string& text);

// The BLAS library actually mapped into this process (libopenblas, MKL, or the slow reference libblas),
// found from /proc/self/maps; "unknown" elsewhere.
std::string blas_in_use();

// Multi-line report: graft and libtorch versions, threads, BLAS, oneDNN, CUDA devices.
std::string runtime_info();

}  // namespace graft
