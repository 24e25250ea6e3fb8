// Chat templates (chat_template.h): a lexer with Jinja's whitespace rules (trim_blocks, lstrip_blocks, the
// `-` markers), a recursive-descent parser following jinja2/parser.py's precedence, and a tree-walking
// evaluator with Python's value semantics for the types JSON gives a template (None, bool, int, float,
// str, list, dict) plus Jinja's Undefined, namespace() and the loop variable.
#include "graft/chat_template.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/tokenizer.h"

namespace graft {
namespace {

using ojson = nlohmann::ordered_json;

// Limits against a template that would render without end: output bytes and loop iterations.
constexpr size_t kMaxOutputBytes = size_t{64} << 20;
constexpr int64_t kMaxIterations = 1'000'000;
constexpr int kMaxDepth = 200;           // nesting of expressions and blocks
constexpr int kMaxValueDepth = 100;      // nesting of lists and dicts a template builds
constexpr size_t kMaxItems = 1'000'000;  // elements of a list a template builds or iterates

class TemplateError {
 public:
  TemplateError(std::string message, int line) : message(std::move(message)), line(line) {}
  std::string message;
  int line;  // 0: not known
};

// ---------------------------------------------------------------------------------------------------
// Values

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // Python's dicts keep insertion order

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // kDict and kNamespace (shared: `set ns.x` changes the namespace itself)
  int depth = 0;               // nesting of lists and dicts inside, bounded so that nothing recurses deeply

  static Value none() { return make(Kind::kNone); }
  static Value boolean(bool v) {
    Value out = make(Kind::kBool);
    out.b = v;
    return out;
  }
  static Value integer(int64_t v) {
    Value out = make(Kind::kInt);
    out.i = v;
    return out;
  }
  static Value real(double v) {
    Value out = make(Kind::kFloat);
    out.f = v;
    return out;
  }
  static Value string(std::string v) {
    Value out = make(Kind::kString);
    out.s = std::move(v);
    return out;
  }
  static Value of_list(List v) {
    Value out = make(Kind::kList);
    for (const Value& item : v) out.depth = std::max(out.depth, item.depth + 1);
    out.check_depth();
    out.list = std::make_shared<List>(std::move(v));
    return out;
  }
  static Value of_dict(Dict v, Kind kind = Kind::kDict) {
    Value out = make(kind);
    for (const auto& item : v) out.depth = std::max(out.depth, item.second.depth + 1);
    out.check_depth();
    out.dict = std::make_shared<Dict>(std::move(v));
    return out;
  }
  void check_depth() const {
    if (depth > kMaxValueDepth)
      throw TemplateError("a list or dict nested more than " + std::to_string(kMaxValueDepth) + " deep", 0);
  }
  // Whether a namespace() is inside: such a value cannot go into a namespace, which would then hold
  // itself (namespaces are the only values a template changes).
  bool holds_namespace() const {
    if (kind == Kind::kNamespace) return true;
    if (list)
      for (const Value& item : *list)
        if (item.holds_namespace()) return true;
    if (dict)
      for (const auto& item : *dict)
        if (item.second.holds_namespace()) return true;
    return false;
  }
  static Value make(Kind k) {
    Value out;
    out.kind = k;
    return out;
  }
  bool is(Kind k) const { return kind == k; }
  bool numeric() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  double number() const { return kind == Kind::kFloat ? f : kind == Kind::kBool ? (b ? 1 : 0) : double(i); }
  const Value* find(const std::string& key) const {
    if (!dict) return nullptr;
    for (const auto& [k, v] : *dict)
      if (k == key) return &v;
    return nullptr;
  }
};

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return "dict";
    case Value::Kind::kNamespace:
      return "Namespace";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return false;
    case Value::Kind::kBool:
      return v.b;
    case Value::Kind::kInt:
      return v.i != 0;
    case Value::Kind::kFloat:
      return v.f != 0;
    case Value::Kind::kString:
      return !v.s.empty();
    case Value::Kind::kList:
      return !v.list->empty();
    case Value::Kind::kDict:
      return !v.dict->empty();
    case Value::Kind::kNamespace:
      return true;
  }
  return false;
}

// Python's repr of a float: the shortest digits that read back to the same double, with ".0" when whole.
std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buffer[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, x);
    if (std::strtod(buffer, nullptr) == x) break;
  }
  std::string out = buffer;
  if (out.find_first_of(".eEn") == std::string::npos) out += ".0";
  return out;
}

std::string python_quote(const std::string& s) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (char c : s) {
    if (c == quote || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += c;
    }
  }
  return out + quote;
}

std::string repr(const Value& v);

// What {{ v }} and the string filter print: Python's str().
std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.b ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.i);
    case Value::Kind::kFloat:
      return float_repr(v.f);
    case Value::Kind::kString:
      return v.s;
    default:
      return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString:
      return python_quote(v.s);
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        out += (k ? ", " : "") + repr((*v.list)[k]);
        if (out.size() > kMaxOutputBytes) throw TemplateError("a value too long to print", 0);
      }
      return out + "]";
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      std::string out = v.is(Value::Kind::kNamespace) ? "<Namespace {" : "{";
      for (size_t k = 0; k < v.dict->size(); ++k) {
        out += (k ? ", " : "") + python_quote((*v.dict)[k].first) + ": " + repr((*v.dict)[k].second);
        if (out.size() > kMaxOutputBytes) throw TemplateError("a value too long to print", 0);
      }
      return out + (v.is(Value::Kind::kNamespace) ? "}>" : "}");
    }
    default:
      return to_str(v);
  }
}

bool equal(const Value& a, const Value& b) {
  if (a.numeric() && b.numeric()) return a.number() == b.number();
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.s == b.s;
    case Value::Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, value] : *a.dict) {
        const Value* other = b.find(key);
        if (!other || !equal(value, *other)) return false;
      }
      return true;
    default:
      return false;
  }
}

Value from_json(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null:
      return Value::none();
    case ojson::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case ojson::value_t::number_integer:
    case ojson::value_t::number_unsigned:
      return Value::integer(j.get<int64_t>());
    case ojson::value_t::number_float:
      return Value::real(j.get<double>());
    case ojson::value_t::string:
      return Value::string(j.get<std::string>());
    case ojson::value_t::array: {
      List list;
      for (const auto& item : j) list.push_back(from_json(item));
      return Value::of_list(std::move(list));
    }
    case ojson::value_t::object: {
      Dict dict;
      for (const auto& [key, item] : j.items()) dict.emplace_back(key, from_json(item));
      return Value::of_dict(std::move(dict));
    }
    default:
      return Value();
  }
}

// Python's json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=...), the tojson filter of
// transformers' chat environment: ", " and ": " between items without indent, "," and newlines with it.
void to_json_text(const Value& v, int indent, int depth, bool sort_keys, std::string& out) {
  if (out.size() > kMaxOutputBytes) throw TemplateError("tojson: a value too long to print", 0);
  const auto newline = [&](int level) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent * level), ' ');
  };
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      out += "null";
      return;
    case Value::Kind::kBool:
      out += v.b ? "true" : "false";
      return;
    case Value::Kind::kInt:
      out += std::to_string(v.i);
      return;
    case Value::Kind::kFloat:
      out += std::isfinite(v.f) ? float_repr(v.f)
                                : (std::isnan(v.f) ? "NaN"
                                   : v.f > 0       ? "Infinity"
                                                   : "-Infinity");
      return;
    case Value::Kind::kString: {
      out += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"':
            out += "\\\"";
            break;
          case '\\':
            out += "\\\\";
            break;
          case '\n':
            out += "\\n";
            break;
          case '\r':
            out += "\\r";
            break;
          case '\t':
            out += "\\t";
            break;
          case '\b':
            out += "\\b";
            break;
          case '\f':
            out += "\\f";
            break;
          default:
            if (c < 0x20) {
              char buffer[8];
              std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
              out += buffer;
            } else {
              out += static_cast<char>(c);
            }
        }
      }
      out += '"';
      return;
    }
    case Value::Kind::kList: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += indent < 0 ? ", " : ",";
        newline(depth + 1);
        to_json_text((*v.list)[k], indent, depth + 1, sort_keys, out);
      }
      newline(depth);
      out += ']';
      return;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      if (v.dict->empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : *v.dict) items.push_back(&item);
      if (sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += indent < 0 ? ", " : ",";
        newline(depth + 1);
        to_json_text(Value::string(items[k]->first), indent, depth + 1, sort_keys, out);
        out += ": ";
        to_json_text(items[k]->second, indent, depth + 1, sort_keys, out);
      }
      newline(depth);
      out += '}';
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Lexer: the template as text pieces and tags, Jinja's whitespace rules applied.

