// Small string, file and random helpers shared by every folder (core: nothing here knows a model or a task).
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace graft {

bool ends_with(const std::string& text, const std::string& suffix);
// name is prefix itself or lies below it as a dotted module path ("fc" covers "fc.1.weight", not "fc2").
bool is_dotted_prefix(const std::string& name, const std::string& prefix);
// Without leading and trailing spaces, tabs, carriage returns, newlines, form feeds and vertical tabs.
std::string trim(const std::string& text);

// The size of a regular file; graft::Error names the path and what it is instead ("is a folder", "is a FIFO,
// not a file", "is a device or socket", "no such file"). Check before opening: opening a FIFO blocks.
uint64_t regular_file_size(const std::string& path, const std::string& what = "file");
// The whole of a regular file, at most max_bytes; graft::Error names the path and what it is instead
// ("is a folder", "is a FIFO, not a file", "no such file") or how large it is. `what` names the file's role
// in messages ("text file").
std::string read_file(const std::string& path, uint64_t max_bytes = uint64_t{1} << 31,
                      const std::string& what = "file");

// Shell-style glob match (* ? [abc]) of a whole name, as fnmatch without flags.
bool glob_match(const std::string& pattern, const std::string& text);

// Byte offset of the first byte that does not begin or continue a well-formed UTF-8 character (overlong
// forms, surrogates and code points above U+10FFFF included); std::string::npos for valid UTF-8.
size_t invalid_utf8_at(const std::string& text);
// text with every byte outside printable ASCII as \xHH: safe to print whatever the text holds.
std::string escape_bytes(const std::string& text);
// Throws graft::Error "<where>: <what> '<escaped>' is not valid UTF-8 (byte 0xHH at offset N)" unless text
// is valid UTF-8: names that end up in JSON (class names, labels) are checked when they are first read, so
// that a run never fails at its end writing graft.json.
void require_utf8(const std::string& text, const std::string& where, const std::string& what);

// Fisher-Yates with graft's own index draw: a seed gives the same order on every standard library
// (std::shuffle's order is implementation-defined). Every seeded split and shuffle of data uses it.
template <typename T>
void portable_shuffle(std::vector<T>& values, std::mt19937_64& rng) {
  for (size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[rng() % i]);
}

}  // namespace graft
