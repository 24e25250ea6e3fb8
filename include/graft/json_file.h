// JSON that graft did not write itself (configs, tokenizers, TF.js manifests, the Hub's listings, run
// directories): parsed with a bound on nesting and size, and quoted in messages only as a bounded excerpt.
// A value nested 100,000 levels deep is refused while it is parsed; a whole value is never dumped into an
// error (nlohmann's serializer recurses once per level).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace graft {

// Deeper than any file graft reads (tokenizer.json and Keras model configs nest about 10 levels).
constexpr int kMaxJsonDepth = 128;

// text parsed as JSON; FormatError naming `source` (and `part`, e.g. "line 3") for invalid JSON or nesting
// deeper than max_depth: "<source>: <part> is not valid JSON: ...".
nlohmann::json parse_json(const std::string& text, const std::string& source, const std::string& part = "",
                          int max_depth = kMaxJsonDepth);
// A regular file of at most max_bytes, parsed as parse_json does.
nlohmann::json read_json_file(const std::string& path, uint64_t max_bytes = uint64_t{256} << 20);
// At most max_chars of the value as JSON text ("..." where cut), without recursing into the whole value:
// what an error message may quote.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = 120);

}  // namespace graft