struct Token {
  enum class Kind { kName, kString, kInt, kFloat, kOp, kEnd };
  Kind kind = Kind::kEnd;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

struct Piece {
  enum class Kind { kText, kOutput, kStatement };
  Kind kind = Kind::kText;
  std::string text;           // kText
  std::vector<Token> tokens;  // kOutput, kStatement
  int line = 1;
};

int line_at(const std::string& source, size_t pos) {
  return 1 + static_cast<int>(std::count(source.begin(), source.begin() + static_cast<long>(pos), '\n'));
}

// The tokens of one tag, from `pos` to its closing delimiter `close` ("}}" or "%}"), respecting string
// literals; `pos` ends after the delimiter, `*strip_after` says whether it was "-}}" / "-%}".
std::vector<Token> lex_tag(const std::string& src, size_t& pos, const std::string& close, bool* strip_after) {
  std::vector<Token> tokens;
  const int line = line_at(src, pos);
  while (true) {
    while (pos < src.size() && std::isspace(static_cast<unsigned char>(src[pos]))) ++pos;
    if (pos >= src.size()) throw TemplateError("a tag that never closes (expected '" + close + "')", line);
    if (src[pos] == '-' && src.compare(pos + 1, close.size(), close) == 0) {
      *strip_after = true;
      pos += 1 + close.size();
      return tokens;
    }
    if (src.compare(pos, close.size(), close) == 0) {
      *strip_after = false;
      pos += close.size();
      return tokens;
    }
    const char c = src[pos];
    Token token;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      const size_t start = pos;
      while (pos < src.size() && (std::isalnum(static_cast<unsigned char>(src[pos])) || src[pos] == '_'))
        ++pos;
      token.kind = Token::Kind::kName;
      token.text = src.substr(start, pos - start);
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      const size_t start = pos;
      while (pos < src.size() && (std::isdigit(static_cast<unsigned char>(src[pos])) || src[pos] == '_'))
        ++pos;
      bool is_float = false;
      if (pos + 1 < src.size() && src[pos] == '.' && std::isdigit(static_cast<unsigned char>(src[pos + 1]))) {
        is_float = true;
        ++pos;
        while (pos < src.size() && std::isdigit(static_cast<unsigned char>(src[pos]))) ++pos;
      }
      if (pos < src.size() && (src[pos] == 'e' || src[pos] == 'E')) {
        is_float = true;
        ++pos;
        if (pos < src.size() && (src[pos] == '+' || src[pos] == '-')) ++pos;
        while (pos < src.size() && std::isdigit(static_cast<unsigned char>(src[pos]))) ++pos;
      }
      std::string digits = src.substr(start, pos - start);
      digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
      token.text = digits;
      try {
        if (is_float) {
          token.kind = Token::Kind::kFloat;
          token.f = std::stod(digits);
        } else {
          token.kind = Token::Kind::kInt;
          token.i = std::stoll(digits);
        }
      } catch (const std::exception&) {
        throw TemplateError("the number " + digits + " is out of range", line);
      }
    } else if (c == '\'' || c == '"') {
      ++pos;
      std::string text;
      while (true) {
        if (pos >= src.size()) throw TemplateError("a string literal that never closes", line);
        const char d = src[pos++];
        if (d == c) break;
        if (d != '\\') {
          text += d;
          continue;
        }
        if (pos >= src.size()) throw TemplateError("a string literal that never closes", line);
        const char e = src[pos++];
        switch (e) {
          case 'n':
            text += '\n';
            break;
          case 't':
            text += '\t';
            break;
          case 'r':
            text += '\r';
            break;
          case '\\':
            text += '\\';
            break;
          case '\'':
            text += '\'';
            break;
          case '"':
            text += '"';
            break;
          case '\n':
            break;  // a line continuation
          default:
            text += '\\';
            text += e;
        }
      }
      token.kind = Token::Kind::kString;
      token.text = text;
    } else {
      static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                         "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                         "]",  "{",  "}",  ",",  ":",  ".",  "|"};
      token.kind = Token::Kind::kOp;
      for (const char* op : kOps) {
        if (src.compare(pos, std::char_traits<char>::length(op), op) == 0) {
          token.text = op;
          break;
        }
      }
      if (token.text.empty()) throw TemplateError(std::string("unexpected character '") + c + "'", line);
      pos += token.text.size();
    }
    tokens.push_back(std::move(token));
  }
}

