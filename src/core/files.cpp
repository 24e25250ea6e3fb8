// Atomic file writes (graft/files.h): temporary beside the target, checked writes, fsync, rename, fsync of
// the folder. The scheme is the usual one for crash-safe replacement (e.g. SQLite's and git's lock files):
// rename() within a folder is atomic, and fsync before it keeps a power cut from publishing an empty file.
#include "graft/files.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "graft/errors.h"
#include "graft/save_id.h"

namespace graft {
namespace {

std::string folder_of(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

std::string file_error_text(int err) {
  std::string text = std::strerror(err);
  if (err == ENOSPC || err == EDQUOT)
    text += " (the disk or your quota is full: free space, or write the run elsewhere with --out)";
  else if (err == EFBIG)
    text +=
        " (a file-size limit was reached, e.g. `ulimit -f`, or the file system's largest file: raise "
        "the limit, or write the run elsewhere with --out)";
  return text;
}

AtomicFile::AtomicFile(std::string target, std::string what)
    : target_(std::move(target)), what_(std::move(what)) {
  static std::atomic<uint64_t> counter{0};
  const std::filesystem::path target_path(target_);
  for (int attempt = 0; attempt < 100; ++attempt) {
    temporary_ = (std::filesystem::path(folder_of(target_)) /
                  ("." + target_path.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                   std::to_string(counter++)))
                     .string();
    // 0666 so the final file gets the usual umask-derived permissions, as a plain fopen would.
    fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0 || errno != EEXIST) break;
  }
  if (fd_ < 0) fail("cannot create the temporary file", errno);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temporary_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  constexpr size_t kChunk = size_t{1} << 30;  // Linux writes at most ~2 GiB per call
  while (size > 0) {
    const ssize_t written = ::write(fd_, bytes, std::min(size, kChunk));
    if (written < 0 && errno == EINTR) continue;
    // write() returns 0 only for a zero-byte request; a short write is followed by another that reports
    // the error (ENOSPC, EFBIG).
    if (written <= 0) fail("cannot write", written < 0 ? errno : EIO);
    bytes += written;
    size -= static_cast<size_t>(written);
  }
}

void AtomicFile::commit() {
  // Without this fsync a crash soon after the rename can leave the new name on an empty file; it is also
  // where delayed allocation reports a full disk on some file systems.
  if (::fsync(fd_) != 0) fail("cannot flush to disk", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("cannot close", errno);
  if (::rename(temporary_.c_str(), target_.c_str()) != 0)
    fail("cannot rename the temporary file over it", errno);
  committed_ = true;
  fsync_path(folder_of(target_), /*directory=*/true);
}

void AtomicFile::fail(const std::string& doing, int err) const {
  throw Error(target_ + ": " + doing + " (" + what_ + ", through the temporary " + temporary_ +
              "): " + file_error_text(err) + "; the previous " + target_ + ", if any, is unchanged");
}

int remove_stale_temporaries(const std::string& folder) {
  int removed = 0;
  std::error_code error;
  for (std::filesystem::directory_iterator it(folder, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    const size_t mark = name.rfind(".tmp-");
    if (name.empty() || name[0] != '.' || mark == std::string::npos || !it->is_regular_file()) continue;
    const std::string rest = name.substr(mark + 5);  // PID-N
    const size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || dash > 9 ||
        rest.find_first_not_of("0123456789-") != std::string::npos)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dash)));
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH)
      continue;  // its writer may still be at work
    std::error_code ignored;
    if (std::filesystem::remove(it->path(), ignored)) ++removed;
  }
  return removed;
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile file(path);
  file.write(contents.data(), contents.size());
  file.commit();
}

void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) throw Error(path + ": cannot open to flush it to disk: " + file_error_text(errno));
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  // Some file systems refuse fsync on folders (EINVAL); the data is then as durable as it gets.
  if (rc != 0 && !(directory && saved == EINVAL))
    throw Error(path + ": cannot flush to disk: " + file_error_text(saved));
}

std::string new_save_id() {
  std::random_device entropy;  // the kernel's random numbers
  char id[17];
  const unsigned high = entropy(), low = entropy();
  std::snprintf(id, sizeof id, "%08x%08x", high, low);
  return id;
}

}  // namespace graft
