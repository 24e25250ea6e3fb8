// The Hub client's names and settings (see graft/hub.h): HubOptions from the environment, repository ids,
// the file names a pull accepts, and which files it takes by default (pickles never).
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/strings.h"
#include "io/hub_cache.h"

namespace graft {
namespace fs = std::filesystem;
using hub_detail::lower;
using hub_detail::read_small_file;
using hub_detail::shorten;

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

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

}  // namespace graft
