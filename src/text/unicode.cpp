// UTF-8 validation (RFC 3629, Table 3-7 of the Unicode Standard: well-formed byte sequences) and the
// Unicode properties of the tokenizers, from ICU (libicu, Debian's libicu-dev). See unicode.h.
#include "text/unicode.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <cstring>

#include "graft/errors.h"
#include "graft/tokenizer.h"

namespace graft::text {
namespace {

std::string hex_byte(unsigned char b) {
  static const char* kDigits = "0123456789ABCDEF";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

const icu::Normalizer2& nfd_normalizer() {
  static const icu::Normalizer2* normalizer = [] {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFDInstance(status);
    if (U_FAILURE(status) || n == nullptr) {
      throw Error(std::string("ICU could not provide the NFD normalizer: ") + u_errorName(status));
    }
    return n;
  }();
  return *normalizer;
}

}  // namespace

void validate_utf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t pos = 0;
  while (pos < size) {
    // Eight ASCII bytes at a time: the common case.
    if (pos + 8 <= size) {
      uint64_t chunk;
      std::memcpy(&chunk, bytes + pos, 8);
      if ((chunk & 0x8080808080808080ull) == 0) {
        pos += 8;
        continue;
      }
    }
    const unsigned char lead = bytes[pos];
    if (lead < 0x80) {
      ++pos;
      continue;
    }
    size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;  // the range allowed for the second byte
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) low = 0xA0;   // below: overlong
      if (lead == 0xED) high = 0x9F;  // above: UTF-16 surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) low = 0x90;   // below: overlong
      if (lead == 0xF4) high = 0x8F;  // above: beyond U+10FFFF
    } else if (lead >= 0x80 && lead <= 0xBF) {
      throw InvalidUtf8(pos, "continuation byte " + hex_byte(lead) + " without a lead byte");
    } else {
      throw InvalidUtf8(pos, "byte " + hex_byte(lead) + " never appears in UTF-8");
    }
    if (pos + length > size) {
      throw InvalidUtf8(pos, "the " + std::to_string(length) + "-byte sequence starting with " +
                                 hex_byte(lead) + " is cut short by the end of the text");
    }
    const unsigned char second = bytes[pos + 1];
    if (second < low || second > high) {
      const std::string why = (second < 0x80 || second > 0xBF) ? "is not a continuation byte"
                              : lead == 0xED                   ? "would encode a UTF-16 surrogate"
                              : lead == 0xF4                   ? "would encode a code point above U+10FFFF"
                                                               : "would make an overlong encoding";
      throw InvalidUtf8(pos, hex_byte(lead) + " followed by " + hex_byte(second) + ": " + why);
    }
    for (size_t i = 2; i < length; ++i) {
      const unsigned char next = bytes[pos + i];
      if (next < 0x80 || next > 0xBF) {
        throw InvalidUtf8(pos + i, "byte " + hex_byte(next) + " inside the " + std::to_string(length) +
                                       "-byte sequence starting with " + hex_byte(lead) +
                                       " is not a continuation byte");
      }
    }
    pos += length;
  }
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_L_MASK) != 0;
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_N_MASK) != 0;
}

bool is_punctuation(char32_t cp) {
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_P_MASK) != 0;
}

bool is_other(char32_t cp) {
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_C_MASK) != 0;
}

bool is_nonspacing_mark(char32_t cp) {
  return cp >= 0x80 && u_charType(static_cast<UChar32>(cp)) == U_NON_SPACING_MARK;
}

bool is_white_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_isUWhiteSpace(static_cast<UChar32>(cp));
}

uint8_t combining_class(char32_t cp) {
  return cp < 0x300 ? 0 : u_getCombiningClass(static_cast<UChar32>(cp));
}

void append_nfd(char32_t cp, std::u32string& out) {
  if (cp < 0xC0) {  // nothing below U+00C0 decomposes canonically
    out.push_back(cp);
    return;
  }
  icu::UnicodeString decomposition;
  if (!nfd_normalizer().getDecomposition(static_cast<UChar32>(cp), decomposition)) {
    out.push_back(cp);
    return;
  }
  for (int32_t i = 0; i < decomposition.length();) {
    const UChar32 c = decomposition.char32At(i);
    out.push_back(static_cast<char32_t>(c));
    i += U16_LENGTH(c);
  }
}

void append_lowercase(char32_t cp, std::u32string& out) {
  if (cp < 0x80) {
    out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (!u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_CHANGES_WHEN_LOWERCASED)) {
    out.push_back(cp);
    return;
  }
  // A lone code point through the full (SpecialCasing) mapping of the root locale: no context, so Σ
  // becomes σ, as Rust's char::to_lowercase does.
  UChar source[2];
  int32_t source_length = 0;
  UBool error = false;
  U16_APPEND(source, source_length, 2, static_cast<UChar32>(cp), error);
  UChar lowered[8];
  UErrorCode status = U_ZERO_ERROR;
  const int32_t length = u_strToLower(lowered, 8, source, source_length, "", &status);
  if (U_FAILURE(status) || error) {
    out.push_back(cp);
    return;
  }
  for (int32_t i = 0; i < length;) {
    UChar32 c;
    U16_NEXT(lowered, i, length, c);
    out.push_back(static_cast<char32_t>(c));
  }
}

}  // namespace graft::text
