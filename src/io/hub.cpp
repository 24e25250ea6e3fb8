// Downloads Hugging Face Hub repositories into huggingface_hub's own cache layout (see graft/hub.h) with
// libcurl: the revision's file list from the API, then per file a HEAD for its ETag and size, a resumable
// GET into blobs/<etag>.incomplete, a SHA-256 check, fsync and rename, and a relative symlink under
// snapshots/<commit>/. Mirrors huggingface_hub/file_download.py (hf_hub_download, snapshot_download).
#include "graft/hub.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "graft/errors.h"
#include "graft/files.h"
#include "graft/json_file.h"
#include "graft/progress.h"
#include "graft/sha256.h"
#include "graft/strings.h"

namespace graft {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMaxApiResponseBytes = 16u << 20;  // a revision listing: a few MB for huge repos
constexpr size_t kMaxModelJsonBytes = 64u << 20;    // a TF.js model.json (topology + manifest)
constexpr size_t kMaxErrorBodyBytes = 4096;         // what an error response may add to a message
constexpr int64_t kProgressBarMinBytes = 1 << 20;   // smaller files get only their summary line
constexpr int kMaxRelativeRedirects = 5;

// The Hub could not be reached at all (DNS, refused, timeout): with a cached snapshot, pull falls back.
class HubConnectionError : public Error {
 public:
  using Error::Error;
};

std::string lower(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

bool is_hex(const std::string& text, size_t length) {
  return text.size() == length && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

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

std::string shorten(const std::string& body) {
  std::string text = body.substr(0, 300);
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return trim(text) + (body.size() > 300 ? "..." : "");
}

// ---------------------------------------------------------------------------------------------------
// HTTP over libcurl

void curl_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; the last response's only
  std::string body;
};

std::string status_hint(long status) {
  switch (status) {
    case 401:
    case 403:
      return " (a private or gated repository needs a token: set HF_TOKEN, and accept the model's terms on "
             "its Hub page)";
    case 404:
      return " (no such repository, revision or file; check the name and --revision)";
    case 429:
      return " (rate limited: wait and pull again)";
    default:
      return status >= 500 ? " (the server failed; pull again later)" : "";
  }
}

// One easy handle per pull, so that connections are reused between files.
class HttpClient {
 public:
  explicit HttpClient(const HubOptions& options) : options_(options) {
    curl_init_once();
    curl_ = curl_easy_init();
    if (!curl_) throw Error("libcurl: curl_easy_init failed");
  }
  ~HttpClient() {
    curl_easy_cleanup(curl_);
    curl_slist_free_all(headers_);
  }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET (or HEAD) without following redirects; a body above max_body bytes is refused.
  HttpResponse request(const std::string& method, const std::string& url, size_t max_body) {
    State state;
    state.max_body = max_body;
    prepare(url, state);
    if (method == "HEAD") curl_easy_setopt(curl_, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT, 120L);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &HttpClient::write_memory);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &state);
    const CURLcode code = curl_easy_perform(curl_);
    if (state.too_big) {
      throw Error(url + ": the response is larger than " + std::to_string(max_body >> 20) +
                  " MiB, more than graft accepts for it; refusing to parse it");
    }
    if (code != CURLE_OK) throw HubConnectionError(curl_message(url, code));
    state.response.status = state.status;
    return std::move(state.response);
  }

