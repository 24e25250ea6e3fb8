// HTTP over libcurl for the Hub client (see io/http_client.h): request setup, the header and body
// callbacks, and the resumable download into an open file.
#include "io/http_client.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "graft/progress.h"
#include "graft/strings.h"
#include "io/hub_cache.h"

namespace graft::hub_detail {

namespace {

void curl_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

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

HttpClient::HttpClient(const HubOptions& options) : options_(options) {
  curl_init_once();
  curl_ = curl_easy_init();
  if (!curl_) throw Error("libcurl: curl_easy_init failed");
}

HttpClient::~HttpClient() {
  curl_easy_cleanup(curl_);
  curl_slist_free_all(headers_);
}

HttpResponse HttpClient::request(const std::string& method, const std::string& url, size_t max_body) {
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

HttpClient::Download HttpClient::download(const std::string& url, int fd, int64_t offset, int64_t limit,
                                          ProgressBar* bar) {
  State state;
  state.fd = fd;
  state.offset = offset;
  state.limit = limit;
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
  result.overran = state.overran;
  result.error_body = state.response.body;
  if (!state.write_error.empty()) throw Error(state.write_error);
  if (result.code != CURLE_OK && !result.overran) result.curl_error = curl_message(url, result.code);
  return result;
}

void HttpClient::prepare(const std::string& url, State& state) {
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

std::string HttpClient::curl_message(const std::string& url, CURLcode code) const {
  std::string message = url + ": " + curl_easy_strerror(code);
  if (error_[0] != '\0') message += std::string(" (") + error_ + ")";
  return message;
}

size_t HttpClient::header_line(char* data, size_t size, size_t count, void* user) {
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

size_t HttpClient::write_memory(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<State*>(user);
  const size_t bytes = size * count;
  if (state->response.body.size() + bytes > state->max_body) {
    state->too_big = true;
    return 0;  // aborts the transfer
  }
  state->response.body.append(data, bytes);
  return bytes;
}

size_t HttpClient::write_file(char* data, size_t size, size_t count, void* user) {
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
  // Never past the size the server announced (or graft's bound for files with none): a body that goes on
  // would otherwise fill the disk.
  const int64_t file_size = (state->restarted ? 0 : state->offset) + state->received;
  if (file_size + static_cast<int64_t>(bytes) > state->limit) {
    state->overran = true;
    return 0;  // aborts the transfer
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

}  // namespace graft::hub_detail