std::vector<Piece> lex(const std::string& source) {
  // Jinja's lexer first: line ends become "\n" (newline_sequence) and one trailing newline is dropped
  // (keep_trailing_newline is off).
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  std::vector<Piece> pieces;
  size_t pos = 0;
  bool strip_next = false;  // the previous tag ended with '-'
  bool trim_next = false;   // the previous tag was a block or comment (trim_blocks: drop one newline)
  while (pos <= src.size()) {
    size_t open = pos;
    while (true) {
      open = src.find('{', open);
      if (open == std::string::npos || open + 1 >= src.size()) {
        open = std::string::npos;
        break;
      }
      const char next = src[open + 1];
      if (next == '{' || next == '%' || next == '#') break;
      ++open;
    }
    std::string text = src.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    const char kind = open == std::string::npos ? '\0' : src[open + 1];
    const bool block = kind == '%' || kind == '#';
    const bool minus = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '-';
    const bool plus = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '+';
    // The end of the text first: '-' strips all whitespace before the tag; lstrip_blocks strips the spaces
    // and tabs between the start of a line and a block tag (text follows a tag, so it starts a line only
    // at the template's start).
    if (minus) {
      const size_t keep = text.find_last_not_of(" \t\r\n\f\v");
      text = keep == std::string::npos ? "" : text.substr(0, keep + 1);
    } else if (block && !plus) {
      const size_t line_start = text.find_last_of('\n');
      const size_t from = line_start == std::string::npos ? 0 : line_start + 1;
      if ((line_start != std::string::npos || pos == 0) &&
          text.find_first_not_of(" \t", from) == std::string::npos)
        text.erase(from);
    }
    // Then its start: after a '-' tag all whitespace goes, after a block tag (trim_blocks) one newline.
    if (strip_next) {
      const size_t first = text.find_first_not_of(" \t\r\n\f\v");
      text.erase(0, first == std::string::npos ? text.size() : first);
    } else if (trim_next && !text.empty()) {
      if (text[0] == '\n') {
        text.erase(0, 1);
      } else if (text.compare(0, 2, "\r\n") == 0) {
        text.erase(0, 2);
      }
    }
    if (open == std::string::npos) {
      if (!text.empty()) pieces.push_back({Piece::Kind::kText, text, {}, line_at(src, pos)});
      break;
    }
    if (!text.empty()) pieces.push_back({Piece::Kind::kText, text, {}, line_at(src, pos)});
    const int line = line_at(src, open);
    pos = open + 2 + ((minus || plus) ? 1 : 0);
    if (kind == '#') {
      const size_t end = src.find("#}", pos);
      if (end == std::string::npos) throw TemplateError("a comment that never closes (expected '#}')", line);
      strip_next = end > pos && src[end - 1] == '-';
      trim_next = true;
      pos = end + 2;
      continue;
    }
    Piece piece;
    piece.kind = kind == '{' ? Piece::Kind::kOutput : Piece::Kind::kStatement;
    piece.line = line;
    piece.tokens = lex_tag(src, pos, kind == '{' ? "}}" : "%}", &strip_next);
    trim_next = block;
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

// ---------------------------------------------------------------------------------------------------
// Syntax tree

struct Expr;
using ExprPtr = std::shared_ptr<const Expr>;

struct Expr {
  enum class Kind {
    kLiteral,
    kName,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kUnary,
    kBinary,
    kAnd,
    kOr,
    kNot,
    kCondition,
    kList,
    kDict
  };
  Kind kind;
  int line = 1;
  Value literal;              // kLiteral
  std::string name;           // kName, kAttr (attribute), kFilter / kTest (its name), kUnary / kBinary (op)
  ExprPtr a, b, c;            // operands: object/left/condition, key/right/then, else / slice step
  std::vector<ExprPtr> args;  // kCall, kFilter, kTest, kList; kDict keys/values
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // kCall, kFilter
  bool negated = false;                                 // kTest: "is not"
  explicit Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using Body = std::vector<std::shared_ptr<const Stmt>>;

struct Stmt {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };
  Kind kind;
  int line = 1;
  std::string text;                                // kText
  ExprPtr expr;                                    // kOutput, kSet value, kFor iterable
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: (condition, body)...
  Body body, else_body;                            // kIf else, kFor body and else
  std::vector<std::string> targets;                // kFor loop variables, kSet name (and attribute)
  ExprPtr filter;                                  // kFor ... if condition
  explicit Stmt(Kind k, int l) : kind(k), line(l) {}
};

class ExprParser {
 public:
  ExprParser(const std::vector<Token>& tokens, size_t pos, int line) : t_(tokens), pos_(pos), line_(line) {}
  size_t pos() const { return pos_; }
  bool done() const { return pos_ >= t_.size(); }

  ExprPtr expression(int depth = 0) {
    if (depth > kMaxDepth) throw TemplateError("an expression nested too deeply", line_);
    ExprPtr value = parse_or(depth);
    if (at_name("if")) {  // a if cond else b
      ++pos_;
      auto node = make(Expr::Kind::kCondition);
      node->b = value;
      node->a = parse_or(depth);
      if (at_name("else")) {
        ++pos_;
        node->c = expression(depth + 1);
      }
      return node;
    }
    return value;
  }

  bool at_op(const char* op) const {
    return pos_ < t_.size() && t_[pos_].kind == Token::Kind::kOp && t_[pos_].text == op;
  }
  bool at_name(const char* name) const {
    return pos_ < t_.size() && t_[pos_].kind == Token::Kind::kName && t_[pos_].text == name;
  }
  void expect_op(const char* op) {
    if (!at_op(op)) throw TemplateError(std::string("expected '") + op + "', found " + describe(), line_);
    ++pos_;
  }
  std::string name() {
    if (pos_ >= t_.size() || t_[pos_].kind != Token::Kind::kName)
      throw TemplateError("expected a name, found " + describe(), line_);
    return t_[pos_++].text;
  }
  std::string describe() const {
    if (pos_ >= t_.size()) return "the end of the tag";
    return "'" + t_[pos_].text + "'";
  }

 private:
  std::shared_ptr<Expr> make(Expr::Kind kind) const { return std::make_shared<Expr>(kind, line_); }

  ExprPtr parse_or(int depth) {
    ExprPtr left = parse_and(depth);
    while (at_name("or")) {
      ++pos_;
      auto node = make(Expr::Kind::kOr);
      node->a = left;
      node->b = parse_and(depth);
      left = node;
    }
    return left;
  }
  ExprPtr parse_and(int depth) {
    ExprPtr left = parse_not(depth);
    while (at_name("and")) {
      ++pos_;
      auto node = make(Expr::Kind::kAnd);
      node->a = left;
      node->b = parse_not(depth);
      left = node;
    }
    return left;
  }
  ExprPtr parse_not(int depth) {
    if (at_name("not")) {
      ++pos_;
      auto node = make(Expr::Kind::kNot);
      node->a = parse_not(depth + 1);
      return node;
    }
    return parse_compare(depth);
  }
  ExprPtr parse_compare(int depth) {
    ExprPtr left = parse_math1(depth);
    while (true) {
      std::string op;
      for (const char* candidate : {"==", "!=", "<", ">", "<=", ">="})
        if (at_op(candidate)) op = candidate;
      if (!op.empty()) {
        ++pos_;
      } else if (at_name("in")) {
        ++pos_;
        op = "in";
      } else if (at_name("not") && pos_ + 1 < t_.size() && t_[pos_ + 1].kind == Token::Kind::kName &&
                 t_[pos_ + 1].text == "in") {
        pos_ += 2;
        op = "not in";
      } else {
        return left;
      }
      auto node = make(Expr::Kind::kBinary);
      node->name = op;
      node->a = left;
      node->b = parse_math1(depth);
      left = node;
    }
  }
  ExprPtr binary_loop(int depth, std::initializer_list<const char*> ops, ExprPtr (ExprParser::*next)(int)) {
    ExprPtr left = (this->*next)(depth);
    while (true) {
      const char* found = nullptr;
      for (const char* op : ops)
        if (at_op(op)) found = op;
      if (!found) return left;
      ++pos_;
      auto node = make(Expr::Kind::kBinary);
      node->name = found;
      node->a = left;
      node->b = (this->*next)(depth);
      left = node;
    }
  }
  ExprPtr parse_math1(int depth) { return binary_loop(depth, {"+", "-"}, &ExprParser::parse_concat); }
  ExprPtr parse_concat(int depth) { return binary_loop(depth, {"~"}, &ExprParser::parse_math2); }
  ExprPtr parse_math2(int depth) { return binary_loop(depth, {"*", "/", "//", "%"}, &ExprParser::parse_pow); }
  ExprPtr parse_pow(int depth) { return binary_loop(depth, {"**"}, &ExprParser::parse_unary); }

  ExprPtr parse_unary(int depth) {
    if (depth > kMaxDepth) throw TemplateError("an expression nested too deeply", line_);
    if (at_op("-") || at_op("+")) {
      auto node = make(Expr::Kind::kUnary);
      node->name = t_[pos_++].text;
      node->a = parse_unary(depth + 1);
      return filters(node, depth);
    }
    return filters(postfix(primary(depth), depth), depth);
  }

  void call_arguments(Expr& node, int depth) {  // after '(' up to and including ')'
    while (!at_op(")")) {
      if (pos_ + 1 < t_.size() && t_[pos_].kind == Token::Kind::kName &&
          t_[pos_ + 1].kind == Token::Kind::kOp && t_[pos_ + 1].text == "=") {
        const std::string key = t_[pos_].text;
        pos_ += 2;
        node.kwargs.emplace_back(key, expression(depth + 1));
      } else {
        node.args.push_back(expression(depth + 1));
      }
      if (!at_op(",")) break;
      ++pos_;
    }
    expect_op(")");
  }

  ExprPtr postfix(ExprPtr node, int depth) {
    while (true) {
      if (at_op(".")) {
        ++pos_;
        auto attr = make(Expr::Kind::kAttr);
        attr->a = node;
        if (pos_ < t_.size() && t_[pos_].kind == Token::Kind::kInt) {  // foo.0: an item
          attr->kind = Expr::Kind::kItem;
          auto key = make(Expr::Kind::kLiteral);
          key->literal = Value::integer(t_[pos_++].i);
          attr->b = key;
        } else {
          attr->name = name();
        }
        node = attr;
      } else if (at_op("[")) {
        ++pos_;
        ExprPtr start, stop, step;
        bool slice = false;
        if (!at_op(":")) start = expression(depth + 1);
        if (at_op(":")) {
          slice = true;
          ++pos_;
          if (!at_op(":") && !at_op("]")) stop = expression(depth + 1);
          if (at_op(":")) {
            ++pos_;
            if (!at_op("]")) step = expression(depth + 1);
          }
        }
        expect_op("]");
        auto item = make(slice ? Expr::Kind::kSlice : Expr::Kind::kItem);
        item->a = node;
        item->b = start;
        if (slice) {
          item->args = {start, stop, step};
        }
        node = item;
      } else if (at_op("(")) {
        ++pos_;
        auto call = make(Expr::Kind::kCall);
        call->a = node;
        call_arguments(*call, depth);
        node = call;
      } else {
        return node;
      }
    }
  }

  ExprPtr filters(ExprPtr node, int depth) {
    while (true) {
      if (at_op("|")) {
        ++pos_;
        auto filter = make(Expr::Kind::kFilter);
        filter->a = node;
        filter->name = name();
        while (at_op(".")) {  // a dotted filter name
          ++pos_;
          filter->name += "." + name();
        }
        if (at_op("(")) {
          ++pos_;
          call_arguments(*filter, depth);
        }
        node = filter;
      } else if (at_name("is")) {
        ++pos_;
        auto test = make(Expr::Kind::kTest);
        test->a = node;
        if (at_name("not")) {
          ++pos_;
          test->negated = true;
        }
        // Names and the keyword-named tests: none, true, false, in, ==.
        if (pos_ < t_.size() && (t_[pos_].kind == Token::Kind::kName || t_[pos_].kind == Token::Kind::kOp)) {
          test->name = t_[pos_++].text;
        } else {
          throw TemplateError("expected a test name after 'is', found " + describe(), line_);
        }
        if (at_op("(")) {
          ++pos_;
          call_arguments(*test, depth);
        } else if (pos_ < t_.size() &&
                   (t_[pos_].kind == Token::Kind::kString || t_[pos_].kind == Token::Kind::kInt ||
                    t_[pos_].kind == Token::Kind::kFloat ||
                    (t_[pos_].kind == Token::Kind::kName && t_[pos_].text != "and" && t_[pos_].text != "or" &&
                     t_[pos_].text != "if" && t_[pos_].text != "else" && t_[pos_].text != "is"))) {
          test->args.push_back(postfix(primary(depth + 1), depth + 1));  // "is sameas x", "is divisibleby 3"
        }
        node = test;
      } else {
        return node;
      }
    }
  }

  ExprPtr primary(int depth) {
    if (pos_ >= t_.size()) throw TemplateError("expected an expression, found the end of the tag", line_);
    const Token& token = t_[pos_];
    auto literal = [&](Value v) {
      ++pos_;
      auto node = make(Expr::Kind::kLiteral);
      node->literal = std::move(v);
      return node;
    };
    switch (token.kind) {
      case Token::Kind::kString: {
        std::string text = token.text;
        ++pos_;
        while (pos_ < t_.size() && t_[pos_].kind == Token::Kind::kString) text += t_[pos_++].text;  // "a" "b"
        --pos_;
        return literal(Value::string(text));
      }
      case Token::Kind::kInt:
        return literal(Value::integer(token.i));
      case Token::Kind::kFloat:
        return literal(Value::real(token.f));
      case Token::Kind::kName: {
        const std::string& n = token.text;
        if (n == "true" || n == "True") return literal(Value::boolean(true));
        if (n == "false" || n == "False") return literal(Value::boolean(false));
        if (n == "none" || n == "None") return literal(Value::none());
        auto node = make(Expr::Kind::kName);
        node->name = n;
        ++pos_;
        return node;
      }
      case Token::Kind::kOp: {
        if (token.text == "(") {
          ++pos_;
          ExprPtr inner = expression(depth + 1);
          if (at_op(",")) {  // a tuple: a list for our purposes
            auto list = make(Expr::Kind::kList);
            list->args.push_back(inner);
            while (at_op(",")) {
              ++pos_;
              if (at_op(")")) break;
              list->args.push_back(expression(depth + 1));
            }
            inner = list;
          }
          expect_op(")");
          return inner;
        }
        if (token.text == "[") {
          ++pos_;
          auto list = make(Expr::Kind::kList);
          while (!at_op("]")) {
            list->args.push_back(expression(depth + 1));
            if (!at_op(",")) break;
            ++pos_;
          }
          expect_op("]");
          return list;
        }
        if (token.text == "{") {
          ++pos_;
          auto dict = make(Expr::Kind::kDict);
          while (!at_op("}")) {
            dict->args.push_back(expression(depth + 1));
            expect_op(":");
            dict->args.push_back(expression(depth + 1));
            if (!at_op(",")) break;
            ++pos_;
          }
          expect_op("}");
          return dict;
        }
        break;
      }
      default:
        break;
    }
    throw TemplateError("unexpected " + describe() + " in an expression", line_);
  }

  const std::vector<Token>& t_;
  size_t pos_;
  int line_;
};

class Parser {
 public:
  explicit Parser(std::vector<Piece> pieces) : pieces_(std::move(pieces)) {}

  Body parse() {
    std::string end;
    Body body = block({}, &end, 0);
    return body;
  }

 private:
  // Statements until one whose keyword is in `ends` (returned in *end, its tokens left in `last_`).
  Body block(const std::vector<std::string>& ends, std::string* end, int depth) {
    if (depth > kMaxDepth) throw TemplateError("blocks nested too deeply", line());
    Body body;
    while (at_ < pieces_.size()) {
      const Piece& piece = pieces_[at_++];
      if (piece.kind == Piece::Kind::kText) {
        auto stmt = std::make_shared<Stmt>(Stmt::Kind::kText, piece.line);
        stmt->text = piece.text;
        body.push_back(stmt);
        continue;
      }
      ExprParser p(piece.tokens, 0, piece.line);
      if (piece.kind == Piece::Kind::kOutput) {
        auto stmt = std::make_shared<Stmt>(Stmt::Kind::kOutput, piece.line);
        stmt->expr = p.expression();
        finish(p, piece);
        body.push_back(stmt);
        continue;
      }
      const std::string keyword = p.name();
      if (std::find(ends.begin(), ends.end(), keyword) != ends.end()) {
        *end = keyword;
        last_ = &piece;
        last_pos_ = p.pos();
        return body;
      }
      if (keyword.rfind("end", 0) == 0 || keyword == "elif" || keyword == "else")
        throw TemplateError("{% " + keyword + " %} without the block it would close" +
                                (ends.empty() ? std::string() : " (expected {% " + ends.back() + " %})"),
                            piece.line);
      body.push_back(statement(keyword, p, piece, depth));
    }
    if (!ends.empty())
      throw TemplateError("the template ends inside a block: expected {% " + ends.back() + " %}", line());
    return body;
  }

  std::shared_ptr<const Stmt> statement(const std::string& keyword, ExprParser& p, const Piece& piece,
                                        int depth) {
    const int line = piece.line;
    if (keyword == "if") {
      auto stmt = std::make_shared<Stmt>(Stmt::Kind::kIf, line);
      ExprPtr condition = p.expression();
      finish(p, piece);
      while (true) {
        std::string end;
        Body body = block({"elif", "else", "endif"}, &end, depth + 1);
        stmt->branches.emplace_back(condition, std::move(body));
        ExprParser q(last_->tokens, last_pos_, last_->line);
        if (end == "elif") {
          condition = q.expression();
          finish(q, *last_);
          continue;
        }
        finish(q, *last_);
        if (end == "else") {
          std::string close;
          stmt->else_body = block({"endif"}, &close, depth + 1);
          ExprParser r(last_->tokens, last_pos_, last_->line);
          finish(r, *last_);
        }
        return stmt;
      }
    }
    if (keyword == "for") {
      auto stmt = std::make_shared<Stmt>(Stmt::Kind::kFor, line);
      stmt->targets.push_back(p.name());
      while (p.at_op(",")) {
        p.expect_op(",");
        stmt->targets.push_back(p.name());
      }
      if (!p.at_name("in")) throw TemplateError("expected 'in' in a for loop, found " + p.describe(), line);
      p.name();
      stmt->expr = p.expression();
      if (stmt->expr->kind == Expr::Kind::kCondition && !stmt->expr->c) {  // "for x in xs if cond"
        stmt->filter = stmt->expr->a;
        stmt->expr = stmt->expr->b;
      }
      if (p.at_name("recursive")) throw TemplateError("recursive for loops are not implemented", line);
      finish(p, piece);
      std::string end;
      stmt->body = block({"else", "endfor"}, &end, depth + 1);
      ExprParser q(last_->tokens, last_pos_, last_->line);
      finish(q, *last_);
      if (end == "else") {
        stmt->else_body = block({"endfor"}, &end, depth + 1);
        ExprParser r(last_->tokens, last_pos_, last_->line);
        finish(r, *last_);
      }
      return stmt;
    }
    if (keyword == "set") {
      auto stmt = std::make_shared<Stmt>(Stmt::Kind::kSet, line);
      stmt->targets.push_back(p.name());
      if (p.at_op(".")) {
        p.expect_op(".");
        stmt->targets.push_back(p.name());
      }
      if (!p.at_op("="))
        throw TemplateError("{% set %} without '=' (block assignments) is not implemented", line);
      p.expect_op("=");
      stmt->expr = p.expression();
      if (p.at_op(",")) throw TemplateError("{% set a, b = ... %} is not implemented", line);
      finish(p, piece);
      return stmt;
    }
    if (keyword == "break" || keyword == "continue") {
      finish(p, piece);
      return std::make_shared<Stmt>(keyword == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, line);
    }
    if (keyword == "generation" || keyword == "endgeneration") {
      // transformers' assistant-mask markers: they render nothing themselves.
      finish(p, piece);
      return std::make_shared<Stmt>(Stmt::Kind::kText, line);
    }
    throw TemplateError("{% " + keyword +
                            " %} is not implemented (graft's chat templates have if, for, set, break, "
                            "continue)",
                        line);
  }

  void finish(const ExprParser& p, const Piece& piece) {
    if (!p.done()) {
      ExprParser rest(piece.tokens, p.pos(), piece.line);
      throw TemplateError("unexpected " + rest.describe() + " in the tag", piece.line);
    }
  }
  int line() const { return at_ > 0 && at_ <= pieces_.size() ? pieces_[at_ - 1].line : 1; }

  std::vector<Piece> pieces_;
  size_t at_ = 0;
  const Piece* last_ = nullptr;
  size_t last_pos_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Evaluation

struct LoopSignal {
  bool is_break;
};

class Renderer {
 public:
  explicit Renderer(std::string& out) : out_(out) {}

  void run(const Body& body, Dict globals) {
    scopes_.push_back(std::move(globals));
    execute(body, 0);
  }

 private:
  [[noreturn]] void fail(int line, const std::string& message) const { throw TemplateError(message, line); }

  void check_length(size_t bytes, int line) const {
    if (bytes > kMaxOutputBytes)
      fail(line, "a string of more than " + std::to_string(kMaxOutputBytes >> 20) + " MiB");
  }

  void emit(const std::string& text, int line) {
    if (out_.size() + text.size() > kMaxOutputBytes)
      fail(line, "the rendering passes " + std::to_string(kMaxOutputBytes >> 20) + " MiB");
    out_ += text;
  }

  void execute(const Body& body, int depth) {
    if (depth > kMaxDepth) fail(body.empty() ? 1 : body.front()->line, "blocks nested too deeply");
    for (const auto& stmt : body) {
      switch (stmt->kind) {
        case Stmt::Kind::kText:
          emit(stmt->text, stmt->line);
          break;
        case Stmt::Kind::kOutput:
          emit(to_str(eval(*stmt->expr, 0)), stmt->line);
          break;
        case Stmt::Kind::kIf: {
          bool taken = false;
          for (const auto& [condition, branch] : stmt->branches) {
            if (truthy(eval(*condition, 0))) {
              execute(branch, depth + 1);
              taken = true;
              break;
            }
          }
          if (!taken) execute(stmt->else_body, depth + 1);
          break;
        }
        case Stmt::Kind::kFor:
          loop(*stmt, depth);
          break;
        case Stmt::Kind::kSet: {
          Value value = eval(*stmt->expr, 0);
          if (stmt->targets.size() == 1) {
            assign(scopes_.back(), stmt->targets[0], std::move(value));
          } else {
            Value ns = lookup(stmt->targets[0]);
            if (!ns.is(Value::Kind::kNamespace))
              fail(stmt->line, "'" + stmt->targets[0] + "' is a " + type_name(ns) +
                                   ", not a namespace(): only a namespace's attributes can be set");
            if (value.holds_namespace())
              fail(stmt->line,
                   "a namespace cannot hold a namespace (" + stmt->targets[0] + "." + stmt->targets[1] + ")");
            value.check_depth();
            assign(*ns.dict, stmt->targets[1], std::move(value));
          }
          break;
        }
        case Stmt::Kind::kBreak:
          throw LoopSignal{true};
        case Stmt::Kind::kContinue:
          throw LoopSignal{false};
      }
    }
  }

  static void assign(Dict& dict, const std::string& key, Value value) {
    for (auto& [k, v] : dict)
      if (k == key) {
        v = std::move(value);
        return;
      }
    dict.emplace_back(key, std::move(value));
  }

  List iterate(const Value& v, int line) {
    switch (v.kind) {
      case Value::Kind::kList:
        return *v.list;
      case Value::Kind::kDict: {
        List keys;
        for (const auto& item : *v.dict) keys.push_back(Value::string(item.first));
        return keys;
      }
      case Value::Kind::kString: {
        if (v.s.size() > kMaxItems)
          fail(line, "iterating a string of more than " + std::to_string(kMaxItems) + " bytes");
        List chars;
        for (size_t k = 0; k < v.s.size();) {  // by UTF-8 character
          size_t n = 1;
          const unsigned char c = static_cast<unsigned char>(v.s[k]);
          if (c >= 0xF0)
            n = 4;
          else if (c >= 0xE0)
            n = 3;
          else if (c >= 0xC0)
            n = 2;
          chars.push_back(Value::string(v.s.substr(k, n)));
          k += n;
        }
        return chars;
      }
      case Value::Kind::kUndefined:
        return {};  // Jinja iterates an Undefined as empty
      default:
        fail(line, std::string("a ") + type_name(v) + " cannot be iterated over");
    }
  }

  void loop(const Stmt& stmt, int depth) {
    List items = iterate(eval(*stmt.expr, 0), stmt.line);
    if (stmt.filter) {
      List kept;
      for (const Value& item : items) {
        scopes_.emplace_back();
        bind(stmt, item);
        if (truthy(eval(*stmt.filter, 0))) kept.push_back(item);
        scopes_.pop_back();
      }
      items = std::move(kept);
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < n; ++k) {
      if (++iterations_ > kMaxIterations)
        fail(stmt.line, "the loops pass " + std::to_string(kMaxIterations) + " iterations");
      scopes_.emplace_back();
      bind(stmt, items[static_cast<size_t>(k)]);
      Dict info = {{"index", Value::integer(k + 1)},
                   {"index0", Value::integer(k)},
                   {"revindex", Value::integer(n - k)},
                   {"revindex0", Value::integer(n - k - 1)},
                   {"first", Value::boolean(k == 0)},
                   {"last", Value::boolean(k == n - 1)},
                   {"length", Value::integer(n)},
                   {"previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value()},
                   {"nextitem", k + 1 < n ? items[static_cast<size_t>(k + 1)] : Value()}};
      scopes_.back().emplace_back("loop", Value::of_dict(std::move(info)));
      bool stop = false;
      try {
        execute(stmt.body, depth + 1);
      } catch (const LoopSignal& signal) {
        stop = signal.is_break;
      }
      scopes_.pop_back();
      if (stop) break;
    }
    if (n == 0) execute(stmt.else_body, depth + 1);
  }

  void bind(const Stmt& stmt, const Value& item) {
    if (stmt.targets.size() == 1) {
      scopes_.back().emplace_back(stmt.targets[0], item);
      return;
    }
    if (!item.is(Value::Kind::kList) || item.list->size() != stmt.targets.size())
      fail(stmt.line, "cannot unpack a " + std::string(type_name(item)) + " into " +
                          std::to_string(stmt.targets.size()) + " loop variables");
    for (size_t k = 0; k < stmt.targets.size(); ++k)
      scopes_.back().emplace_back(stmt.targets[k], (*item.list)[k]);
  }

  Value lookup(const std::string& name) const {
    for (auto scope = scopes_.rbegin(); scope != scopes_.rend(); ++scope)
      for (auto item = scope->rbegin(); item != scope->rend(); ++item)
        if (item->first == name) return item->second;
    return Value();
  }

  static int64_t index_of(int64_t i, int64_t size) { return i < 0 ? i + size : i; }

  Value item(const Value& obj, const Value& key, int line) {
    if (obj.is(Value::Kind::kDict) || obj.is(Value::Kind::kNamespace)) {
      const Value* found = obj.find(key.is(Value::Kind::kString) ? key.s : to_str(key));
      return found ? *found : Value();
    }
    if ((obj.is(Value::Kind::kList) || obj.is(Value::Kind::kString)) && key.is(Value::Kind::kInt)) {
      const int64_t size = static_cast<int64_t>(obj.is(Value::Kind::kList) ? obj.list->size() : obj.s.size());
      const int64_t i = index_of(key.i, size);
      if (i < 0 || i >= size) return Value();  // Jinja: an Undefined
      return obj.is(Value::Kind::kList) ? (*obj.list)[static_cast<size_t>(i)]
                                        : Value::string(obj.s.substr(static_cast<size_t>(i), 1));
    }
    if (obj.is(Value::Kind::kUndefined)) fail(line, "an undefined value has no item " + repr(key));
    return Value();
  }

  Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step, int line) {
    const int64_t size = obj.is(Value::Kind::kList)     ? static_cast<int64_t>(obj.list->size())
                         : obj.is(Value::Kind::kString) ? static_cast<int64_t>(obj.s.size())
                                                        : -1;
    if (size < 0) fail(line, std::string("a ") + type_name(obj) + " cannot be sliced");
    const auto integer = [&](const Value& v, int64_t fallback) {
      if (v.is(Value::Kind::kUndefined) || v.is(Value::Kind::kNone)) return fallback;
      if (!v.is(Value::Kind::kInt)) fail(line, "slice indices must be integers");
      return v.i;
    };
    const int64_t s = integer(step, 1);
    if (s == 0) fail(line, "slice step cannot be zero");
    int64_t a = integer(start, s > 0 ? 0 : size - 1), b = integer(stop, s > 0 ? size : -size - 1);
    const auto clamp = [&](int64_t i) {
      if (i < 0) i += size;
      return s > 0 ? std::clamp<int64_t>(i, 0, size) : std::clamp<int64_t>(i, -1, size - 1);
    };
    a = clamp(a);
    b = (!stop.is(Value::Kind::kUndefined) && !stop.is(Value::Kind::kNone)) ? clamp(b) : (s > 0 ? size : -1);
    List list;
    std::string text;
    for (int64_t i = a; s > 0 ? i < b : i > b;) {
      if (obj.is(Value::Kind::kList))
        list.push_back((*obj.list)[static_cast<size_t>(i)]);
      else
        text += obj.s[static_cast<size_t>(i)];
      if (__builtin_add_overflow(i, s, &i)) break;
    }
    return obj.is(Value::Kind::kList) ? Value::of_list(std::move(list)) : Value::string(text);
  }

  Value binary(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is(Value::Kind::kString) && a.is(Value::Kind::kString)) {
        found = b.s.find(a.s) != std::string::npos;
      } else if (b.is(Value::Kind::kList)) {
        for (const Value& v : *b.list) found = found || equal(a, v);
      } else if (b.is(Value::Kind::kDict) || b.is(Value::Kind::kNamespace)) {
        found = a.is(Value::Kind::kString) && b.find(a.s);
      } else {
        fail(line, std::string("'in' needs a string, list or dict on its right, found a ") + type_name(b));
      }
      return Value::boolean(op == "in" ? found : !found);
    }
    if (op == "~") {
      std::string left = to_str(a), right = to_str(b);
      check_length(left.size() + right.size(), line);
      return Value::string(left + right);
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c = 0;
      if (a.numeric() && b.numeric()) {
        c = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
      } else if (a.is(Value::Kind::kString) && b.is(Value::Kind::kString)) {
        c = a.s.compare(b.s);
      } else {
        fail(line, std::string("'") + op + "' cannot compare a " + type_name(a) + " with a " + type_name(b));
      }
      return Value::boolean(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "+") {
      if (a.is(Value::Kind::kString) && b.is(Value::Kind::kString)) {
        check_length(a.s.size() + b.s.size(), line);
        return Value::string(a.s + b.s);
      }
      if (a.is(Value::Kind::kList) && b.is(Value::Kind::kList)) {
        if (a.list->size() + b.list->size() > kMaxItems)
          fail(line, "a list of more than " + std::to_string(kMaxItems) + " items");
        List list = *a.list;
        list.insert(list.end(), b.list->begin(), b.list->end());
        return Value::of_list(std::move(list));
      }
    }
    if (op == "*" && ((a.is(Value::Kind::kString) && b.is(Value::Kind::kInt)) ||
                      (a.is(Value::Kind::kInt) && b.is(Value::Kind::kString)))) {
      const std::string& s = a.is(Value::Kind::kString) ? a.s : b.s;
      const int64_t n = a.is(Value::Kind::kInt) ? a.i : b.i;
      if (n > 0 &&
          (static_cast<uint64_t>(n) > kMaxOutputBytes || s.size() * static_cast<size_t>(n) > kMaxOutputBytes))
        fail(line, "a string too long to make");
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += s;
      return Value::string(out);
    }
    if (!a.numeric() || !b.numeric())
      fail(line,
           std::string("unsupported operand types for ") + op + ": " + type_name(a) + " and " + type_name(b));
    const bool ints = !a.is(Value::Kind::kFloat) && !b.is(Value::Kind::kFloat);
    if (ints)
      return integer_op(op, a.is(Value::Kind::kBool) ? a.b : a.i, b.is(Value::Kind::kBool) ? b.b : b.i, line);
    const double x = a.number(), y = b.number();
    if (op == "+") return Value::real(x + y);
    if (op == "-") return Value::real(x - y);
    if (op == "*") return Value::real(x * y);
    if (op == "**") return Value::real(std::pow(x, y));
    if (y == 0) fail(line, "division by zero");
    if (op == "/") return Value::real(x / y);
    if (op == "//") return Value::real(std::floor(x / y));
    if (op == "%") return Value::real(x - y * std::floor(x / y));  // Python's sign follows the divisor
    fail(line, "unknown operator " + op);
  }

  // Integer arithmetic as Python's, in 64 bits: a result that does not fit is an error, not a wrap.
  Value integer_op(const std::string& op, int64_t x, int64_t y, int line) {
    int64_t r = 0;
    const auto overflow = [&] {
      fail(line, "integer overflow in " + std::to_string(x) + " " + op + " " + std::to_string(y));
    };
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) overflow();
      return Value::integer(r);
    }
    if (op == "**") {
      if (y < 0) return Value::real(std::pow(static_cast<double>(x), static_cast<double>(y)));
      if (x == 0 || x == 1) return Value::integer(y == 0 ? 1 : x);
      if (x == -1) return Value::integer(y % 2 == 0 ? 1 : -1);
      r = 1;
      for (int64_t k = 0; k < y; ++k)  // |x| >= 2 overflows within 63 steps
        if (__builtin_mul_overflow(r, x, &r)) overflow();
      return Value::integer(r);
    }
    if (y == 0) fail(line, "division by zero");
    if (op == "/") return Value::real(static_cast<double>(x) / static_cast<double>(y));
    if (x == std::numeric_limits<int64_t>::min() && y == -1) overflow();
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors; C++ truncates
      --q;
      m += y;
    }
    if (op == "//") return Value::integer(q);
    if (op == "%") return Value::integer(m);
    fail(line, "unknown operator " + op);
  }

  std::vector<Value> arguments(const Expr& e, int depth) {
    std::vector<Value> out;
    for (const auto& arg : e.args) out.push_back(eval(*arg, depth + 1));
    return out;
  }
  Dict keywords(const Expr& e, int depth) {
    Dict out;
    for (const auto& [key, arg] : e.kwargs) out.emplace_back(key, eval(*arg, depth + 1));
    return out;
  }
  static const Value* keyword(const Dict& kw, const char* name) {
    for (const auto& [k, v] : kw)
      if (k == name) return &v;
    return nullptr;
  }
  // Positional argument k, else the keyword `name`, else undefined.
  static Value arg(const std::vector<Value>& args, const Dict& kw, size_t k, const char* name) {
    if (k < args.size()) return args[k];
    const Value* v = keyword(kw, name);
    return v ? *v : Value();
  }

  std::string need_string(const Value& v, const char* what, int line) {
    if (!v.is(Value::Kind::kString))
      fail(line, std::string(what) + " needs a string, found a " + type_name(v));
    return v.s;
  }

  static std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
    const std::string set = chars.is(Value::Kind::kString) ? chars.s : std::string(" \t\n\r\f\v");
    size_t a = 0, b = s.size();
    if (left)
      while (a < b && set.find(s[a]) != std::string::npos) ++a;
    if (right)
      while (b > a && set.find(s[b - 1]) != std::string::npos) --b;
    return s.substr(a, b - a);
  }

  // Python's str and dict methods, called as obj.name(args).
  Value method(const Value& obj, const std::string& name, const std::vector<Value>& args, const Dict& kw,
               int line) {
    if (obj.is(Value::Kind::kString)) {
      const std::string& s = obj.s;
      if (name == "strip") return Value::string(strip(s, arg(args, kw, 0, "chars"), true, true));
      if (name == "lstrip") return Value::string(strip(s, arg(args, kw, 0, "chars"), true, false));
      if (name == "rstrip") return Value::string(strip(s, arg(args, kw, 0, "chars"), false, true));
      if (name == "upper" || name == "lower") {
        std::string out = s;
        for (char& c : out)
          c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c))
                                                : std::tolower(static_cast<unsigned char>(c)));
        return Value::string(out);
      }
      if (name == "startswith" || name == "endswith") {
        const std::string part = need_string(arg(args, kw, 0, "prefix"), name.c_str(), line);
        const bool match = part.size() <= s.size() &&
                           (name == "startswith" ? s.compare(0, part.size(), part) == 0
                                                 : s.compare(s.size() - part.size(), part.size(), part) == 0);
        return Value::boolean(match);
      }
      if (name == "replace") {
        const std::string from = need_string(arg(args, kw, 0, "old"), "replace", line);
        const std::string to = need_string(arg(args, kw, 1, "new"), "replace", line);
        return Value::string(replace_all(s, from, to, line));
      }
      if (name == "split") {
        const Value sep = arg(args, kw, 0, "sep");
        List parts;
        if (sep.is(Value::Kind::kString)) {
          if (sep.s.empty()) fail(line, "split: empty separator");
          size_t from = 0;
          while (true) {
            if (parts.size() >= kMaxItems)
              fail(line, "split: more than " + std::to_string(kMaxItems) + " parts");
            const size_t at = s.find(sep.s, from);
            parts.push_back(
                Value::string(s.substr(from, at == std::string::npos ? std::string::npos : at - from)));
            if (at == std::string::npos) break;
            from = at + sep.s.size();
          }
        } else {
          std::istringstream in(s);
          std::string word;
          while (in >> word) {
            if (parts.size() >= kMaxItems)
              fail(line, "split: more than " + std::to_string(kMaxItems) + " parts");
            parts.push_back(Value::string(word));
          }
        }
        return Value::of_list(std::move(parts));
      }
      if (name == "find") {
        const size_t at = s.find(need_string(arg(args, kw, 0, "sub"), "find", line));
        return Value::integer(at == std::string::npos ? -1 : static_cast<int64_t>(at));
      }
      if (name == "title" || name == "capitalize") return filter(name, obj, args, kw, line);
    }
    if (obj.is(Value::Kind::kDict) || obj.is(Value::Kind::kNamespace)) {
      if (name == "items" || name == "keys" || name == "values") {
        List out;
        for (const auto& [k, v] : *obj.dict) {
          if (name == "items")
            out.push_back(Value::of_list({Value::string(k), v}));
          else
            out.push_back(name == "keys" ? Value::string(k) : v);
        }
        return Value::of_list(std::move(out));
      }
      if (name == "get") {
        const Value* found = obj.find(need_string(arg(args, kw, 0, "key"), "get", line));
        return found ? *found : (args.size() > 1 ? args[1] : Value::none());
      }
    }
    fail(line, std::string("a ") + type_name(obj) + " has no method '" + name + "'");
  }

  std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int line) {
    if (from.empty()) fail(line, "replace: an empty string to replace");
    std::string out;
    size_t at = 0;
    while (true) {
      const size_t next = s.find(from, at);
      if (next == std::string::npos) break;
      out += s.substr(at, next - at) + to;
      at = next + from.size();
      if (out.size() > kMaxOutputBytes) fail(line, "replace: the result is too long");
    }
    return out + s.substr(at);
  }

  int64_t length(const Value& v, int line) {
    switch (v.kind) {
      case Value::Kind::kString: {  // characters, not bytes
        int64_t n = 0;
        for (unsigned char c : v.s) n += (c & 0xC0) != 0x80;
        return n;
      }
      case Value::Kind::kList:
        return static_cast<int64_t>(v.list->size());
      case Value::Kind::kDict:
      case Value::Kind::kNamespace:
        return static_cast<int64_t>(v.dict->size());
      case Value::Kind::kUndefined:
        return 0;
      default:
        fail(line, std::string("a ") + type_name(v) + " has no length");
    }
  }

  Value attribute_of(const Value& v, const std::string& attribute, int line) {
    Value current = v;
    size_t from = 0;
    while (true) {  // "a.b" walks into nested dicts
      const size_t dot = attribute.find('.', from);
      current = item(current, Value::string(attribute.substr(from, dot - from)), line);
      if (dot == std::string::npos) return current;
      from = dot + 1;
    }
  }

  Value filter(const std::string& name, const Value& v, const std::vector<Value>& args, const Dict& kw,
               int line) {
    if (name == "trim") return Value::string(strip(to_str(v), arg(args, kw, 0, "chars"), true, true));
    if (name == "length" || name == "count") return Value::integer(length(v, line));
    if (name == "string") return Value::string(to_str(v));
    if (name == "safe" || name == "e" || name == "escape") return v;  // autoescape is off, as transformers'
    if (name == "upper" || name == "lower") return method(Value::string(to_str(v)), name, {}, {}, line);
    if (name == "capitalize" || name == "title") {
      std::string out = to_str(v);
      bool start = true;
      for (char& c : out) {
        const unsigned char u = static_cast<unsigned char>(c);
        if (name == "capitalize") {
          c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
          start = false;
        } else {
          c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
          start = !std::isalnum(u);
        }
      }
      return Value::string(out);
    }
    if (name == "tojson") {
      const Value indent = arg(args, kw, 0, "indent");
      const Value sort = arg(args, kw, 1, "sort_keys");
      std::string out;
      to_json_text(v, indent.is(Value::Kind::kInt) ? static_cast<int>(indent.i) : -1, 0, truthy(sort), out);
      return Value::string(out);
    }
    if (name == "int") {
      if (v.is(Value::Kind::kInt) || v.is(Value::Kind::kBool))
        return Value::integer(v.is(Value::Kind::kInt) ? v.i : v.b);
      if (v.is(Value::Kind::kFloat)) {
        if (!(std::fabs(v.f) < 9.2e18)) fail(line, "int: " + float_repr(v.f) + " does not fit 64 bits");
        return Value::integer(static_cast<int64_t>(v.f));
      }
      try {
        return Value::integer(std::stoll(to_str(v)));
      } catch (const std::exception&) {
        return args.empty() ? Value::integer(0) : args[0];
      }
    }
    if (name == "float") {
      if (v.numeric()) return Value::real(v.number());
      try {
        return Value::real(std::stod(to_str(v)));
      } catch (const std::exception&) {
        return args.empty() ? Value::real(0) : args[0];
      }
    }
    if (name == "default" || name == "d") {
      const bool boolean = truthy(arg(args, kw, 1, "boolean"));
      const bool use_default = v.is(Value::Kind::kUndefined) || (boolean && !truthy(v));
      return use_default ? (args.empty() ? Value::string("") : args[0]) : v;
    }
    if (name == "join") {
      const Value sep = arg(args, kw, 0, "d");
      const Value attribute = arg(args, kw, 1, "attribute");
      std::string out;
      bool first = true;
      for (const Value& item : iterate(v, line)) {
        if (!first) out += sep.is(Value::Kind::kString) ? sep.s : "";
        first = false;
        out += to_str(attribute.is(Value::Kind::kString) ? attribute_of(item, attribute.s, line) : item);
        check_length(out.size(), line);
      }
      return Value::string(out);
    }
    if (name == "first" || name == "last") {
      const List items = iterate(v, line);
      if (items.empty()) return Value();
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::of_list(iterate(v, line));
    if (name == "reverse") {
      if (v.is(Value::Kind::kString)) return Value::string(std::string(v.s.rbegin(), v.s.rend()));
      List items = iterate(v, line);
      std::reverse(items.begin(), items.end());
      return Value::of_list(std::move(items));
    }
    if (name == "replace") {
      return Value::string(replace_all(to_str(v), need_string(arg(args, kw, 0, "old"), "replace", line),
                                       need_string(arg(args, kw, 1, "new"), "replace", line), line));
    }
    if (name == "items")
      return method(v.is(Value::Kind::kUndefined) ? Value::of_dict({}) : v, "items", {}, {}, line);
    if (name == "indent") {
      const Value width = arg(args, kw, 0, "width");
      const bool first = truthy(arg(args, kw, 1, "first"));
      const std::string pad(
          width.is(Value::Kind::kInt) ? static_cast<size_t>(std::max<int64_t>(0, width.i)) : 4, ' ');
      const std::string s = to_str(v);
      std::string out = first ? pad : "";
      for (size_t k = 0; k < s.size(); ++k) {
        out += s[k];
        if (s[k] == '\n' && k + 1 < s.size() && s[k + 1] != '\n') out += pad;
      }
      return Value::string(out);
    }
    if (name == "map") {
      const Value* attribute = keyword(kw, "attribute");
      List out;
      for (const Value& item : iterate(v, line)) {
        if (attribute) {
          out.push_back(attribute_of(item, need_string(*attribute, "map(attribute=...)", line), line));
        } else if (!args.empty()) {
          out.push_back(filter(need_string(args[0], "map", line), item,
                               std::vector<Value>(args.begin() + 1, args.end()), {}, line));
        } else {
          out.push_back(item);
        }
      }
      return Value::of_list(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool by_attribute = name == "selectattr" || name == "rejectattr";
      const bool keep_matching = name == "selectattr" || name == "select";
      const size_t test_at = by_attribute ? 1 : 0;
      List out;
      for (const Value& item : iterate(v, line)) {
        const Value subject =
            by_attribute
                ? attribute_of(item, need_string(arg(args, kw, 0, "attribute"), name.c_str(), line), line)
                : item;
        bool match = truthy(subject);
        if (args.size() > test_at) {
          match = test(need_string(args[test_at], name.c_str(), line), subject,
                       std::vector<Value>(args.begin() + static_cast<long>(test_at) + 1, args.end()), line);
        }
        if (match == keep_matching) out.push_back(item);
      }
      return Value::of_list(std::move(out));
    }
    fail(line, "the filter '" + name + "' is not implemented");
  }

  bool test(const std::string& name, const Value& v, const std::vector<Value>& args, int line) {
    if (name == "defined") return !v.is(Value::Kind::kUndefined);
    if (name == "undefined") return v.is(Value::Kind::kUndefined);
    if (name == "none") return v.is(Value::Kind::kNone);
    if (name == "string") return v.is(Value::Kind::kString);
    if (name == "number") return v.is(Value::Kind::kInt) || v.is(Value::Kind::kFloat);
    if (name == "integer") return v.is(Value::Kind::kInt);
    if (name == "float") return v.is(Value::Kind::kFloat);
    if (name == "boolean") return v.is(Value::Kind::kBool);
    if (name == "true") return v.is(Value::Kind::kBool) && v.b;
    if (name == "false") return v.is(Value::Kind::kBool) && !v.b;
    if (name == "mapping") return v.is(Value::Kind::kDict) || v.is(Value::Kind::kNamespace);
    if (name == "sequence" || name == "iterable")
      return v.is(Value::Kind::kList) || v.is(Value::Kind::kString) || v.is(Value::Kind::kDict);
    if (name == "callable") return false;
    if (name == "odd" || name == "even") {
      if (!v.is(Value::Kind::kInt)) fail(line, "the test '" + name + "' needs an integer");
      return (v.i % 2 != 0) == (name == "odd");
    }
    if (name == "divisibleby") {
      if (!v.is(Value::Kind::kInt) || args.empty() || !args[0].is(Value::Kind::kInt) || args[0].i == 0)
        fail(line, "the test 'divisibleby' needs integers");
      return v.i % args[0].i == 0;
    }
    if (name == "lower" || name == "upper") {
      const std::string s = to_str(v);
      return std::all_of(s.begin(), s.end(), [&](char c) {
        return name == "lower" ? !std::isupper(static_cast<unsigned char>(c))
                               : !std::islower(static_cast<unsigned char>(c));
      });
    }
    if (args.empty() && (name == "eq" || name == "equalto" || name == "==" || name == "ne" || name == "!=" ||
                         name == "in" || name == "sameas"))
      fail(line, "the test '" + name + "' needs a value to compare with");
    if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return equal(v, args[0]);
    if (name == "ne" || name == "!=") return !equal(v, args[0]);
    if (name == "in") return truthy(binary("in", v, args[0], line));
    fail(line, "the test '" + name + "' is not implemented");
  }

  Value call(const Expr& e, int depth) {
    const std::vector<Value> args = arguments(e, depth);
    const Dict kw = keywords(e, depth);
    if (e.a->kind == Expr::Kind::kAttr)  // obj.method(...)
      return method(eval(*e.a->a, depth + 1), e.a->name, args, kw, e.line);
    if (e.a->kind != Expr::Kind::kName) fail(e.line, "only functions and methods can be called");
    const std::string& name = e.a->name;
    if (name == "raise_exception") {
      throw TemplateError("the template raised: " + (args.empty() ? std::string() : to_str(args[0])), e.line);
    }
    if (name == "namespace" || name == "dict") {
      Dict members = kw;
      return Value::of_dict(std::move(members),
                            name == "namespace" ? Value::Kind::kNamespace : Value::Kind::kDict);
    }
    if (name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      for (const Value& a : args)
        if (!a.is(Value::Kind::kInt)) fail(e.line, "range() needs integers");
      if (args.size() == 1) {
        stop = args[0].i;
      } else if (args.size() >= 2) {
        start = args[0].i;
        stop = args[1].i;
        if (args.size() > 2) step = args[2].i;
      }
      if (step == 0) fail(e.line, "range() step cannot be zero");
      List out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
        if (out.size() >= 1'000'000) fail(e.line, "range() of more than 1,000,000 numbers");
        out.push_back(Value::integer(k));
        if (__builtin_add_overflow(k, step, &k)) break;
      }
      return Value::of_list(std::move(out));
    }
    if (name == "strftime_now") {  // transformers' global: the local time formatted with strftime
      const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const std::string format = args.empty() ? "" : need_string(args[0], "strftime_now", e.line);
      const size_t n = std::strftime(buffer, sizeof(buffer), format.c_str(), &local);
      return Value::string(std::string(buffer, n));
    }
    const Value callee = lookup(name);
    fail(e.line, "'" + name + "' is " +
                     (callee.is(Value::Kind::kUndefined) ? "undefined" : "not a function") +
                     " (the functions are raise_exception, namespace, dict, range, strftime_now)");
  }

  Value eval(const Expr& e, int depth) {
    if (depth > kMaxDepth) fail(e.line, "an expression nested too deeply");
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kAttr: {
        const Value obj = eval(*e.a, depth + 1);
        if (obj.is(Value::Kind::kUndefined))
          fail(e.line, "an undefined value has no attribute '" + e.name + "'");
        return item(obj, Value::string(e.name), e.line);
      }
      case Expr::Kind::kItem:
        return item(eval(*e.a, depth + 1), eval(*e.b, depth + 1), e.line);
      case Expr::Kind::kSlice: {
        const auto part = [&](size_t k) { return e.args[k] ? eval(*e.args[k], depth + 1) : Value(); };
        return slice(eval(*e.a, depth + 1), part(0), part(1), part(2), e.line);
      }
      case Expr::Kind::kCall:
        return call(e, depth);
      case Expr::Kind::kFilter:
        return filter(e.name, eval(*e.a, depth + 1), arguments(e, depth), keywords(e, depth), e.line);
      case Expr::Kind::kTest: {
        const bool result = test(e.name, eval(*e.a, depth + 1), arguments(e, depth), e.line);
        return Value::boolean(e.negated ? !result : result);
      }
      case Expr::Kind::kUnary: {
        const Value v = eval(*e.a, depth + 1);
        if (!v.numeric())
          fail(e.line, std::string("bad operand type for unary ") + e.name + ": " + type_name(v));
        if (e.name == "+") return v;
        if (v.is(Value::Kind::kFloat)) return Value::real(-v.f);
        return integer_op("-", 0, v.is(Value::Kind::kBool) ? v.b : v.i, e.line);
      }
      case Expr::Kind::kBinary:
        return binary(e.name, eval(*e.a, depth + 1), eval(*e.b, depth + 1), e.line);
      case Expr::Kind::kAnd: {
        Value left = eval(*e.a, depth + 1);
        return truthy(left) ? eval(*e.b, depth + 1) : left;
      }
      case Expr::Kind::kOr: {
        Value left = eval(*e.a, depth + 1);
        return truthy(left) ? left : eval(*e.b, depth + 1);
      }
      case Expr::Kind::kNot:
        return Value::boolean(!truthy(eval(*e.a, depth + 1)));
      case Expr::Kind::kCondition:
        return truthy(eval(*e.a, depth + 1)) ? eval(*e.b, depth + 1)
                                             : (e.c ? eval(*e.c, depth + 1) : Value());
      case Expr::Kind::kList:
        return Value::of_list(arguments(e, depth));
      case Expr::Kind::kDict: {
        Dict dict;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k], depth + 1);
          assign(dict, key.is(Value::Kind::kString) ? key.s : to_str(key), eval(*e.args[k + 1], depth + 1));
        }
        return Value::of_dict(std::move(dict));
      }
    }
    fail(e.line, "unknown expression");
  }

  std::string& out_;
  std::vector<Dict> scopes_;
  int64_t iterations_ = 0;
};

}  // namespace

