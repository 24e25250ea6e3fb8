#include "io/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)
#define GRAFT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GRAFT_ASAN 1
#endif
#endif

namespace graft::detail {
namespace {

// The address space mapped now (VmSize), from /proc/self/statm; 0 when unknown.
uint64_t mapped_bytes() {
  FILE* statm = std::fopen("/proc/self/statm", "r");
  if (!statm) return 0;
  unsigned long long pages = 0;
  const int got = std::fscanf(statm, "%llu", &pages);
  std::fclose(statm);
  return got == 1 ? pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

[[noreturn]] void run_child(const std::function<void(int)>& work, int write_fd, const ChildLimits& limits) {
  // Dies with the parent: a child looping inside a parser must not outlive a killed graft.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // A crash here is the parent's to report: the host program's crash handlers (a crash reporter, or
  // libFuzzer's, which would write the input out as its own finding) must not run in the child.
  for (const int signal : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP}) std::signal(signal, SIG_DFL);
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
#ifndef GRAFT_ASAN  // ASan reserves terabytes of shadow address space up front
  if (limits.extra_address_space > 0) {
    const uint64_t now = mapped_bytes();
    if (now > 0) {
      const rlimit space{now + limits.extra_address_space, now + limits.extra_address_space};
      setrlimit(RLIMIT_AS, &space);
    }
  }
#endif
  // A CPU-time backstop in case the parent cannot kill us (its deadline is the real limit).
  const auto cpu_seconds = static_cast<rlim_t>(limits.deadline.count() / 1000 + 2);
  const rlimit cpu{cpu_seconds, cpu_seconds + 1};
  setrlimit(RLIMIT_CPU, &cpu);
  int status = 0;
  try {
    work(write_fd);
  } catch (...) {
    status = 1;
  }
  close(write_fd);
  _exit(status);  // no atexit handlers, no destructors of the parent's statics
}

}  // namespace

bool write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t wrote = write(fd, p, n);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) return false;
    p += wrote;
    n -= static_cast<size_t>(wrote);
  }
  return true;
}

ChildProcess::ChildProcess(const std::function<void(int)>& work, const ChildLimits& limits)
    : allowed_(limits.deadline) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    throw ChildFailed(std::string("cannot create a pipe: ") + std::strerror(errno));
  std::fflush(nullptr);  // buffered output would otherwise be written twice
  pid_ = fork();
  if (pid_ < 0) {
    const int error = errno;
    close(fds[0]);
    close(fds[1]);
    throw ChildFailed(std::string("cannot fork: ") + std::strerror(error));
  }
  if (pid_ == 0) {
    close(fds[0]);
    run_child(work, fds[1], limits);
  }
  close(fds[1]);
  read_fd_ = fds[0];
  deadline_ = std::chrono::steady_clock::now() + limits.deadline;
}

ChildProcess::~ChildProcess() {
  if (read_fd_ >= 0) close(read_fd_);
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
}

void ChildProcess::read_exact(void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now());
    if (left.count() <= 0) fail_on_deadline();
    pollfd wait_for{read_fd_, POLLIN, 0};
    const int ready = poll(&wait_for, 1, static_cast<int>(std::min<int64_t>(left.count(), 1'000'000)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0)
      throw ChildFailed(std::string("cannot wait for the reader process: ") + std::strerror(errno));
    if (ready == 0) continue;  // the loop checks the deadline
    const ssize_t got = read(read_fd_, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0)
      throw ChildFailed(std::string("cannot read from the reader process: ") + std::strerror(errno));
    if (got == 0) fail_after_eof();
    p += got;
    n -= static_cast<size_t>(got);
  }
}

void ChildProcess::finish() {
  char extra;
  const ssize_t got = read(read_fd_, &extra, 1);  // the child wrote its last record: EOF is next
  if (got > 0) throw ChildFailed("the reader process wrote past the end of its stream");
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0) {
    if (errno != EINTR)
      throw ChildFailed(std::string("cannot reap the reader process: ") + std::strerror(errno));
  }
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw ChildFailed(WIFSIGNALED(status)
                          ? "the reader process crashed after its last record (signal " +
                                std::to_string(WTERMSIG(status)) + ")"
                          : "the reader process exited with status " + std::to_string(WEXITSTATUS(status)));
  }
}

void ChildProcess::fail_after_eof() {
  int status = 0;
  // The pipe closes when the child ends; give the kernel a moment to report its status.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  pid_t done = 0;
  while ((done = waitpid(pid_, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < until)
    usleep(1000);
  if (done != pid_) throw ChildFailed("the reader process closed its pipe early and did not exit");
  pid_ = -1;
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    std::string what = "crashed with signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
    if (signal == SIGXCPU) what = "ran out of its CPU time (signal SIGXCPU)";
    throw ChildFailed(what);
  }
  throw ChildFailed("stopped early with exit status " + std::to_string(WEXITSTATUS(status)));
}

void ChildProcess::fail_on_deadline() {
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  throw ChildFailed("did not finish within " + std::to_string(allowed_.count() / 1000) +
                    " s and was stopped");
}

}  // namespace graft::detail
