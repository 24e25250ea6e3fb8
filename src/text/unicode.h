// UTF-8 decoding with validation and the Unicode properties the tokenizers need (general categories,
// White_Space, canonical decomposition, full lower-case mapping), answered by ICU for non-ASCII code
// points and by small inline checks for ASCII, which is most text.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace graft::text {

// Throws graft::InvalidUtf8 (with the byte offset) unless `text` is well-formed UTF-8 (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF).
void validate_utf8(std::string_view text);

// Decodes the code point at text[pos] and advances pos past it. `text` must have been validated.
inline char32_t next_code_point(std::string_view text, size_t& pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    pos += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    const char32_t cp = (char32_t(b0 & 0x1F) << 6) | (byte(pos + 1) & 0x3F);
    pos += 2;
    return cp;
  }
  if (b0 < 0xF0) {
    const char32_t cp =
        (char32_t(b0 & 0x0F) << 12) | (char32_t(byte(pos + 1) & 0x3F) << 6) | (byte(pos + 2) & 0x3F);
    pos += 3;
    return cp;
  }
  const char32_t cp = (char32_t(b0 & 0x07) << 18) | (char32_t(byte(pos + 1) & 0x3F) << 12) |
                      (char32_t(byte(pos + 2) & 0x3F) << 6) | (byte(pos + 3) & 0x3F);
  pos += 4;
  return cp;
}

void append_utf8(std::string& out, char32_t cp);

// General category groups (Unicode's L*, N*, P*, C*, Mn) and the White_Space property.
bool is_letter(char32_t cp);
bool is_number(char32_t cp);
bool is_punctuation(char32_t cp);  // P*
bool is_other(char32_t cp);        // C*: Cc Cf Cs Co Cn
bool is_nonspacing_mark(char32_t cp);
bool is_white_space(char32_t cp);

// Canonical combining class (0 for starters).
uint8_t combining_class(char32_t cp);

// Appends the full canonical decomposition (NFD) of one code point, Hangul syllables included; the code
// point itself when it has none. Canonical reordering across code points is the caller's job.
void append_nfd(char32_t cp, std::u32string& out);

// Appends the full lower-case mapping of one code point, context-free (U+0130 -> "i\u0307"; Σ -> σ
// always), as Rust's char::to_lowercase, which Hugging Face tokenizers uses.
void append_lowercase(char32_t cp, std::u32string& out);

}  // namespace graft::text
