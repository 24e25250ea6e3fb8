// The Hub client's HTTP over libcurl (src/io/hub.cpp): GET and HEAD into memory, resumable downloads
// into a file, and the errors and hints a failed request gives.
#pragma once
#include <curl/curl.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "graft/errors.h"
#include "graft/hub.h"

namespace graft {
class ProgressBar;
}

namespace graft::hub_detail {

constexpr size_t kMaxErrorBodyBytes = 4096;  // what an error response may add to a message

// The Hub could not be reached at all (DNS, refused, timeout): with a cached snapshot, pull falls back.
class HubConnectionError : public Error {
 public:
  using Error::Error;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; the last response's only
  std::string body;
};

// " (...)": what an HTTP error status most likely means for a pull; "" for other statuses.
std::string status_hint(long status);

// One easy handle per pull, so that connections are reused between files.
class HttpClient {
 public:
  explicit HttpClient(const HubOptions& options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET (or HEAD) without following redirects; a body above max_body bytes is refused.
  HttpResponse request(const std::string& method, const std::string& url, size_t max_body);

  // GET `url` (following redirects: LFS files live on a CDN) appending to the open file `out`, which
  // already holds `offset` bytes: asks for the rest with a Range request. Returns the HTTP status; the
  // caller checks it. `received` counts the bytes written this time; `restarted` is set when the server
  // ignored the range and sent the whole file (then the file was truncated first). The file never grows
  // past `limit` bytes: a server that sends more is cut off and `overran` is set.
  struct Download {
    long status = 0;
    int64_t received = 0;
    bool restarted = false;
    bool overran = false;
    std::string error_body;
    CURLcode code = CURLE_OK;
    std::string curl_error;
  };
  Download download(const std::string& url, int fd, int64_t offset, int64_t limit, ProgressBar* bar);

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
    int64_t limit = 0;  // the most bytes the file may hold
    bool overran = false;
    bool started = false;
    bool restarted = false;
    std::string write_error;
    ProgressBar* bar = nullptr;
  };

  void prepare(const std::string& url, State& state);
  std::string curl_message(const std::string& url, CURLcode code) const;
  static size_t header_line(char* data, size_t size, size_t count, void* user);
  static size_t write_memory(char* data, size_t size, size_t count, void* user);
  static size_t write_file(char* data, size_t size, size_t count, void* user);

  const HubOptions& options_;
  CURL* curl_ = nullptr;
  curl_slist* headers_ = nullptr;
  char error_[CURL_ERROR_SIZE] = {0};
};

}  // namespace graft::hub_detail