struct ChatTemplate::Program {
  Body body;
};

ChatTemplate::ChatTemplate(const std::string& source, const std::string& where) : where_(where) {
  try {
    auto program = std::make_shared<Program>();
    program->body = Parser(lex(source)).parse();
    program_ = std::move(program);
  } catch (const TemplateError& e) {
    throw FormatError(where, "chat template, line " + std::to_string(e.line) + ": " + e.message);
  }
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(const ChatTemplate&) = default;
ChatTemplate& ChatTemplate::operator=(const ChatTemplate&) = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  if (!context.is_object()) throw Error(where_ + ": a chat template renders with an object of variables");
  Dict globals;
  for (const auto& [key, value] : context.items()) globals.emplace_back(key, from_json(value));
  std::string out;
  try {
    Renderer(out).run(program_->body, std::move(globals));
  } catch (const TemplateError& e) {
    throw Error(where_ + ": chat template" +
                (e.line > 0 ? ", line " + std::to_string(e.line) : std::string()) + ": " + e.message);
  } catch (const LoopSignal&) {
    throw Error(where_ + ": chat template: {% break %} or {% continue %} outside a loop");
  }
  return out;
}

std::string render_chat(const ChatTemplate& chat_template, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt,
                        const std::map<std::string, std::string>& special_tokens) {
  ojson context = ojson::object();
  ojson list = ojson::array();
  for (const ChatMessage& m : messages) list.push_back(ojson{{"role", m.role}, {"content", m.content}});
  context["messages"] = std::move(list);
  context["add_generation_prompt"] = add_generation_prompt;
  for (const auto& [name, token] : special_tokens) context[name] = token;
  return chat_template.render(context);
}

