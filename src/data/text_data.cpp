// Labelled text files (CSV, TSV, JSON Lines) and language-modelling text. See graft/text_data.h.
#include "graft/text_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/strings.h"
#include "graft/tokenizer.h"
#include "text/unicode.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A text file larger than this is refused before it is read: text data sets are megabytes, not gigabytes.
constexpr uintmax_t kMaxTextFileBytes = uintmax_t{2} << 30;

std::vector<std::string> split_paths(const std::string& paths) {
  std::vector<std::string> out;
  std::stringstream stream(paths);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  if (out.empty()) throw Error("no data file given");
  return out;
}

// A regular file only (a FIFO would block, /dev/zero never end), at most 2 GiB.
std::string read_whole_file(const std::string& path) {
  return read_file(path, kMaxTextFileBytes, "text data file");
}

std::string resolve_format(const std::string& path, const std::string& format) {
  if (format != "auto") {
    if (format != "csv" && format != "tsv" && format != "jsonl" && format != "txt")
      throw Error("data format '" + format + "': expected auto, csv, tsv, jsonl or txt");
    return format;
  }
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".csv") return "csv";
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return "jsonl";
  if (ext == ".tsv" || ext == ".txt" || ext == ".tab") return "txt";
  throw Error(path + ": cannot tell the format from the extension '" + ext +
              "'; name it with --format csv, tsv or jsonl");
}

void check_utf8(const std::string& text, const std::string& where) {
  try {
    text::validate_utf8(text);
  } catch (const InvalidUtf8& e) {
    throw Error(where + ": " + e.what());
  }
}

// A label names a class: not empty, and no control character (a NUL byte in a label made a class of its
// own that no report can show).
void check_label(const std::string& label, const std::string& path, size_t line) {
  if (label.empty()) throw FormatError(path, "line " + std::to_string(line) + ": the label is empty");
  for (unsigned char c : label)
    if (c < 0x20 || c == 0x7f)
      throw FormatError(path, "line " + std::to_string(line) +
                                  ": the label holds a control character (byte " + std::to_string(c) +
                                  "); labels are class names");
}

// Rows of a CSV (RFC 4180) or TSV file with the line each starts on.
struct Row {
  std::vector<std::string> fields;
  size_t line = 0;
  size_t lines = 1;  // a quoted field with line breaks makes a record span several lines
};

std::vector<Row> parse_delimited(const std::string& contents, char delimiter, bool quoting,
                                 const std::string& path) {
  std::vector<Row> rows;
  Row row;
  std::string field;
  size_t line = 1;
  row.line = 1;
  bool in_quotes = false, field_started = false;
  auto end_field = [&] {
    row.fields.push_back(field);
    field.clear();
    field_started = false;
  };
  // `line` is past the row's newline when one ends it, on its last line at the end of the file.
  auto end_row = [&](bool at_newline) {
    end_field();
    const bool blank = row.fields.size() == 1 && trim(row.fields[0]).empty();
    row.lines = line - row.line + (at_newline ? 0 : 1);
    if (!blank) rows.push_back(std::move(row));
    row = Row{};
    row.line = line;
  };
  for (size_t i = 0; i < contents.size(); ++i) {
    const char c = contents[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < contents.size() && contents[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (quoting && c == '"' && !field_started) {
      in_quotes = field_started = true;
    } else if (c == delimiter) {
      end_field();
    } else if (c == '\n') {
      ++line;
      end_row(true);
    } else if (c == '\r' && i + 1 < contents.size() && contents[i + 1] == '\n') {
      // CRLF: the \n ends the row.
    } else {
      field += c;
      field_started = true;
    }
  }
  if (in_quotes)
    throw FormatError(path, "line " + std::to_string(row.line) + ": a quoted field is never closed");
  if (!field.empty() || !row.fields.empty()) end_row(false);
  return rows;
}

size_t column_index(const std::vector<std::string>& header, const std::string& name, bool has_header,
                    const std::string& path, const char* flag) {
  if (has_header) {
    for (size_t i = 0; i < header.size(); ++i) {
      if (trim(header[i]) == name) return i;
    }
    std::string found;
    for (const auto& h : header) found += (found.empty() ? "" : ", ") + trim(h);
    throw FormatError(
        path, std::string("no column named '") + name + "' (" + flag + ")",
        "the header has: " + found + "; a file without a header takes --no-header and column numbers");
  }
  const bool numeric =
      !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isdigit(c); });
  if (!numeric || name.size() > 6) {
    throw Error(path + ": without a header, columns are named by their 0-based number; " + flag + " is '" +
                name + "'");
  }
  return static_cast<size_t>(std::stoul(name));
}