  // GET `url` (following redirects: LFS files live on a CDN) appending to the open file `out`, which
  // already holds `offset` bytes: asks for the rest with a Range request. Returns the HTTP status; the
  // caller checks it. `received` counts the bytes written this time; `restarted` is set when the server
  // ignored the range and sent the whole file (then the file was truncated first).
  struct Download {
    long status = 0;
    int64_t received = 0;
    bool restarted = false;
    std::string error_body;
    CURLcode code = CURLE_OK;
    std::string curl_error;
  };
  Download download(const std::string& url, int fd, int64_t offset, ProgressBar* bar) {
    State state;
    state.fd = fd;
    state.offset = offset;
    state.bar = bar;
    prepare(url, state);
    curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl_, CURLOPT_MAXREDIRS, 10L);
    if (offset > 0) {
      const std::string range = std::to_string(offset) + "-";
      curl_easy_setopt(curl_, CURLOPT_RANGE, range.c_str());
    }
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &HttpClient::write_file);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &state);
    Download result;
    result.code = curl_easy_perform(curl_);
    result.status = state.status;
    result.received = state.received;
    result.restarted = state.restarted;
    result.error_body = state.response.body;
    if (!state.write_error.empty()) throw Error(state.write_error);
    if (result.code != CURLE_OK) result.curl_error = curl_message(url, result.code);
    return result;
  }

 private:
  struct State {
    long status = 0;
    HttpResponse response;
    size_t max_body = 0;
    bool too_big = false;
    // Downloads:
    int fd = -1;
    int64_t offset = 0;
    int64_t received = 0;
    bool started = false;
    bool restarted = false;
    std::string write_error;
    ProgressBar* bar = nullptr;
  };

  void prepare(const std::string& url, State& state) {
    curl_easy_reset(curl_);
    error_[0] = '\0';
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, error_);
    curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl_, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT, 20L);
    // A stalled transfer (under 1 byte/s for 60 s) fails and is resumed by the next attempt.
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl_, CURLOPT_USERAGENT, "graft/" GRAFT_VERSION " libcurl/" LIBCURL_VERSION);
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &HttpClient::header_line);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &state);
    curl_slist_free_all(headers_);
    headers_ = nullptr;
    // Sizes and ETags are the stored file's, not those of a compressed transfer.
    headers_ = curl_slist_append(headers_, "Accept-Encoding: identity");
    // libcurl (>= 7.58) sends a custom Authorization header to the original host only, never to the CDN
    // a redirect leads to.
    if (!options_.token.empty())
      headers_ = curl_slist_append(headers_, ("Authorization: Bearer " + options_.token).c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers_);
  }

  std::string curl_message(const std::string& url, CURLcode code) const {
    std::string message = url + ": " + curl_easy_strerror(code);
    if (error_[0] != '\0') message += std::string(" (") + error_ + ")";
    return message;
  }

  static size_t header_line(char* data, size_t size, size_t count, void* user) {
    auto* state = static_cast<State*>(user);
    const std::string line(data, size * count);
    if (line.rfind("HTTP/", 0) == 0) {  // a new response (after a redirect or a 100 Continue)
      state->response.headers.clear();
      const size_t space = line.find(' ');
      state->status = space == std::string::npos ? 0 : std::strtol(line.c_str() + space + 1, nullptr, 10);
    } else {
      const size_t colon = line.find(':');
      if (colon != std::string::npos)
        state->response.headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
    }
    return size * count;
  }

  static size_t write_memory(char* data, size_t size, size_t count, void* user) {
    auto* state = static_cast<State*>(user);
    const size_t bytes = size * count;
    if (state->response.body.size() + bytes > state->max_body) {
      state->too_big = true;
      return 0;  // aborts the transfer
    }
    state->response.body.append(data, bytes);
    return bytes;
  }

  static size_t write_file(char* data, size_t size, size_t count, void* user) {
    auto* state = static_cast<State*>(user);
    const size_t bytes = size * count;
    if (state->status != 200 && state->status != 206) {  // an error page: keep its start for the message
      if (state->response.body.size() < kMaxErrorBodyBytes) state->response.body.append(data, bytes);
      return bytes;
    }
    if (!state->started) {
      state->started = true;
      if (state->offset > 0 && state->status == 200) {
        // The server ignored the Range request: the whole file comes again.
        if (::ftruncate(state->fd, 0) != 0 || ::lseek(state->fd, 0, SEEK_SET) != 0) {
          state->write_error = "cannot truncate the partial download: " + std::string(std::strerror(errno));
          return 0;
        }
        state->restarted = true;
      } else if (state->status == 206) {
        const auto found = state->response.headers.find("content-range");
        const std::string expected = "bytes " + std::to_string(state->offset) + "-";
        if (found == state->response.headers.end() || found->second.rfind(expected, 0) != 0) {
          state->write_error = "the server answered the Range request from byte " +
                               std::to_string(state->offset) + " with Content-Range '" +
                               (found == state->response.headers.end() ? "" : found->second) + "'";
          return 0;
        }
      }
    }
    size_t written = 0;
    while (written < bytes) {
      const ssize_t n = ::write(state->fd, data + written, bytes - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        state->write_error = "cannot write the download: " + std::string(std::strerror(errno));
        return 0;
      }
      written += static_cast<size_t>(n);
    }
    state->received += static_cast<int64_t>(bytes);
    if (state->bar) state->bar->update(state->received, state->received, std::nan(""), 0.0);
    return bytes;
  }

  const HubOptions& options_;
  CURL* curl_ = nullptr;
  curl_slist* headers_ = nullptr;
  char error_[CURL_ERROR_SIZE] = {0};
};

