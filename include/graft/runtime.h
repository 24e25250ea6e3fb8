// Process-wide runtime settings: intra-op threads, device choice, and what the engine is built with.
#pragma once
#include <torch/types.h>

#include <string>

namespace graft {

// Sets libtorch's intra-op threads; 0 means the machine's cores (std::thread::hardware_concurrency).
void set_threads(int threads);

// Keeps memory that tensors free inside the process for the next allocation instead of unmapping it
// (glibc: no mmap for large blocks, trim above 512 MiB). A training step frees and re-allocates the same
// large buffers (a language model's logits are hundreds of MB); with glibc's defaults each one is a fresh
// mmap whose pages the kernel zeroes again, which doubled the step time of a small GPT-2 here. Costs a
// higher resident peak. No effect with other C libraries.
void retain_freed_memory();

// "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N". Throws graft::Error when CUDA is asked
// for and this libtorch has none.
torch::Device parse_device(const std::string& text);

// The BLAS library actually mapped into this process (libopenblas, MKL, or the slow reference libblas),
// found from /proc/self/maps; "unknown" elsewhere.
std::string blas_in_use();

// How libgomp's idle workers wait: OMP_WAIT_POLICY / GOMP_SPINCOUNT from the environment, PASSIVE as the
// graft program and benchmarks set it (src/cli/openmp_wait.cpp), or libgomp's spinning default, which
// costs matrix products up to 2x on a few cores; a program of the library's users sets it itself.
std::string openmp_wait_policy();

// Multi-line report: graft and libtorch versions, threads, BLAS, OpenMP waiting, oneDNN, CUDA devices.
std::string runtime_info();

}  // namespace graft