void read_delimited(const std::string& path, const std::string& format, const TextColumns& columns,
                    std::vector<TextExample>& out) {
  const std::string contents = read_whole_file(path);
  const std::vector<Row> rows =
      parse_delimited(contents, format == "csv" ? ',' : '\t', format == "csv", path);
  if (rows.empty()) throw FormatError(path, "the file holds no rows");
  const std::vector<std::string> header = columns.header ? rows[0].fields : std::vector<std::string>{};
  for (size_t i = 0; i < header.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (trim(header[i]) == trim(header[j]))
        throw FormatError(path, "the header names '" + trim(header[i]) + "' twice (columns " +
                                    std::to_string(j) + " and " + std::to_string(i) +
                                    "); a column must be named once");
  const size_t text = column_index(header, columns.text, columns.header, path, "--text-column");
  const size_t label = column_index(header, columns.label, columns.header, path, "--label-column");
  if (text == label)
    throw Error(path + ": --text-column and --label-column name the same column (" +
                (columns.header ? "'" + columns.text + "'" : std::to_string(text)) + ")");
  const bool has_pair = !columns.text_pair.empty();
  const size_t pair =
      has_pair ? column_index(header, columns.text_pair, columns.header, path, "--text-pair-column") : 0;
  const size_t needed = std::max({text, label, pair}) + 1;
  for (size_t r = columns.header ? 1 : 0; r < rows.size(); ++r) {
    const Row& row = rows[r];
    const std::string where = path + ":" + std::to_string(row.line);
    if (row.fields.size() < needed) {
      throw FormatError(path, "line " + std::to_string(row.line) + " has " +
                                  std::to_string(row.fields.size()) + " field(s), expected at least " +
                                  std::to_string(needed) + (format == "csv" ? "" : " (tab-separated)"));
    }
    TextExample example;
    example.text = trim(row.fields[text]);
    example.label = trim(row.fields[label]);
    if (has_pair) example.text_pair = trim(row.fields[pair]);
    example.where = where;
    example.lines = row.lines;
    check_label(example.label, path, row.line);
    check_utf8(example.text, where);
    check_utf8(example.text_pair, where);
    check_utf8(example.label, where);
    out.push_back(std::move(example));
  }
}

std::string json_text(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return std::to_string(value.get<int64_t>());
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number()) return value.dump();
  return "";
}

// Calls f(object, line number) for every non-blank line of a JSON Lines file.
template <class F>
void for_each_json_line(const std::string& path, F f) {
  const std::string contents = read_whole_file(path);
  std::stringstream stream(contents);
  std::string line;
  size_t number = 0;
  while (std::getline(stream, line)) {
    ++number;
    if (trim(line).empty()) continue;
    const json object = parse_json(line, path, "line " + std::to_string(number));
    if (!object.is_object())
      throw FormatError(path, "line " + std::to_string(number) + " is not a JSON object");
    f(object, number);
  }
}

void read_jsonl(const std::string& path, const TextColumns& columns, std::vector<TextExample>& out) {
  if (columns.text == columns.label)
    throw Error(path + ": --text-column and --label-column name the same key ('" + columns.text + "')");
  for_each_json_line(path, [&](const json& object, size_t number) {
    const std::string where = path + ":" + std::to_string(number);
    auto get = [&](const std::string& key, bool required) -> std::string {
      if (!object.contains(key)) {
        if (!required) return "";
        throw FormatError(path, "line " + std::to_string(number) + " has no key '" + key + "'");
      }
      const json& value = object.at(key);
      if (!value.is_string() && !value.is_number() && !value.is_boolean())
        throw FormatError(path, "line " + std::to_string(number) + ": '" + key + "' is a " +
                                    value.type_name() + ", expected a string or a number");
      return trim(json_text(value));
    };
    TextExample example;
    example.text = get(columns.text, true);
    example.label = get(columns.label, true);
    if (!columns.text_pair.empty()) example.text_pair = get(columns.text_pair, true);
    check_label(example.label, path, number);
    example.where = where;
    out.push_back(std::move(example));
  });
}

}  // namespace

std::vector<TextExample> read_text_examples(const std::string& paths, const TextColumns& columns) {
  std::vector<TextExample> out;
  for (const std::string& path : split_paths(paths)) {
    const std::string format = resolve_format(path, columns.format);
    if (format == "jsonl")
      read_jsonl(path, columns, out);
    else
      read_delimited(path, format == "txt" ? "tsv" : format, columns, out);
  }
  if (out.empty()) throw Error(paths + ": no labelled examples found");
  return out;
}

