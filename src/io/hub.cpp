// Pulls Hugging Face Hub repositories into huggingface_hub's own cache layout (see graft/hub.h): the
// revision's file list, then per file a HEAD (ETag, size), a resumable GET into blobs/<etag>.incomplete,
// a checksum, fsync and rename, and a relative symlink under snapshots/<commit>/. Mirrors
// huggingface_hub/file_download.py. HTTP: io/http_client.h; cache: io/hub_cache.h; names: hub_names.cpp.
#include "graft/hub.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "graft/errors.h"
#include "graft/files.h"
#include "graft/json_file.h"
#include "graft/progress.h"
#include "graft/sha256.h"
#include "graft/strings.h"
#include "io/http_client.h"
#include "io/hub_cache.h"

namespace graft {
namespace fs = std::filesystem;
using json = nlohmann::json;
using hub_detail::cache_root;
using hub_detail::check_etag;
using hub_detail::find_cached_snapshot;
using hub_detail::HttpClient;
using hub_detail::HttpResponse;
using hub_detail::HubConnectionError;
using hub_detail::is_hex;
using hub_detail::kMaxErrorBodyBytes;
using hub_detail::link_snapshot_file;
using hub_detail::normalize_etag;
using hub_detail::pull_from_cache;
using hub_detail::read_small_file;
using hub_detail::shorten;
using hub_detail::status_hint;

namespace {

constexpr size_t kMaxApiResponseBytes = 16u << 20;  // a revision listing: a few MB for huge repos
constexpr size_t kMaxModelJsonBytes = 64u << 20;    // a TF.js model.json (topology + manifest)
constexpr int64_t kProgressBarMinBytes = 1 << 20;   // smaller files get only their summary line
constexpr int kMaxRelativeRedirects = 5;

// Percent-encoding as Python's urllib.parse.quote: unreserved characters stay, '/' stays when `keep_slash`.
std::string url_quote(const std::string& text, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// What a download must hash to: the Hub's ETag as a SHA-256 (LFS) or a git blob id (files kept in git).
struct Checksum {
  std::string kind;   // "SHA-256" or "git blob id"; "" when the server gave neither
  std::string value;  // lowercase hex
};

struct Sibling {
  std::string name;
  std::string lfs_sha256;  // "" for files kept in git
  int64_t size = -1;
};

struct FileMeta {
  std::string commit;
  std::string etag;
  int64_t size = -1;
};

class Puller {
 public:
  Puller(const HubRepo& repo, const HubOptions& options)
      : repo_(repo), options_(options), http_(options), folder_(cache_root(options) / repo.folder_name()) {}

  HubPullResult run(const std::vector<std::string>& requested) {
    HubPullResult result;
    result.repo = repo_.id;
    result.revision = repo_.revision;
    list_revision(result.commit);
    result.snapshot = (folder_ / "snapshots" / result.commit).string();
    commit_ = result.commit;

    // What to fetch: the files asked for, or the ones graft reads (top level; pickles never).
    std::vector<std::string> wanted;
    if (!requested.empty()) {
      for (const auto& name : requested) {
        check_hub_file_name(name);
        if (!siblings_.count(name))
          throw Error(repo_.id + "@" + repo_.revision + " (commit " + commit_ + ") has no file " + name +
                      " (files: " + sibling_list() + ")");
        wanted.push_back(name);
      }
    } else {
      for (const auto& [name, sibling] : siblings_) {
        const std::string why = hub_skip_reason(name);
        if (why.empty())
          wanted.push_back(name);
        else
          result.skipped.emplace_back(name, why);
      }
    }
    // TF.js: model.json first, then the weight shards its manifest names (raw float data, not pickles).
    std::set<std::string> shards;
    for (const auto& name : std::vector<std::string>(wanted)) {
      if (fs::path(name).filename() != "model.json") continue;
      const fs::path local = fetch(name, result);
      for (const auto& shard : manifest_shards(local, name)) {
        shards.insert(shard);
        if (std::find(wanted.begin(), wanted.end(), shard) == wanted.end()) wanted.push_back(shard);
      }
    }
    if (!shards.empty()) {
      result.skipped.erase(std::remove_if(result.skipped.begin(), result.skipped.end(),
                                          [&](const auto& skip) { return shards.count(skip.first) > 0; }),
                           result.skipped.end());
    }
    for (const auto& name : wanted) {
      if (is_pickle_file(name) && !shards.count(name)) {
        throw Error(
            name +
            ": refused: a pickle file (PyTorch .bin/.pt/.pth/.ckpt, .pkl) can run arbitrary code "
            "when loaded, and graft never downloads or loads one; take the repository's .safetensors");
      }
    }
    if (wanted.empty()) {
      throw Error(repo_.id + "@" + repo_.revision + ": no file graft can use (files: " + sibling_list() +
                  "); graft reads safetensors, Keras .h5 and TF.js model.json");
    }
    for (const auto& name : wanted) {
      if (std::find(result.files.begin(), result.files.end(), name) == result.files.end())
        fetch(name, result);
    }
    if (repo_.revision != commit_) {
      // Through core's writer: a unique temporary that a crash leaves for remove_stale_temporaries, every
      // write and the fsync checked, nothing left behind on error.
      const fs::path ref = folder_ / "refs" / repo_.revision;
      fs::create_directories(ref.parent_path());
      write_file_atomic(ref.string(), commit_);
    }
    std::sort(result.files.begin(), result.files.end());
    return result;
  }

 private:
  // GET /api/models/ORG/NAME/revision/REV?blobs=true: the commit and every file of it.
  void list_revision(std::string& commit) {
    const std::string url = options_.endpoint + "/api/models/" + repo_.id + "/revision/" +
                            url_quote(repo_.revision, /*keep_slash=*/false) + "?blobs=true";
    const HttpResponse response = http_.request("GET", url, kMaxApiResponseBytes);
    if (response.status != 200) {
      throw Error(url + ": HTTP " + std::to_string(response.status) + status_hint(response.status) +
                  (response.body.empty() ? "" : ": " + shorten(response.body)));
    }
    const json root = parse_json(response.body, url, "the revision listing");
    if (!root.is_object() || !root.contains("sha") || !root["sha"].is_string())
      throw FormatError(url, "expected a JSON object with \"sha\" (the commit) and \"siblings\"");
    commit = root["sha"].get<std::string>();
    if (!is_hex(commit, 40))
      throw FormatError(url,
                        "\"sha\" is '" + shorten(commit) + "', expected a 40-digit lowercase commit hash");
    if (!root.contains("siblings") || !root["siblings"].is_array())
      throw FormatError(url, "no \"siblings\" array (the repository's files)");
    for (const auto& entry : root["siblings"]) {
      if (!entry.is_object() || !entry.contains("rfilename") || !entry["rfilename"].is_string())
        throw FormatError(url, "a sibling without a \"rfilename\" string: " + json_excerpt(entry));
      Sibling sibling;
      sibling.name = entry["rfilename"].get<std::string>();
      try {
        check_hub_file_name(sibling.name);
      } catch (const Error& e) {
        throw Error(url + ": the repository lists a file graft refuses to write: " + e.what());
      }
      if (entry.contains("size") && entry["size"].is_number_integer())
        sibling.size = entry["size"].get<int64_t>();
      if (entry.contains("lfs") && entry["lfs"].is_object()) {
        const json& lfs = entry["lfs"];
        if (lfs.contains("sha256") && lfs["sha256"].is_string())
          sibling.lfs_sha256 = lfs["sha256"].get<std::string>();
        if (lfs.contains("size") && lfs["size"].is_number_integer())
          sibling.size = lfs["size"].get<int64_t>();
      }
      siblings_[sibling.name] = sibling;
    }
  }

  std::string sibling_list() const {
    std::string list;
    for (const auto& [name, sibling] : siblings_) {
      if (list.size() > 400) return list + ", ...";
      list += (list.empty() ? "" : ", ") + name;
    }
    return list.empty() ? "none" : list;
  }

  std::string resolve_url(const std::string& name) const {
    return options_.endpoint + "/" + repo_.id + "/resolve/" + commit_ + "/" +
           url_quote(name, /*keep_slash=*/true);
  }

  // HEAD: the file's ETag (X-Linked-Etag for LFS files, whose answer is a redirect to the CDN), size and
  // commit. Relative redirects (a renamed repository) are followed, absolute ones are not needed.
  FileMeta head(const std::string& name) {
    std::string url = resolve_url(name);
    HttpResponse response;
    for (int redirect = 0;; ++redirect) {
      response = http_.request("HEAD", url, kMaxErrorBodyBytes);
      const auto location = response.headers.find("location");
      const bool relative_redirect =
          response.status >= 300 && response.status < 400 && location != response.headers.end() &&
          location->second.rfind("/", 0) == 0 && location->second.rfind("//", 0) != 0;
      if (!relative_redirect || response.headers.count("x-linked-etag")) break;
      if (redirect == kMaxRelativeRedirects) throw Error(url + ": too many redirects");
      url = options_.endpoint + location->second;
    }
    if (response.status != 200 && !(response.status >= 300 && response.status < 400)) {
      throw Error(url + ": HTTP " + std::to_string(response.status) + status_hint(response.status));
    }
    auto header = [&](const char* key) {
      const auto found = response.headers.find(key);
      return found == response.headers.end() ? std::string() : found->second;
    };
    FileMeta meta;
    meta.commit = header("x-repo-commit");
    meta.etag = normalize_etag(!header("x-linked-etag").empty() ? header("x-linked-etag") : header("etag"));
    if (meta.etag.empty())
      throw Error(
          url + ": the server sent no ETag (nor X-Linked-Etag); graft needs it to name and verify the file");
    check_etag(meta.etag, url);
    const std::string size =
        !header("x-linked-size").empty() ? header("x-linked-size") : header("content-length");
    if (!size.empty()) {
      char* end = nullptr;
      const long long value = std::strtoll(size.c_str(), &end, 10);
      if (end == size.c_str() || *end != '\0' || value < 0)
        throw Error(url + ": the file size '" + shorten(size) + "' is not a number");
      meta.size = value;
    }
    if (!meta.commit.empty() && meta.commit != commit_) {
      throw Error(
          url + ": X-Repo-Commit is " + meta.commit + ", expected " + commit_ +
          " (the commit the revision listing gave); the repository changed during the pull: pull again");
    }
    return meta;
  }

  // Downloads one file into blobs/ (unless there already) and links it into the snapshot.
  fs::path fetch(const std::string& name, HubPullResult& result) {
    const FileMeta meta = head(name);
    const std::string url = resolve_url(name);
    const Sibling& sibling = siblings_.at(name);
    // LFS: the ETag is the content's SHA-256 (the listing says so too). Files kept in git have their git
    // blob id as ETag: the SHA-1 of "blob <size>\0<content>".
    Checksum expected;
    if (is_hex(meta.etag, 64)) {
      expected = {"SHA-256", meta.etag};
    } else if (is_hex(sibling.lfs_sha256, 64)) {
      expected = {"SHA-256", sibling.lfs_sha256};
    } else if (is_hex(meta.etag, 40)) {
      expected = {"git blob id", meta.etag};
    }
    const int64_t expected_size = meta.size >= 0 ? meta.size : sibling.size;

    const fs::path blobs = folder_ / "blobs";
    fs::create_directories(blobs);
    const fs::path blob = blobs / meta.etag;
    std::string how = "cached";
    auto complete = [&] {
      std::error_code ec;
      return fs::is_regular_file(blob) &&
             (expected_size < 0 || static_cast<int64_t>(fs::file_size(blob, ec)) == expected_size);
    };
    if (!complete()) {
      // One writer per blob: the lock file huggingface_hub takes (filelock uses flock on Unix), so a
      // Python download of the same file and this one wait for each other.
      const fs::path locks = cache_root(options_) / ".locks" / repo_.folder_name();
      fs::create_directories(locks);
      const fs::path lock_path = locks / (meta.etag + ".lock");
      const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (lock < 0) throw Error(lock_path.string() + ": cannot open the lock file: " + std::strerror(errno));
      if (::flock(lock, LOCK_EX | LOCK_NB) != 0) {
        *options_.log << "  " << name << ": another process is downloading it; waiting for "
                      << lock_path.string() << "\n";
        ::flock(lock, LOCK_EX);
      }
      try {
        if (!complete()) how = download(url, name, blob, expected_size, expected, result);
      } catch (...) {
        ::close(lock);
        throw;
      }
      ::close(lock);  // releases the lock
    }
    const fs::path snapshot = folder_ / "snapshots" / commit_;
    fs::create_directories(snapshot);
    link_snapshot_file(snapshot, name, blob);
    result.files.push_back(name);
    const int64_t size = static_cast<int64_t>(fs::file_size(blob));
    *options_.log << "  " << name << "  " << size << " bytes  " << how << "\n";
    return snapshot / name;
  }

  std::string download(const std::string& url, const std::string& name, const fs::path& blob,
                       int64_t expected_size, const Checksum& expected, HubPullResult& result) {
    const fs::path partial = blob.string() + ".incomplete";
    bool resumed = false;
    double delay = options_.retry_delay_seconds;
    for (int attempt = 1;; ++attempt) {
      const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) throw Error(partial.string() + ": cannot open for writing: " + std::strerror(errno));
      struct stat info {};
      ::fstat(fd, &info);
      int64_t offset = info.st_size;
      if (expected_size >= 0 && offset > expected_size) {  // not this file: start again
        if (::ftruncate(fd, 0) != 0) {
          ::close(fd);
          throw Error(partial.string() + ": cannot truncate: " + std::strerror(errno));
        }
        offset = 0;
      }
      if (offset > 0) resumed = true;
      HttpClient::Download got;
      if (expected_size < 0 || offset < expected_size) {
        std::unique_ptr<ProgressBar> bar;
        if (expected_size >= kProgressBarMinBytes) {
          bar = std::make_unique<ProgressBar>("  " + name + (offset > 0 ? " (resumed)" : ""),
                                              expected_size - offset, *options_.log, "B");
        }
        try {
          got = http_.download(url, fd, offset,
                               expected_size >= 0 ? expected_size : options_.max_unsized_bytes, bar.get());
        } catch (...) {
          ::close(fd);
          throw;
        }
        if (bar) bar->finish(bar->current());  // the file's size, rate and time: one line in a log
        result.downloaded_bytes += got.received;
        if (got.restarted) offset = 0;
        if (got.overran) {
          ::close(fd);
          fs::remove(partial);  // nothing of a file that overran is kept
          throw Error(url + ": " + name + ": the server sent more than the " +
                      (expected_size >= 0 ? std::to_string(expected_size) + " bytes it announced"
                                          : std::to_string(options_.max_unsized_bytes) +
                                                " bytes graft accepts for a file of no announced size") +
                      "; the download was stopped and discarded");
        }
      } else {
        got.status = 206;  // everything is already there: only the checks remain
      }
      const bool synced = ::fsync(fd) == 0;
      ::close(fd);
      if (!synced) throw Error(partial.string() + ": fsync failed: " + std::strerror(errno));

      if (got.code == CURLE_OK && got.status == 416 && offset > 0) {
        fs::remove(partial);  // the range does not fit the server's file: the partial file is not of it
        if (attempt < options_.attempts) continue;
      }
      if (got.code == CURLE_OK && got.status != 200 && got.status != 206) {
        throw Error(url + ": HTTP " + std::to_string(got.status) + status_hint(got.status) +
                    " while downloading " + name +
                    (got.error_body.empty() ? "" : ": " + shorten(got.error_body)));
      }
      const int64_t have = static_cast<int64_t>(fs::file_size(partial));
      if (got.code != CURLE_OK || (expected_size >= 0 && have < expected_size)) {
        const std::string why = got.code != CURLE_OK ? got.curl_error : url + ": the transfer ended early";
        if (attempt < options_.attempts) {
          *options_.log << "graft: warning: " << why << "; " << have << " of "
                        << (expected_size >= 0 ? std::to_string(expected_size) : std::string("?"))
                        << " bytes of " << name << " so far, resuming in " << delay << " s (attempt "
                        << attempt + 1 << " of " << options_.attempts << ")\n";
          std::this_thread::sleep_for(std::chrono::duration<double>(delay));
          delay *= 2;
          continue;
        }
        throw Error(why + "; " + name + ": " + std::to_string(have) + " of " +
                    (expected_size >= 0 ? std::to_string(expected_size) : std::string("?")) +
                    " bytes downloaded after " + std::to_string(attempt) + " attempts; the partial file " +
                    partial.string() + " is kept: pull again to resume");
      }
      if (expected_size >= 0 && have != expected_size) {
        fs::remove(partial);
        throw Error(url + ": " + name + " is " + std::to_string(have) + " bytes, expected " +
                    std::to_string(expected_size) +
                    " (Content-Length / X-Linked-Size); the download was discarded");
      }
      if (!expected.value.empty()) {
        const std::string actual =
            expected.kind == "SHA-256" ? sha256_file(partial.string()) : git_blob_sha1_file(partial.string());
        if (actual != expected.value) {
          fs::remove(partial);
          throw Error(
              url + ": " + name + " has " + expected.kind + " " + actual + ", expected " + expected.value +
              " (the Hub's ETag); the download was discarded and nothing was linked into the snapshot");
        }
      }
      fs::rename(partial, blob);
      fsync_path(blob.parent_path().string(), true);
      std::string how = resumed ? "downloaded (resumed)" : "downloaded";
      if (expected.value.empty() && expected_size < 0) {
        // Neither a checksum nor a size: nothing to check the bytes against, and it is said so.
        *options_.log << "graft: warning: " << url
                      << ": the server gave neither a checksum nor a size; the file is not verified\n";
        return how + ", not verified (no checksum, no size)";
      }
      return how + (expected.value.empty()       ? ", size checked (no checksum)"
                    : expected.kind == "SHA-256" ? ", sha256 ok"
                                                 : ", git blob id ok");
    }
  }

  // The weight files a TF.js model.json names (weightsManifest[].paths, relative to its folder).
  std::vector<std::string> manifest_shards(const fs::path& local, const std::string& name) {
    const json root = parse_json(read_small_file(local, kMaxModelJsonBytes), name);
    std::vector<std::string> shards;
    if (!root.is_object() || !root.contains("weightsManifest")) return shards;
    if (!root["weightsManifest"].is_array()) throw FormatError(name, "\"weightsManifest\" is not an array");
    const std::string folder = fs::path(name).parent_path().string();
    for (const auto& group : root["weightsManifest"]) {
      if (!group.is_object() || !group.contains("paths") || !group["paths"].is_array())
        throw FormatError(name, "a weightsManifest group without \"paths\"");
      for (const auto& path : group["paths"]) {
        if (!path.is_string()) throw FormatError(name, "a weightsManifest path that is not a string");
        const std::string shard =
            folder.empty() ? path.get<std::string>() : folder + "/" + path.get<std::string>();
        check_hub_file_name(shard);
        if (!siblings_.count(shard))
          throw Error(name + " names the weight file " + shard + ", which " + repo_.id + " (commit " +
                      commit_ + ") does not have");
        shards.push_back(shard);
      }
    }
    return shards;
  }

  HubRepo repo_;
  const HubOptions& options_;
  HttpClient http_;
  fs::path folder_;
  std::string commit_;
  std::map<std::string, Sibling> siblings_;
};

}  // namespace

HubPullResult hub_pull(const HubRepo& repo, const std::vector<std::string>& files,
                       const HubOptions& options) {
  if (options.offline) return pull_from_cache(repo, files, options, "HF_HUB_OFFLINE is set");
  try {
    Puller puller(repo, options);
    return puller.run(files);
  } catch (const HubConnectionError& e) {
    // Like huggingface_hub: an unreachable Hub with the revision already cached is not an error.
    if (!find_cached_snapshot(repo, options)) throw;
    *options.log << "graft: warning: " << e.what() << "; using the cached snapshot\n";
    return pull_from_cache(repo, files, options, std::string("the Hub is unreachable"));
  }
}

std::string resolve_weights(const std::string& value, const HubOptions& options) {
  std::error_code ec;
  if (value.empty() || fs::exists(value, ec) || !looks_like_hub_repo(value)) return value;
  const HubRepo repo = HubRepo::parse(value);
  HubPullResult pulled;
  try {
    pulled = hub_pull(repo, {}, options);
  } catch (const Error& e) {
    // A mistyped path looks like ORG/NAME too: say both readings.
    throw Error(value + ": no such file or folder, and as a Hugging Face Hub repository: " + e.what());
  }
  const fs::path snapshot = pulled.snapshot;
  if (fs::is_regular_file(snapshot / "model.safetensors")) return (snapshot / "model.safetensors").string();
  std::vector<std::string> h5;
  for (const auto& name : pulled.files)
    if (name.find('/') == std::string::npos && ends_with(name, ".h5")) h5.push_back(name);
  if (h5.size() == 1) return (snapshot / h5.front()).string();
  if (fs::is_regular_file(snapshot / "model.json")) return (snapshot / "model.json").string();
  return snapshot.string();
}

}  // namespace graft