// ---------------------------------------------------------------------------------------------------
// Files: atomic writes, fsync, symlinks

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

// snapshots/<commit>/<name> -> the blob, as a relative link (the cache can move), replaced atomically.
void link_snapshot_file(const fs::path& snapshot, const std::string& name, const fs::path& blob) {
  make_parent_folders(snapshot, name);
  const fs::path pointer = snapshot / name;
  const fs::path target = blob.lexically_relative(pointer.parent_path());
  const fs::path temporary = pointer.string() + ".link-" + std::to_string(::getpid());
  fs::remove(temporary);
  fs::create_symlink(target, temporary);
  fs::rename(temporary, pointer);
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

// ---------------------------------------------------------------------------------------------------

std::string normalize_etag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag = etag.substr(2);
  etag.erase(std::remove(etag.begin(), etag.end(), '"'), etag.end());
  return etag;
}

// An ETag becomes a file name under blobs/: only plain characters.
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

struct CachedSnapshot {
  std::string commit;
  fs::path snapshot;
};

// The snapshot a revision points to in the cache, if it is there.
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
          got = http_.download(url, fd, offset, bar.get());
        } catch (...) {
          ::close(fd);
          throw;
        }
        if (bar) bar->finish("");
        result.downloaded_bytes += got.received;
        if (got.restarted) offset = 0;
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
      return how + (expected.value.empty()       ? ", size checked"
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

bool valid_repo_part(const std::string& part) {
  if (part.empty() || part.size() > 96) return false;
  if (part.front() == '.' || part.front() == '-' || part.back() == '.' || part.back() == '-') return false;
  if (part.find("--") != std::string::npos || part.find("..") != std::string::npos) return false;
  return std::all_of(part.begin(), part.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

}  // namespace

HubOptions HubOptions::from_environment() {
  HubOptions options;
  const std::string endpoint = env("HF_ENDPOINT");
  if (!endpoint.empty()) options.endpoint = endpoint;
  while (!options.endpoint.empty() && options.endpoint.back() == '/') options.endpoint.pop_back();
  if (options.endpoint.rfind("https://", 0) != 0 && options.endpoint.rfind("http://", 0) != 0)
    throw Error("HF_ENDPOINT=" + endpoint + ": expected an http:// or https:// address");
  std::string home = env("HF_HOME");
  if (home.empty()) {
    const std::string xdg = env("XDG_CACHE_HOME");
    const std::string user_home = env("HOME");
    home = !xdg.empty() ? xdg + "/huggingface" : (user_home.empty() ? "" : user_home + "/.cache/huggingface");
  }
  options.cache_dir = env("HF_HUB_CACHE");
  if (options.cache_dir.empty() && !home.empty()) options.cache_dir = home + "/hub";
  const std::string offline = lower(env("HF_HUB_OFFLINE"));
  options.offline = offline == "1" || offline == "true" || offline == "yes" || offline == "on";
  options.token = trim(env("HF_TOKEN"));
  if (options.token.empty() && !home.empty()) {  // `huggingface-cli login` stores it there
    const std::string path = !env("HF_TOKEN_PATH").empty() ? env("HF_TOKEN_PATH") : home + "/token";
    std::error_code ec;
    if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) < 4096)
      options.token = trim(read_small_file(path, 4096));
  }
  return options;
}

