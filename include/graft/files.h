// Files written whole or not at all. Every file of a run directory and of a checkpoint is written this way:
// a temporary file beside the target, every write() checked, fsync, rename over the target, fsync of the
// folder. A crash, a kill or a full disk at any moment leaves either the previous file or the new one under
// the target's name, never part of one; errors name the file and the reason.
#pragma once
#include <cstddef>
#include <string>

namespace graft {

// strerror(err), followed for a full disk (ENOSPC, EDQUOT) or a file-size limit (EFBIG) by what to do.
std::string file_error_text(int err);

// One atomic write: write() pieces, then commit(). Destroyed without commit(), it removes its temporary
// and leaves the target as it was.
class AtomicFile {
 public:
  // what: the kind of file in messages ("safetensors file"). Creates the temporary ".NAME.tmp-PID-N" in
  // the target's folder; throws graft::Error when it cannot.
  explicit AtomicFile(std::string target, std::string what = "file");
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // All of it, or graft::Error naming the target, the temporary and the reason (e.g. "No space left on
  // device"). The target is untouched either way.
  void write(const void* data, size_t size);
  // fsync, rename over the target, fsync the folder so the rename survives a power cut.
  void commit();

  const std::string& target() const { return target_; }
  const std::string& temporary() const { return temporary_; }

 private:
  [[noreturn]] void fail(const std::string& doing, int err) const;

  std::string target_, what_, temporary_;
  int fd_ = -1;
  bool committed_ = false;
};

// Removes the temporaries (".NAME.tmp-PID-N") that AtomicFile writers killed mid-write left in `folder`;
// those of live processes stay. Returns how many were removed.
int remove_stale_temporaries(const std::string& folder);

// A whole file from a string, through AtomicFile.
void write_file_atomic(const std::string& path, const std::string& contents);

// fsync of a file or a folder (its entries: renames, creations); throws graft::Error naming the path.
// File systems that refuse fsync on folders (EINVAL) are accepted as they are.
void fsync_path(const std::string& path, bool directory);

}  // namespace graft