std::vector<std::pair<size_t, size_t>> assistant_spans(
    const ChatTemplate& chat_template, const std::vector<ChatMessage>& messages,
    const std::map<std::string, std::string>& special_tokens) {
  const std::string full = render_chat(chat_template, messages, false, special_tokens);
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t k = 0; k < messages.size(); ++k) {
    if (messages[k].role != "assistant") continue;
    const std::vector<ChatMessage> before(messages.begin(), messages.begin() + static_cast<long>(k));
    const std::vector<ChatMessage> with(messages.begin(), messages.begin() + static_cast<long>(k) + 1);
    const std::string prompt = render_chat(chat_template, before, true, special_tokens);
    const std::string through = render_chat(chat_template, with, false, special_tokens);
    if (full.compare(0, prompt.size(), prompt) != 0 || full.compare(0, through.size(), through) != 0 ||
        through.size() < prompt.size() || through.compare(0, prompt.size(), prompt) != 0)
      throw Error(chat_template.where() +
                  ": the chat template does not render the conversation up to message " +
                  std::to_string(k + 1) +
                  " (an assistant turn) as the start of the whole conversation, so the assistant's tokens "
                  "cannot be told apart from the prompt");
    spans.emplace_back(prompt.size(), through.size());
  }
  return spans;
}