HubRepo HubRepo::parse(const std::string& text) {
  HubRepo repo;
  std::string id = text;
  const size_t at = text.find('@');
  if (at != std::string::npos) {
    id = text.substr(0, at);
    repo.revision = text.substr(at + 1);
    if (repo.revision.empty()) throw SpecError(text + ": an empty revision after '@'");
    try {
      check_hub_file_name(repo.revision);
    } catch (const Error& e) {
      throw SpecError(text + ": the revision '" + repo.revision + "' is not a valid branch, tag or commit");
    }
  }
  const size_t slash = id.find('/');
  const bool ok = slash == std::string::npos
                      ? valid_repo_part(id)
                      : id.find('/', slash + 1) == std::string::npos &&
                            valid_repo_part(id.substr(0, slash)) && valid_repo_part(id.substr(slash + 1));
  if (!ok) {
    throw SpecError(
        "'" + id +
        "' is not a Hugging Face repository id: expected ORG/NAME (letters, digits, '-', '_', '.'; "
        "no '--' or '..'), e.g. google-bert/bert-base-uncased");
  }
  repo.id = id;
  return repo;
}

std::string HubRepo::folder_name() const {
  std::string name = "models--" + id;
  const size_t slash = name.find('/');
  if (slash != std::string::npos) name.replace(slash, 1, "--");
  return name;
}

bool looks_like_hub_repo(const std::string& value) {
  const std::string id = value.substr(0, value.find('@'));
  if (std::count(id.begin(), id.end(), '/') != 1) return false;
  try {
    HubRepo::parse(value);
    return true;
  } catch (const Error&) {
    return false;
  }
}

void check_hub_file_name(const std::string& name) {
  auto refuse = [&](const std::string& why) {
    throw Error("file name '" + shorten(name) + "' refused: " + why +
                " (it could be written outside the cache)");
  };
  if (name.empty()) refuse("empty");
  if (name.size() > 1000) refuse("longer than 1000 bytes");
  if (name.front() == '/') refuse("an absolute path");
  if (name.find('\\') != std::string::npos) refuse("a backslash");
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f) refuse("a control character");
  size_t begin = 0;
  while (begin <= name.size()) {
    const size_t end = std::min(name.find('/', begin), name.size());
    const std::string part = name.substr(begin, end - begin);
    if (part.empty()) refuse("an empty path component");
    if (part == "..") refuse("a '..' component");
    if (part == ".") refuse("a '.' component");
    begin = end + 1;
  }
}

bool is_pickle_file(const std::string& name) {
  const std::string lowered = lower(name);
  for (const char* suffix : {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
    if (ends_with(lowered, suffix)) return true;
  return false;
}

std::string hub_skip_reason(const std::string& name) {
  if (is_pickle_file(name)) {
    return "pickle (PyTorch .bin/.pt/.pth/.ckpt or .pkl): unpickling can run arbitrary code, so graft never "
           "downloads one; it reads the .safetensors";
  }
  if (name.find('/') != std::string::npos) return "in a subfolder: pass --files " + name + " to fetch it";
  static const std::set<std::string> kNames = {
      "config.json",           "tokenizer.json",          "vocab.txt", "vocab.json", "merges.txt",
      "tokenizer_config.json", "special_tokens_map.json", "model.json"};
  if (kNames.count(name) || ends_with(name, ".safetensors") || ends_with(name, ".h5")) return "";
  return "not a file graft reads: pass --files " + name + " to fetch it";
}

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
