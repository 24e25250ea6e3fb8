// Small string and file helpers. See graft/strings.h.
#include "graft/strings.h"

#include <fnmatch.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "graft/errors.h"

namespace graft {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_dotted_prefix(const std::string& name, const std::string& prefix) {
  return !prefix.empty() && (name == prefix || name.rfind(prefix + ".", 0) == 0);
}

std::string trim(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const size_t begin = text.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

uint64_t regular_file_size(const std::string& path, const std::string& what) {
  const std::string a_what =
      (std::string("aeiou").find(what.empty() ? 'x' : what[0]) != std::string::npos ? "an " : "a ") + what;
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0)
    throw Error(
        path + ": " +
        (errno == ENOENT ? "no such " + what : "cannot read the " + what + ": " + std::strerror(errno)));
  // Only regular files: a FIFO would block forever, a device such as /dev/zero would never end.
  if (S_ISDIR(info.st_mode)) throw Error(path + ": is a folder, not " + a_what);
  if (S_ISFIFO(info.st_mode)) throw Error(path + ": is a FIFO, not " + a_what);
  if (!S_ISREG(info.st_mode)) throw Error(path + ": is a device or socket, not " + a_what);
  return static_cast<uint64_t>(info.st_size);
}

std::string read_file(const std::string& path, uint64_t max_bytes, const std::string& what) {
  const uint64_t size = regular_file_size(path, what);
  if (size > max_bytes)
    throw Error(path + ": the " + what + " has " + std::to_string(size) + " bytes; at most " +
                std::to_string(max_bytes) + " are read");
  std::ifstream in(path, std::ios::binary);
  std::string contents(static_cast<size_t>(size), '\0');
  if (!in || !in.read(contents.data(), static_cast<std::streamsize>(size)))
    throw Error(path + ": cannot read the " + what);
  return contents;
}

size_t invalid_utf8_at(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    size_t length = 0;
    uint32_t lowest = 0, code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2, lowest = 0x80, code = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, lowest = 0x800, code = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, lowest = 0x10000, code = c & 0x07u;
    } else {
      return i;
    }
    if (i + length > n) return i;
    for (size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      code = (code << 6) | (s[i + k] & 0x3Fu);
    }
    if (code < lowest || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::string::npos;
}

std::string escape_bytes(const std::string& text) {
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += ch;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02X", c);
      out += hex;
    }
  }
  return out;
}

void require_utf8(const std::string& text, const std::string& where, const std::string& what) {
  const size_t at = invalid_utf8_at(text);
  if (at == std::string::npos) return;
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[at]));
  throw Error(where + ": " + what + " '" + escape_bytes(text) + "' is not valid UTF-8 (byte " + byte +
              " at offset " + std::to_string(at) + "); rename it, or convert it to UTF-8");
}

bool glob_match(const std::string& pattern, const std::string& text) {
  return fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}

}  // namespace graft
