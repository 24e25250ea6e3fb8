// Unwrapping TF.js models bundled as JavaScript (see js_bundle.h). The literal grammar is the subset a
// minifier emits for JSON data (ECMAScript 2015 12.2.4-6: object and array literals, string and numeric
// literals, and the minified booleans !0 / !1); anything else is refused rather than guessed.
#include "io/js_bundle.h"

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "graft/errors.h"
#include "graft/strings.h"

namespace graft::js {
namespace {

using nlohmann::json;

constexpr int kMaxDepth = 256;
constexpr uintmax_t kMaxBundleBytes = uintmax_t{1} << 30;  // one shard; nsfwjs' are 5.6 MB

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_identifier_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$';
}

class LiteralParser {
 public:
  LiteralParser(const std::string& text, size_t pos, const std::string& file)
      : text_(text), pos_(pos), file_(file) {}

  json value(int depth) {
    if (depth > kMaxDepth) fail("literal nested deeper than " + std::to_string(kMaxDepth));
    skip_space();
    if (pos_ >= text_.size()) fail("the literal ends early");
    const char c = text_[pos_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"' || c == '\'') return string();
    if (c == '!' && pos_ + 1 < text_.size() && (text_[pos_ + 1] == '0' || text_[pos_ + 1] == '1')) {
      pos_ += 2;
      return text_[pos_ - 1] == '0';  // !0 is true, !1 is false
    }
    if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9')) return number();
    const size_t begin = pos_;
    const std::string word = identifier();
    if (word == "true") return true;
    if (word == "false") return false;
    if (word == "null" || word == "undefined") return nullptr;
    pos_ = begin;  // report where the offending token starts
    fail(word.empty() ? std::string("unexpected character '") + c + "'"
                      : "'" + word + "' is not a literal (graft never evaluates JavaScript)");
  }

  size_t pos() const { return pos_; }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(file_, "at byte " + std::to_string(pos_) + ": " + what,
                      "expected a TF.js model bundled as a JavaScript literal");
  }

  void skip_space() {
    while (pos_ < text_.size() && is_space(text_[pos_])) ++pos_;
  }

  void expect(char c) {
    skip_space();
    if (pos_ >= text_.size() || text_[pos_] != c) {
      fail(std::string("expected '") + c + "', found " +
           (pos_ < text_.size() ? "'" + std::string(1, text_[pos_]) + "'" : "the end of the file"));
    }
    ++pos_;
  }

  std::string identifier() {
    const size_t begin = pos_;
    while (pos_ < text_.size() && is_identifier_char(text_[pos_])) ++pos_;
    return text_.substr(begin, pos_ - begin);
  }

  json object(int depth) {
    expect('{');
    json out = json::object();
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '}') return ++pos_, out;
    while (true) {
      skip_space();
      if (pos_ >= text_.size()) fail("an object literal is not closed");
      std::string key;
      const char c = text_[pos_];
      if (c == '"' || c == '\'') {
        key = string().get<std::string>();
      } else if (c >= '0' && c <= '9') {
        key = identifier();  // numeric keys: digits only in data
      } else {
        key = identifier();
        if (key.empty()) fail(std::string("expected a property name, found '") + c + "'");
      }
      expect(':');
      out[key] = value(depth + 1);
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == '}') return ++pos_, out;  // trailing comma
        continue;
      }
      expect('}');
      return out;
    }
  }

  json array(int depth) {
    expect('[');
    json out = json::array();
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ']') return ++pos_, out;
    while (true) {
      out.push_back(value(depth + 1));
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ']') return ++pos_, out;
        continue;
      }
      expect(']');
      return out;
    }
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  uint32_t hex(size_t digits) {
    if (pos_ + digits > text_.size()) fail("a \\x or \\u escape ends early");
    uint32_t value = 0;
    for (size_t i = 0; i < digits; ++i) {
      const char c = text_[pos_++];
      value <<= 4;
      if (c >= '0' && c <= '9')
        value |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        value |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        value |= static_cast<uint32_t>(c - 'A' + 10);
      else
        fail(std::string("'") + c + "' in a hexadecimal escape");
    }
    return value;
  }

  json string() {
    const char quote = text_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("a string literal is not closed");
      const char c = text_[pos_++];
      if (c == quote) return out;
      if (c == '\n') fail("a line break inside a string literal");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("a string literal ends in a backslash");
      const char e = text_[pos_++];
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '0':
          out += '\0';
          break;
        case 'x':
          append_utf8(out, hex(2));
          break;
        case 'u': {
          uint32_t code = hex(4);
          // A surrogate pair written as two escapes is one code point.
          if (code >= 0xD800 && code < 0xDC00 && pos_ + 1 < text_.size() && text_[pos_] == '\\' &&
              text_[pos_ + 1] == 'u') {
            pos_ += 2;
            const uint32_t low = hex(4);
            if (low < 0xDC00 || low > 0xDFFF) fail("an unpaired UTF-16 surrogate in a \\u escape");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xD800 && code < 0xE000) {
            fail("an unpaired UTF-16 surrogate in a \\u escape");
          }
          append_utf8(out, code);
          break;
        }
        default:
          out += e;  // \" \' \\ \/ and JavaScript's identity escapes
      }
    }
  }

  json number() {
    const size_t begin = pos_;
    if (text_[pos_] == '-' || text_[pos_] == '+') ++pos_;
    bool digits = false, fraction = false;
    while (pos_ < text_.size() && ((text_[pos_] >= '0' && text_[pos_] <= '9') || text_[pos_] == '.')) {
      if (text_[pos_] == '.') {
        if (fraction) fail("a number with two decimal points");
        fraction = true;
      } else {
        digits = true;
      }
      ++pos_;
    }
    if (!digits) fail("a number without digits");
    bool exponent = false;
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      exponent = true;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '-' || text_[pos_] == '+')) ++pos_;
      const size_t exponent_begin = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      if (pos_ == exponent_begin) fail("a number with an empty exponent");
    }
    if (pos_ < text_.size() && is_identifier_char(text_[pos_])) fail("a number runs into a name");
    const std::string token = text_.substr(begin, pos_ - begin);
    if (!fraction && !exponent) {
      errno = 0;
      char* end = nullptr;
      const long long integer = std::strtoll(token.c_str(), &end, 10);
      if (errno == 0 && end && *end == '\0') return static_cast<int64_t>(integer);
    }
    errno = 0;
    const double real = std::strtod(token.c_str(), nullptr);
    if (errno == ERANGE && (real > 1.0 || real < -1.0)) fail("number " + token + " is out of range");
    return real;
  }

  const std::string& text_;
  size_t pos_;
  const std::string& file_;
};

