// Idle OpenMP workers sleep at once in graft's programs (the graft command and the benchmarks).
//
// After each parallel region libgomp's workers spin for 300,000 rounds (milliseconds) before they sleep,
// and OpenBLAS's own threads, which run every matrix product, wait for the cores meanwhile: on 2 AMD EPYC
// cores an element-wise op after a GEMM cost ~5 ms, BERT-base's training forward took 2.0 s instead of 1.2
// and BERT-tiny LoRA steps ran at 3 steps/s instead of 8 (bench/RESULTS.md). OMP_WAIT_POLICY=PASSIVE
// cures it, but libgomp reads its environment once, in its constructor, before main. So before any
// library's constructor runs (.preinit_array), a program started without OMP_WAIT_POLICY or
// GOMP_SPINCOUNT executes itself again with OMP_WAIT_POLICY=PASSIVE added. That costs the dynamic
// loader's work again (~0.4 s on those cores), so commands that compute little (--help, --version,
// models, tokenize, pull, convert) skip it. A user's own setting is kept, and `graft info` says which
// applies. If the program cannot be executed again (no /proc), it goes on with libgomp's default.
#include <unistd.h>

#include <cstring>

namespace {

constexpr const char kPolicy[] = "OMP_WAIT_POLICY=PASSIVE";
constexpr const char kMarker[] = "GRAFT_OMP_WAIT_POLICY=set by graft";
constexpr int kMaxEnvironment = 4096;  // entries; a larger environment is left as it is

bool starts_with(const char* text, const char* prefix) {
  return std::strncmp(text, prefix, std::strlen(prefix)) == 0;
}

bool equals(const char* text, const char* word) {
  return std::strcmp(text, word) == 0;
}

// Whether the command line asks for work that runs no tensor operations worth the second start.
bool light_command(int argc, char** argv) {
  const char* command = nullptr;
  for (int i = 1; i < argc && argv[i]; ++i) {
    if (equals(argv[i], "--help") || equals(argv[i], "-h") || equals(argv[i], "--version")) return true;
    if (!command && argv[i][0] != '-') command = argv[i];
  }
  if (!command) return true;  // graft alone prints its usage
  for (const char* light : {"models", "tokenize", "pull", "convert"})
    if (equals(command, light)) return true;
  return false;
}

// Runs before the C library and libtorch are initialised: no allocation, no getenv, only the arguments.
void settle_openmp_waits(int argc, char** argv, char** envp) {
  if (!argv || !envp || light_command(argc, argv)) return;
  static char* environment[kMaxEnvironment + 3];
  int count = 0;
  for (; envp[count]; ++count) {
    if (starts_with(envp[count], "OMP_WAIT_POLICY=") || starts_with(envp[count], "GOMP_SPINCOUNT=") ||
        starts_with(envp[count], "GRAFT_OMP_WAIT_POLICY="))
      return;
    if (count == kMaxEnvironment) return;
    environment[count] = envp[count];
  }
  environment[count] = const_cast<char*>(kPolicy);
  environment[count + 1] = const_cast<char*>(kMarker);
  environment[count + 2] = nullptr;
  execve("/proc/self/exe", argv, environment);  // returns only on failure: go on unchanged
}

}  // namespace

// The dynamic loader calls .preinit_array's entries with (argc, argv, envp) before any constructor.
using Preinit = void (*)(int, char**, char**);
__attribute__((section(".preinit_array"), used)) static const Preinit graft_settle_openmp_waits =
    &settle_openmp_waits;
