// Bounded JSON parsing and quoting. See graft/json_file.h.
#include "graft/json_file.h"

#include "graft/errors.h"
#include "graft/strings.h"

namespace graft {

using nlohmann::json;

json parse_json(const std::string& text, const std::string& source, const std::string& part, int max_depth) {
  const std::string subject = part.empty() ? "" : part + " ";
  // nlohmann parses iteratively, but every later dump, comparison or copy of the value recurses once per
  // level: the depth is stopped here, at the first level too deep, before anything is built from it.
  const json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_depth)
      throw FormatError(source, subject + "nests JSON deeper than " + std::to_string(max_depth) + " levels",
                        "no file graft reads nests more than a few levels; the file is damaged or hostile");
    return true;
  };
  try {
    return json::parse(text, callback);
  } catch (const json::exception& e) {
    throw FormatError(source, subject + "is not valid JSON: " + e.what());
  }
}

json read_json_file(const std::string& path, uint64_t max_bytes) {
  return parse_json(read_file(path, max_bytes, "JSON file"), path);
}

namespace {

std::string scalar_text(const json& value, size_t max_chars) {
  if (value.is_string() &&
      value.get_ref<const std::string&>().size() > max_chars)  // no 100 MB copy for a message
    return json(value.get_ref<const std::string&>().substr(0, max_chars))
        .dump(-1, ' ', false, json::error_handler_t::replace);
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Appends value to out; stops (returns false) once out is longer than max_chars.
bool excerpt(const json& value, std::string& out, size_t max_chars, int depth) {
  if (!value.is_structured()) {
    out += scalar_text(value, max_chars);
    return out.size() <= max_chars;
  }
  if (depth >= 8) {  // deep enough for a message; the rest is elided, and the recursion stays shallow
    out += value.is_object() ? "{...}" : "[...]";
    return out.size() <= max_chars;
  }
  out += value.is_object() ? '{' : '[';
  bool first = true;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!first) out += ',';
    first = false;
    if (value.is_object()) out += scalar_text(json(it.key()), max_chars) + ':';
    if (out.size() > max_chars || !excerpt(*it, out, max_chars, depth + 1)) return false;
  }
  out += value.is_object() ? '}' : ']';
  return out.size() <= max_chars;
}

}  // namespace

std::string json_excerpt(const json& value, size_t max_chars) {
  std::string out;
  if (!excerpt(value, out, max_chars, 0)) {
    out.resize(max_chars);
    out += "...";
  }
  return out;
}

}  // namespace graft
