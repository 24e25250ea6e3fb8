// TF.js models shipped inside JavaScript files, as the npm package nsfwjs does: each model.json and each
// weight shard is a browserify "standalone" bundle (a UMD wrapper around one module, id 1, whose only
// statement is `module.exports = <payload>`):
//   model.min.js            payload = the model.json content as a JavaScript object literal (unquoted keys,
//                           !0 / !1 for true / false, numbers such as .999 or 1e-3)
//   group1-shard1of1.min.js payload = one string literal, the base64 encoding of the binary shard
// graft unwraps both without running any JavaScript: the payload is located after the module table's
// `1:[function(` and parsed as a JSON-like literal by a small bounded parser (never evaluated).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace graft::js {

// Parses one JavaScript literal value (object, array, string, number, true/false/!0/!1, null, undefined
// -> null) starting at text[pos], skipping leading white space; pos ends just after it. Object keys may be
// identifiers, strings or numbers. Throws FormatError naming `file` and the byte offset on anything else
// (identifiers, expressions, nesting deeper than 256).
nlohmann::json parse_literal(const std::string& text, size_t& pos, const std::string& file);

// Standard base64 (RFC 4648, '=' padding optional, no white space). Throws FormatError naming `file`.
std::vector<uint8_t> base64_decode(const std::string& text, size_t begin, size_t end,
                                   const std::string& file);

// The bundle's payload as JSON: the object literal of a model.min.js. Throws FormatError naming the
// file when it is not such a bundle.
nlohmann::json read_bundled_json(const std::string& path);
// The bundle's payload as bytes: the base64 string of a shard .min.js, decoded.
std::vector<uint8_t> read_bundled_bytes(const std::string& path);

}  // namespace graft::js
