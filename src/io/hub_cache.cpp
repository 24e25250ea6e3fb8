// huggingface_hub's cache layout (see io/hub_cache.h): reading and linking files under
// models--ORG--NAME/, and pulling from the cache alone (offline, or with the Hub unreachable).
#include "io/hub_cache.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "graft/errors.h"
#include "graft/strings.h"

namespace graft::hub_detail {
namespace fs = std::filesystem;

std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool is_hex(const std::string& text, size_t length) {
  return text.size() == length && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string shorten(const std::string& body) {
  std::string text = body.substr(0, 300);
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return trim(text) + (body.size() > 300 ? "..." : "");
}

// ---------------------------------------------------------------------------------------------------
// Files: atomic writes, fsync, symlinks

namespace {

// The snapshot's folders for `name` exist as real folders (never symlinks, which could lead out).
void make_parent_folders(const fs::path& snapshot, const std::string& name) {
  fs::path current = snapshot;
  const fs::path relative(name);
  std::vector<fs::path> parts(relative.begin(), relative.end());
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    current /= parts[i];
    const auto status = fs::symlink_status(current);
    if (fs::is_symlink(status))
      throw Error(name + ": refused: its folder " + current.string() + " is a symbolic link in the cache");
    if (!fs::exists(status)) {
      fs::create_directory(current);
    } else if (!fs::is_directory(status)) {
      throw Error(name + ": refused: " + current.string() + " exists and is not a folder");
    }
  }
}

// Every file of a snapshot folder (relative names, sorted) whose link resolves.
std::vector<std::string> snapshot_files(const fs::path& snapshot) {
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(snapshot)) {
    if (fs::is_regular_file(entry.path()))
      files.push_back(entry.path().lexically_relative(snapshot).string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::string read_small_file(const fs::path& path, size_t max_bytes) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) throw Error(path.string() + ": cannot read (" + ec.message() + ")");
  if (size > max_bytes)
    throw Error(path.string() + ": " + std::to_string(size) + " bytes, more than the " +
                std::to_string(max_bytes >> 20) + " MiB graft accepts for it");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void link_snapshot_file(const fs::path& snapshot, const std::string& name, const fs::path& blob) {
  make_parent_folders(snapshot, name);
  const fs::path pointer = snapshot / name;
  const fs::path target = blob.lexically_relative(pointer.parent_path());
  const fs::path temporary = pointer.string() + ".link-" + std::to_string(::getpid());
  fs::remove(temporary);
  fs::create_symlink(target, temporary);
  fs::rename(temporary, pointer);
}

// ---------------------------------------------------------------------------------------------------

std::string normalize_etag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag = etag.substr(2);
  etag.erase(std::remove(etag.begin(), etag.end(), '"'), etag.end());
  return etag;
}

void check_etag(const std::string& etag, const std::string& url) {
  const bool plain = !etag.empty() && etag.size() <= 128 && etag[0] != '.' &&
                     std::all_of(etag.begin(), etag.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
                     });
  if (!plain)
    throw Error(url + ": the server's ETag '" + shorten(etag) + "' cannot name a cache file; refused");
}

fs::path cache_root(const HubOptions& options) {
  if (options.cache_dir.empty()) throw Error("no Hugging Face cache folder: set HF_HOME or HF_HUB_CACHE");
  return options.cache_dir;
}

std::optional<CachedSnapshot> find_cached_snapshot(const HubRepo& repo, const HubOptions& options) {
  const fs::path folder = cache_root(options) / repo.folder_name();
  std::string commit;
  if (is_hex(repo.revision, 40)) {
    commit = repo.revision;
  } else {
    const fs::path ref = folder / "refs" / repo.revision;
    if (!fs::is_regular_file(ref)) return std::nullopt;
    commit = trim(read_small_file(ref, 4096));
    if (!is_hex(commit, 40))
      throw FormatError(ref.string(), "expected a 40-digit commit hash, found '" + shorten(commit) + "'");
  }
  const fs::path snapshot = folder / "snapshots" / commit;
  if (!fs::is_directory(snapshot)) return std::nullopt;
  return CachedSnapshot{commit, snapshot};
}

HubPullResult pull_from_cache(const HubRepo& repo, const std::vector<std::string>& files,
                              const HubOptions& options, const std::string& why) {
  const auto cached = find_cached_snapshot(repo, options);
  const fs::path folder = cache_root(options) / repo.folder_name();
  if (!cached) {
    throw Error(repo.id + "@" + repo.revision + ": " + why + ", and it is not in the cache (no " +
                (is_hex(repo.revision, 40) ? (folder / "snapshots" / repo.revision).string()
                                           : (folder / "refs" / repo.revision).string()) +
                "); pull it once with network access: graft pull " + repo.id +
                (repo.revision == "main" ? "" : " --revision " + repo.revision));
  }
  HubPullResult result;
  result.repo = repo.id;
  result.revision = repo.revision;
  result.commit = cached->commit;
  result.snapshot = cached->snapshot.string();
  result.from_cache_only = true;
  result.files = snapshot_files(cached->snapshot);
  for (const auto& name : files) {
    check_hub_file_name(name);
    if (!fs::is_regular_file(cached->snapshot / name))
      throw Error(repo.id + "@" + repo.revision + ": " + why + ", and " + name +
                  " is not in the cached snapshot " + result.snapshot);
  }
  if (result.files.empty())
    throw Error(result.snapshot + ": the cached snapshot holds no files (" + why + ")");
  return result;
}

}  // namespace graft::hub_detail