std::map<std::string, std::string> special_token_names(const Tokenizer& tokenizer) {
  std::map<std::string, std::string> out;
  const std::pair<const char*, std::optional<int64_t>> roles[] = {
      {"bos_token", tokenizer.bos_id()},  {"eos_token", tokenizer.eos_id()},
      {"unk_token", tokenizer.unk_id()},  {"pad_token", tokenizer.pad_id()},
      {"cls_token", tokenizer.cls_id()},  {"sep_token", tokenizer.sep_id()},
      {"mask_token", tokenizer.mask_id()}};
  for (const auto& [name, id] : roles)
    if (id) out[name] = tokenizer.id_to_token(*id);
  return out;
}

std::optional<ChatTemplate> read_chat_template(const std::string& tokenizer_config_path) {
  const nlohmann::json doc = read_json_file(tokenizer_config_path);
  if (!doc.is_object() || !doc.contains("chat_template") || doc.at("chat_template").is_null())
    return std::nullopt;
  const nlohmann::json& value = doc.at("chat_template");
  if (value.is_string()) return ChatTemplate(value.get<std::string>(), tokenizer_config_path);
  if (value.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    for (const auto& entry : value)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry.at("template").is_string())
        return ChatTemplate(entry.at("template").get<std::string>(), tokenizer_config_path);
    throw FormatError(tokenizer_config_path, "chat_template is a list without an entry named \"default\"");
  }
  throw FormatError(
      tokenizer_config_path,
      "chat_template must be a string or a list of named templates, found " + std::string(value.type_name()));
}

}  // namespace graft
