// Runs a function in a forked child process and reads what it writes back through a pipe, under a
// deadline and an address-space limit. For third-party parsers that can crash or loop forever on a
// hostile file (libhdf5, issue #8): the child's crash or hang becomes a ChildFailed in the parent.
//
// The child is a fork without exec, so it must not touch state other threads of the parent may hold
// (locks, libtorch's thread pools): give it plain C/C++ work that writes bytes to the fd it is handed.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace graft::detail {

// How a child failed: killed at the deadline, ended by a signal, exited with a status, or closed its
// pipe early. The message says which, e.g. "crashed with signal 11 (Segmentation fault)".
class ChildFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ChildLimits {
  std::chrono::milliseconds deadline{60'000};  // from the fork to the child's last byte
  uint64_t extra_address_space = 0;            // bytes beyond the parent's at the fork; 0: no limit
};

class ChildProcess {
 public:
  // Forks; the child runs work(write_fd) and exits 0 on return, 1 if it throws.
  ChildProcess(const std::function<void(int write_fd)>& work, const ChildLimits& limits);
  ~ChildProcess();  // kills and reaps a child still running
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads exactly n bytes; throws ChildFailed when the child ends, closes the pipe or misses the deadline.
  void read_exact(void* data, size_t n);
  // Expects the end of the stream and a clean exit; throws ChildFailed otherwise.
  void finish();

 private:
  [[noreturn]] void fail_after_eof();
  [[noreturn]] void fail_on_deadline();

  pid_t pid_ = -1;
  int read_fd_ = -1;
  std::chrono::steady_clock::time_point deadline_;
  std::chrono::milliseconds allowed_;
};

// Writes all n bytes to fd (retrying short writes); false when the pipe is gone.
bool write_all(int fd, const void* data, size_t n);

}  // namespace graft::detail