std::vector<std::string> label_classes(const std::vector<TextExample>& examples) {
  std::map<std::string, int> seen;
  for (const auto& e : examples) seen[e.label] = 1;
  std::vector<std::string> classes;
  for (const auto& item : seen) classes.push_back(item.first);
  const bool integers = std::all_of(classes.begin(), classes.end(), [](const std::string& s) {
    const size_t start = !s.empty() && s[0] == '-' ? 1 : 0;
    return s.size() > start && s.size() < 18 &&
           std::all_of(s.begin() + static_cast<std::ptrdiff_t>(start), s.end(),
                       [](unsigned char c) { return std::isdigit(c); });
  });
  if (integers) {
    std::sort(classes.begin(), classes.end(),
              [](const std::string& a, const std::string& b) { return std::stoll(a) < std::stoll(b); });
  }
  return classes;
}

std::vector<std::string> read_lm_documents(const std::string& paths, bool line_by_line,
                                           const std::string& text_key, const std::string& format_name) {
  std::vector<std::string> documents;
  for (const std::string& path : split_paths(paths)) {
    const std::string format = resolve_format(path, format_name);
    if (format == "jsonl") {
      for_each_json_line(path, [&](const json& object, size_t number) {
        if (!object.contains(text_key) || !object.at(text_key).is_string())
          throw FormatError(path, "line " + std::to_string(number) + " has no string '" + text_key + "'");
        std::string text = object.at(text_key).get<std::string>();
        check_utf8(text, path + ":" + std::to_string(number));
        if (!trim(text).empty()) documents.push_back(std::move(text));
      });
    } else if (format == "csv") {
      throw Error(path + ": language-model text is .txt or .jsonl, not csv");
    } else {
      std::string contents = read_whole_file(path);
      check_utf8(contents, path);
      if (!line_by_line) {
        if (!trim(contents).empty()) documents.push_back(std::move(contents));
        continue;
      }
      std::stringstream stream(contents);
      std::string line;
      while (std::getline(stream, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!trim(line).empty()) documents.push_back(line);
      }
    }
  }
  if (documents.empty()) throw Error(paths + ": no text found");
  return documents;
}

bool is_conversation_data(const std::string& paths, const std::string& format) {
  const std::vector<std::string> files = split_paths(paths);
  if (files.empty()) return false;
  try {
    if (resolve_format(files.front(), format) != "jsonl") return false;
  } catch (const Error&) {
    return false;  // the reader of the other formats says what is wrong with the name or format
  }
  std::ifstream in(files.front());
  std::string line;
  while (std::getline(in, line)) {
    if (trim(line).empty()) continue;
    const json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
    return object.is_object() && object.contains("messages");
  }
  return false;
}

std::vector<std::vector<ChatMessage>> read_conversations(const std::string& paths,
                                                         const std::string& format) {
  std::vector<std::vector<ChatMessage>> conversations;
  for (const std::string& path : split_paths(paths)) {
    if (resolve_format(path, format) != "jsonl")
      throw Error(path +
                  ": conversations are JSON Lines of {\"messages\": [{\"role\": ..., \"content\": ...}]}");
    for_each_json_line(path, [&](const json& object, size_t number) {
      const std::string where = "line " + std::to_string(number);
      if (!object.contains("messages") || !object.at("messages").is_array() || object.at("messages").empty())
        throw FormatError(path, where +
                                    " has no \"messages\" list (a conversation: [{\"role\": \"user\", "
                                    "\"content\": ...}, {\"role\": \"assistant\", ...}])");
      std::vector<ChatMessage> messages;
      for (const json& m : object.at("messages")) {
        const std::string at = where + ", message " + std::to_string(messages.size() + 1);
        if (!m.is_object() || !m.contains("role") || !m.at("role").is_string() || !m.contains("content") ||
            !m.at("content").is_string())
          throw FormatError(path, at + " must be an object with string \"role\" and \"content\"");
        ChatMessage message{m.at("role").get<std::string>(), m.at("content").get<std::string>()};
        check_utf8(message.content, path + ":" + std::to_string(number));
        messages.push_back(std::move(message));
      }
      conversations.push_back(std::move(messages));
    });
  }
  if (conversations.empty()) throw Error(paths + ": no conversations found");
  return conversations;
}

}  // namespace graft