std::string read_file(const std::string& path) {
  const uint64_t size = regular_file_size(path, "TF.js file");  // a folder is said as one
  if (size > kMaxBundleBytes) {
    throw FormatError(path, "is " + std::to_string(size) + " bytes; a bundled TF.js file is at most 1 GiB");
  }
  std::ifstream in(path, std::ios::binary);
  std::string text(static_cast<size_t>(size), '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) throw FormatError(path, "cannot be read");
  return text;
}

// Offset of the payload: just after `1:[function(a,b,c){b.exports=`.
size_t payload_offset(const std::string& text, const std::string& file) {
  const std::string hint = "not a browserify bundle of a TF.js file (as npm nsfwjs ships them)";
  const std::string marker = "1:[function(";
  size_t at = text.find(marker);
  if (at == std::string::npos) throw FormatError(file, "no module 1 ('" + marker + "')", hint);
  at = text.find("){", at + marker.size());
  if (at == std::string::npos) throw FormatError(file, "module 1 has no body", hint);
  at += 2;
  while (at < text.size() && is_identifier_char(text[at])) ++at;
  const std::string exports = ".exports=";
  if (text.compare(at, exports.size(), exports) != 0) {
    throw FormatError(file, "module 1 does not start with `module.exports=`", hint);
  }
  return at + exports.size();
}

// After the payload only the module's closing brace may follow (so the payload was the whole module).
void expect_module_end(const std::string& text, size_t pos, const std::string& file) {
  while (pos < text.size() && (is_space(text[pos]) || text[pos] == ';')) ++pos;
  if (pos >= text.size() || text[pos] != '}') {
    throw FormatError(file, "at byte " + std::to_string(pos) + ": module 1 goes on after its exported value",
                      "expected the bundle of a single literal");
  }
}

}  // namespace

nlohmann::json parse_literal(const std::string& text, size_t& pos, const std::string& file) {
  LiteralParser parser(text, pos, file);
  json value = parser.value(0);
  pos = parser.pos();
  return value;
}

std::vector<uint8_t> base64_decode(const std::string& text, size_t begin, size_t end,
                                   const std::string& file) {
  auto sextet = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  size_t data_end = end;
  while (data_end > begin && text[data_end - 1] == '=') --data_end;
  if (end - data_end > 2) throw FormatError(file, "base64 text ends in more than two '='");
  if ((data_end - begin) % 4 == 1) {
    throw FormatError(file, "base64 text of " + std::to_string(data_end - begin) +
                                " characters: a length of 4k+1 cannot be decoded");
  }
  std::vector<uint8_t> out;
  out.reserve((data_end - begin) / 4 * 3 + 2);
  uint32_t buffer = 0;
  int bits = 0;
  for (size_t i = begin; i < data_end; ++i) {
    const int value = sextet(text[i]);
    if (value < 0) {
      throw FormatError(file, "at byte " + std::to_string(i) + ": '" + std::string(1, text[i]) +
                                  "' is not a base64 character");
    }
    buffer = (buffer << 6) | static_cast<uint32_t>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((buffer >> bits) & 0xFF));
    }
  }
  return out;
}

nlohmann::json read_bundled_json(const std::string& path) {
  const std::string text = read_file(path);
  size_t pos = payload_offset(text, path);
  json value = parse_literal(text, pos, path);
  expect_module_end(text, pos, path);
  if (!value.is_object()) throw FormatError(path, "the bundled value is not an object literal");
  return value;
}

std::vector<uint8_t> read_bundled_bytes(const std::string& path) {
  const std::string text = read_file(path);
  size_t pos = payload_offset(text, path);
  if (pos >= text.size() || (text[pos] != '"' && text[pos] != '\'')) {
    throw FormatError(path, "the bundled value is not a string literal", "expected a base64-encoded shard");
  }
  const char quote = text[pos];
  const size_t begin = pos + 1;
  const size_t end = text.find(quote, begin);
  if (end == std::string::npos) throw FormatError(path, "the base64 string literal is not closed");
  expect_module_end(text, end + 1, path);
  return base64_decode(text, begin, end, path);
}

}  // namespace graft::js
