// A stand-in for the Hugging Face Hub on 127.0.0.1 (plain HTTP, POSIX sockets, one thread) for the tests
// of graft's downloader: no test touches the internet. It serves what huggingface_hub's client reads:
//   GET  /api/models/ORG/NAME/revision/REV[?blobs=true]  {"sha", "siblings": [{"rfilename", "size", "lfs"}]}
//   HEAD|GET /ORG/NAME/resolve/REV/FILE   files kept in git: 200, ETag "<git sha1>", X-Repo-Commit;
//                                         LFS files: 302 to /cdn/<sha256> (absolute URL), X-Linked-Etag,
//                                         X-Linked-Size, X-Repo-Commit
//   GET  /cdn/<sha256>                    the LFS content, with Range support (206, Content-Range)
// and it misbehaves on request: drops a connection mid-file, sends a wrong checksum, lists a file name
// that escapes the cache, demands a token. Every request is recorded for the tests to inspect.
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "graft/sha256.h"

namespace graft::testing {

struct FakeFile {
  std::string content;
  bool lfs = false;               // served through the CDN redirect, ETag = SHA-256 of the content
  std::string sha256_override;    // LFS: announce this SHA-256 instead of the content's (a corrupt file)
  std::string git_etag_override;  // kept in git: announce this blob id instead of the content's
  int drops = 0;                  // the next `drops` content GETs send `drop_after` bytes and hang up
  size_t drop_after = 0;
  // A body that runs on: HEAD and the listing announce this size (>= 0), and GET sends the whole content
  // with no Content-Length, ended only by closing the connection.
  int64_t announced_size = -1;
  bool no_size = false;  // neither HEAD nor the listing gives a size; GET has no Content-Length
};

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The whole file, bytes as they are ("" when it cannot be opened).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline FakeFile git_file(const std::string& content) {
  FakeFile file;
  file.content = content;
  return file;
}
inline FakeFile lfs_file(const std::string& content) {
  FakeFile file;
  file.content = content;
  file.lfs = true;
  return file;
}

struct FakeRepo {
  std::string commit;  // 40 hex digits
  std::vector<std::string> branches = {"main"};
  std::map<std::string, FakeFile> files;  // rfilename -> file
  std::vector<std::string> listed_only;   // names in the listing the repository cannot serve
  std::string listing_override;           // when set, the revision listing's body as it is (hostile mirrors)
};

struct FakeRequest {
  std::string method, path;
  std::map<std::string, std::string> headers;  // lower-case names
  int status = 0;                              // what the fake answered
};

class FakeHub {
 public:
  FakeHub() {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (listener_ < 0) throw std::runtime_error("FakeHub: socket() failed");
    const int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;  // any free port
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(listener_, 16) != 0)
      throw std::runtime_error("FakeHub: cannot listen on 127.0.0.1");
    socklen_t length = sizeof address;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeHub() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  FakeHub(const FakeHub&) = delete;
  FakeHub& operator=(const FakeHub&) = delete;

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Repositories and behaviour; change them between pulls (under the lock).
  void set_repo(const std::string& id, const FakeRepo& repo) {
    std::lock_guard<std::mutex> lock(mutex_);
    repos_[id] = repo;
  }
  template <typename F>
  void edit_repo(const std::string& id, F edit) {
    std::lock_guard<std::mutex> lock(mutex_);
    edit(repos_.at(id));
  }
  void require_token(const std::string& token) {
    std::lock_guard<std::mutex> lock(mutex_);
    token_ = token;
  }
  std::vector<FakeRequest> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }
  void clear_requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    requests_.clear();
  }

  // Git's object id of a file kept in git, as the Hub sends it: SHA-1 of "blob <size>\0<content>"
  // (git_etag_override announces another, a corrupt file).
  static std::string git_etag(const FakeFile& file) {
    return file.git_etag_override.empty() ? graft::git_blob_sha1(file.content) : file.git_etag_override;
  }

 private:
  static std::string url_decode(const std::string& text) {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '%' && i + 2 < text.size()) {
        out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        out += text[i];
      }
    }
    return out;
  }

  static void send_all(int fd, const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  struct Response {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    size_t content_length = std::string::npos;  // default: body.size()
    bool no_length = false;                     // no Content-Length: the body ends when the connection does
    size_t send_only = std::string::npos;       // hang up after this many body bytes
  };

  static std::string reason(int status) {
    switch (status) {
      case 200:
        return "OK";
      case 206:
        return "Partial Content";
      case 302:
        return "Found";
      case 401:
        return "Unauthorized";
      case 404:
        return "Not Found";
      case 416:
        return "Range Not Satisfiable";
      default:
        return "Status";
    }
  }

  void serve() {
    while (!stop_) {
      pollfd waiting{listener_, POLLIN, 0};
      if (::poll(&waiting, 1, 50) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      handle(client);
      ::close(client);
    }
  }

  void handle(int client) {
    std::string request;
    char buffer[4096];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 65536) {
      pollfd readable{client, POLLIN, 0};
      if (::poll(&readable, 1, 5000) <= 0) return;
      const ssize_t n = ::recv(client, buffer, sizeof buffer, 0);
      if (n <= 0) return;
      request.append(buffer, static_cast<size_t>(n));
    }
    FakeRequest seen;
    const size_t line_end = request.find("\r\n");
    const std::string first = request.substr(0, line_end);
    const size_t space1 = first.find(' '), space2 = first.rfind(' ');
    seen.method = first.substr(0, space1);
    seen.path = first.substr(space1 + 1, space2 - space1 - 1);
    size_t position = line_end + 2;
    while (true) {
      const size_t end = request.find("\r\n", position);
      if (end == std::string::npos || end == position) break;
      const std::string line = request.substr(position, end - position);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        seen.headers[name] = value;
      }
      position = end + 2;
    }
    Response response;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      response = route(seen);
      seen.status = response.status;
      requests_.push_back(seen);
    }
    const size_t length =
        response.content_length != std::string::npos ? response.content_length : response.body.size();
    std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " + reason(response.status) + "\r\n";
    for (const auto& [name, value] : response.headers) head += name + ": " + value + "\r\n";
    if (!response.no_length) head += "Content-Length: " + std::to_string(length) + "\r\n";
    head += "Connection: close\r\n\r\n";
    send_all(client, head);
    if (seen.method == "HEAD") return;
    send_all(client, response.send_only == std::string::npos ? response.body
                                                             : response.body.substr(0, response.send_only));
  }

  // The Hub's 404 message when `repo` (from repos_.find) is absent or lacks `revision` (its commit or
  // one of its branches); nullptr when both are there.
  const char* find_revision(std::map<std::string, FakeRepo>::const_iterator repo,
                            const std::string& revision) const {
    if (repo == repos_.end()) return "Repository not found";
    const auto& branches = repo->second.branches;
    if (revision != repo->second.commit &&
        std::find(branches.begin(), branches.end(), revision) == branches.end())
      return "Revision not found";
    return nullptr;
  }

  // Called with the lock held.
  Response route(const FakeRequest& request) {
    Response response;
    const std::string path = request.path;
    auto not_found = [&](const std::string& what) {
      response.status = 404;
      response.body = "{\"error\":\"" + what + "\"}";
      return response;
    };
    if (!token_.empty() && path.rfind("/cdn/", 0) != 0) {
      const auto found = request.headers.find("authorization");
      if (found == request.headers.end() || found->second != "Bearer " + token_) {
        response.status = 401;
        response.body = "{\"error\":\"Invalid credentials\"}";
        return response;
      }
    }
    if (path.rfind("/api/models/", 0) == 0) {  // /api/models/ORG/NAME/revision/REV?blobs=true
      const std::string rest = path.substr(12, path.find('?') - 12);
      const size_t marker = rest.find("/revision/");
      if (marker == std::string::npos) return not_found("no revision");
      const std::string id = rest.substr(0, marker), revision = url_decode(rest.substr(marker + 10));
      const auto repo = repos_.find(id);
      if (const char* missing = find_revision(repo, revision)) return not_found(missing);
      nlohmann::json siblings = nlohmann::json::array();
      for (const auto& [name, file] : repo->second.files) {
        nlohmann::json entry = {{"rfilename", name}};
        if (!file.no_size)
          entry["size"] =
              file.announced_size >= 0 ? static_cast<size_t>(file.announced_size) : file.content.size();
        if (file.lfs) entry["lfs"] = {{"sha256", lfs_sha256(file)}, {"size", file.content.size()}};
        siblings.push_back(entry);
      }
      for (const auto& name : repo->second.listed_only) siblings.push_back({{"rfilename", name}});
      if (!repo->second.listing_override.empty()) {
        response.body = repo->second.listing_override;
        return response;
      }
      response.body = nlohmann::json{{"id", id}, {"sha", repo->second.commit}, {"siblings", siblings}}.dump();
      response.headers.push_back({"Content-Type", "application/json"});
      return response;
    }
    if (path.rfind("/cdn/", 0) == 0) {  // LFS content by SHA-256
      const std::string sha = path.substr(5);
      for (auto& [id, repo] : repos_) {
        for (auto& [name, file] : repo.files) {
          if (file.lfs && lfs_sha256(file) == sha) return content(request, file);
        }
      }
      return not_found("no such object");
    }
    // /ORG/NAME/resolve/REV/FILE
    const size_t marker = path.find("/resolve/");
    if (marker == std::string::npos) return not_found("unknown route");
    const std::string id = path.substr(1, marker - 1);
    const std::string rest = path.substr(marker + 9);
    const size_t slash = rest.find('/');
    const std::string revision = url_decode(rest.substr(0, slash)), name = url_decode(rest.substr(slash + 1));
    const auto repo = repos_.find(id);
    if (const char* missing = find_revision(repo, revision)) return not_found(missing);
    const auto file = repo->second.files.find(name);
    if (file == repo->second.files.end()) return not_found("Entry not found");
    response.headers.push_back({"X-Repo-Commit", repo->second.commit});
    if (file->second.lfs) {
      response.status = 302;
      response.headers.push_back({"Location", endpoint() + "/cdn/" + lfs_sha256(file->second)});
      response.headers.push_back({"X-Linked-Etag", "\"" + lfs_sha256(file->second) + "\""});
      response.headers.push_back({"X-Linked-Size", std::to_string(file->second.content.size())});
      response.headers.push_back({"ETag", "\"" + git_etag(file->second) + "\""});
      return response;
    }
    Response body = content(request, file->second);
    body.headers.push_back({"X-Repo-Commit", repo->second.commit});
    body.headers.push_back({"ETag", "\"" + git_etag(file->second) + "\""});
    return body;
  }

  static std::string lfs_sha256(const FakeFile& file) {
    return file.sha256_override.empty() ? graft::sha256_hex(file.content) : file.sha256_override;
  }

  // The bytes of a file, honouring "Range: bytes=N-" and the planned hang-ups.
  static Response content(const FakeRequest& request, FakeFile& file) {
    Response response;
    size_t from = 0;
    const auto range = request.headers.find("range");
    if (range != request.headers.end() && range->second.rfind("bytes=", 0) == 0) {
      from = std::stoull(range->second.substr(6));
      if (from >= file.content.size()) {
        response.status = 416;
        response.headers.push_back({"Content-Range", "bytes */" + std::to_string(file.content.size())});
        return response;
      }
      response.status = 206;
      response.headers.push_back({"Content-Range", "bytes " + std::to_string(from) + "-" +
                                                       std::to_string(file.content.size() - 1) + "/" +
                                                       std::to_string(file.content.size())});
    }
    response.body = file.content.substr(from);
    if (file.no_size) response.no_length = true;
    if (file.announced_size >= 0) {
      if (request.method == "HEAD") response.content_length = static_cast<size_t>(file.announced_size);
      if (request.method == "GET") response.no_length = true;
    }
    if (request.method == "GET" && file.drops > 0) {
      --file.drops;
      response.send_only = std::min(file.drop_after, response.body.size());
    }
    return response;
  }

  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mutex_;
  std::map<std::string, FakeRepo> repos_;
  std::string token_;
  std::vector<FakeRequest> requests_;
};

}  // namespace graft::testing
