// Reading Hugging Face `tokenizers` files: tokenizer.json (the serialisation of tokenizers' Tokenizer:
// added_tokens, normalizer, pre_tokenizer, model, post_processor, decoder), vocab.json / encoder.json,
// tokenizer_config.json (transformers' tokenizer settings), and load_tokenizer()'s choice among the files
// of a model directory, in the order transformers' AutoTokenizer prefers them. graft reads the
// WordPiece + BertNormalizer + BertPreTokenizer and BPE + ByteLevel combinations; anything else is
// refused with the field that differs rather than tokenised differently.
#include <array>
#include <filesystem>

#include "graft/json_file.h"
#include "text/tokenizer_core.h"
#include "text/unicode.h"

namespace graft {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json parse_json_file(const std::string& path) {
  return parse_json(read_tokenizer_file(path), path);
}

// Typed access to tokenizer.json fields; errors name the file and the dotted field.
class Fields {
 public:
  explicit Fields(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw FormatError(file_, "field '" + field + "' " + what);
  }
  const json& require(const json& object, const std::string& parent, const char* name) const {
    const std::string field = join(parent, name);
    if (!object.is_object()) fail(parent, "is " + describe(object) + ", expected an object");
    const auto it = object.find(name);
    if (it == object.end()) fail(field, "is missing");
    return *it;
  }
  const json* optional(const json& object, const char* name) const {
    if (!object.is_object()) return nullptr;
    const auto it = object.find(name);
    return it == object.end() || it->is_null() ? nullptr : &*it;
  }
  std::string string(const json& object, const std::string& parent, const char* name) const {
    const json& v = require(object, parent, name);
    if (!v.is_string()) fail(join(parent, name), "is " + describe(v) + ", expected a string");
    return v.get<std::string>();
  }
  std::string string_or(const json& object, const std::string& parent, const char* name,
                        const std::string& fallback) const {
    return optional(object, name) ? string(object, parent, name) : fallback;
  }
  bool boolean_or(const json& object, const std::string& parent, const char* name, bool fallback) const {
    const json* v = optional(object, name);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(join(parent, name), "is " + describe(*v) + ", expected true or false");
    return v->get<bool>();
  }
  int64_t integer(const json& v, const std::string& field) const {
    if (!v.is_number_integer()) fail(field, "is " + describe(v) + ", expected an integer");
    return v.get<int64_t>();
  }
  static std::string join(const std::string& parent, const std::string& name) {
    return parent.empty() ? name : parent + "." + name;
  }
  static std::string describe(const json& v) {
    return std::string(v.type_name()) + " " + json_excerpt(v, 57);
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

std::vector<AddedToken> read_added_tokens(const json& doc, const Fields& f) {
  std::vector<AddedToken> tokens;
  const json* list = f.optional(doc, "added_tokens");
  if (!list) return tokens;
  if (!list->is_array()) f.fail("added_tokens", "is " + Fields::describe(*list) + ", expected an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const json& entry = (*list)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    AddedToken token;
    token.id = f.integer(f.require(entry, where, "id"), where + ".id");
    token.content = f.string(entry, where, "content");
    token.special = f.boolean_or(entry, where, "special", false);
    token.lstrip = f.boolean_or(entry, where, "lstrip", false);
    token.rstrip = f.boolean_or(entry, where, "rstrip", false);
    token.single_word = f.boolean_or(entry, where, "single_word", false);
    if (token.content.empty()) f.fail(where + ".content", "is empty");
    if (token.id < 0 || token.id >= kMaxVocabSize) {
      f.fail(where + ".id",
             "is " + std::to_string(token.id) + ", expected 0 <= id < " + std::to_string(kMaxVocabSize));
    }
    tokens.push_back(std::move(token));
  }
  return tokens;
}

// [token, id] as BertProcessing and RobertaProcessing write their cls and sep.
TemplatePiece special_pair(const json& processor, const char* name, const Fields& f, int64_t type_id) {
  const json& v = f.require(processor, "post_processor", name);
  const std::string field = std::string("post_processor.") + name;
  if (!v.is_array() || v.size() != 2 || !v[0].is_string()) {
    f.fail(field, "is " + Fields::describe(v) + ", expected [token, id]");
  }
  return TemplatePiece{-1, {f.integer(v[1], field + "[1]")}, {v[0].get<std::string>()}, type_id};
}

void read_template(const json& processor, const std::string& parent, const Fields& f, Tokenizer::Core& core) {
  const std::string type = f.string(processor, parent, "type");
  if (type == "ByteLevel") return;  // offsets trimming only; adds nothing
  if (type == "BertProcessing") {
    const TemplatePiece cls = special_pair(processor, "cls", f, 0),
                        sep = special_pair(processor, "sep", f, 0);
    TemplatePiece sep_b = sep;
    sep_b.type_id = 1;
    core.single_template = {cls, TemplatePiece{0, {}, {}, 0}, sep};
    core.pair_template = {cls, TemplatePiece{0, {}, {}, 0}, sep, TemplatePiece{1, {}, {}, 1}, sep_b};
    return;
  }
  if (type == "RobertaProcessing") {  // <s> $A </s> </s> $B </s>, every type id 0
    const TemplatePiece cls = special_pair(processor, "cls", f, 0),
                        sep = special_pair(processor, "sep", f, 0);
    core.single_template = {cls, TemplatePiece{0, {}, {}, 0}, sep};
    core.pair_template = {cls, TemplatePiece{0, {}, {}, 0}, sep, sep, TemplatePiece{1, {}, {}, 0}, sep};
    return;
  }
  if (type == "Sequence") {
    const json& list = f.require(processor, parent, "processors");
    if (!list.is_array())
      f.fail(parent + ".processors", "is " + Fields::describe(list) + ", expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      read_template(list[i], parent + ".processors[" + std::to_string(i) + "]", f, core);
    }
    return;
  }
  if (type != "TemplateProcessing") {
    f.fail(parent + ".type", "is '" + type +
                                 "'; graft reads TemplateProcessing, BertProcessing, RobertaProcessing, "
                                 "ByteLevel and Sequence post-processors");
  }
  // special_tokens: name -> {ids, tokens}
  const json& specials = f.require(processor, parent, "special_tokens");
  const auto read_pieces = [&](const char* which) {
    std::vector<TemplatePiece> pieces;
    const std::string field = parent + "." + which;
    const json& list = f.require(processor, parent, which);
    if (!list.is_array()) f.fail(field, "is " + Fields::describe(list) + ", expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = field + "[" + std::to_string(i) + "]";
      const json& item = list[i];
      if (const json* seq = f.optional(item, "Sequence")) {
        const std::string id = f.string(*seq, where + ".Sequence", "id");
        if (id != "A" && id != "B") f.fail(where + ".Sequence.id", "is '" + id + "', expected 'A' or 'B'");
        pieces.push_back(
            {id == "A" ? 0 : 1, {}, {}, f.integer(f.require(*seq, where, "type_id"), where + ".type_id")});
      } else if (const json* special = f.optional(item, "SpecialToken")) {
        const std::string name = f.string(*special, where + ".SpecialToken", "id");
        const std::string sfield = parent + ".special_tokens." + name;
        const json& entry = f.require(specials, parent + ".special_tokens", name.c_str());
        const json& ids = f.require(entry, sfield, "ids");
        const json& tokens = f.require(entry, sfield, "tokens");
        if (!ids.is_array() || !tokens.is_array() || ids.size() != tokens.size()) {
          f.fail(sfield, "needs 'ids' and 'tokens' arrays of equal length");
        }
        TemplatePiece piece{-1, {}, {}, f.integer(f.require(*special, where, "type_id"), where + ".type_id")};
        for (size_t k = 0; k < ids.size(); ++k) {
          piece.ids.push_back(f.integer(ids[k], sfield + ".ids"));
          if (!tokens[k].is_string()) f.fail(sfield + ".tokens", "holds a non-string");
          piece.tokens.push_back(tokens[k].get<std::string>());
        }
        pieces.push_back(std::move(piece));
      } else {
        f.fail(where,
               "is " + Fields::describe(item) + ", expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    return pieces;
  };
  core.single_template = read_pieces("single");
  core.pair_template = read_pieces("pair");
}

std::unique_ptr<Tokenizer::Core> core_from(const json& doc, const json& model, const Fields& f) {
  auto core = std::make_unique<Tokenizer::Core>();
  core->source = f.file();
  core->set_vocab(vocab_from_json(f.require(model, "model", "vocab"), f.file(), "model.vocab"));
  for (const auto& token : read_added_tokens(doc, f)) core->add_token(token);
  if (const json* processor = f.optional(doc, "post_processor"))
    read_template(*processor, "post_processor", f, *core);
  for (const auto* pieces : {&core->single_template, &core->pair_template}) {
    for (const auto& piece : *pieces) {
      for (int64_t id : piece.ids) {
        if (id < 0 || static_cast<size_t>(id) >= core->vocab.size()) {
          f.fail("post_processor", "uses id " + std::to_string(id) + ", which is outside the vocabulary");
        }
      }
    }
  }
  return core;
}

std::unique_ptr<WordPieceTokenizer> wordpiece_from_json(const json& doc, const json& model, const Fields& f,
                                                        const TokenizerConfig* config) {
  WordPieceTokenizer::Options options;
  options.unk_token = f.string_or(model, "model", "unk_token", options.unk_token);
  options.continuing_subword_prefix =
      f.string_or(model, "model", "continuing_subword_prefix", options.continuing_subword_prefix);
  if (const json* max_chars = f.optional(model, "max_input_chars_per_word")) {
    const int64_t n = f.integer(*max_chars, "model.max_input_chars_per_word");
    if (n < 0) f.fail("model.max_input_chars_per_word", "is negative");
    options.max_input_chars_per_word = static_cast<size_t>(n);
  }
  const json* normalizer = f.optional(doc, "normalizer");
  if (!normalizer) {
    options.lowercase = options.clean_text = options.handle_chinese_chars = false;
    options.strip_accents = false;
  } else {
    const std::string type = f.string(*normalizer, "normalizer", "type");
    if (type != "BertNormalizer") {
      f.fail("normalizer.type", "is '" + type + "'; graft's WordPiece reads BertNormalizer (or null)");
    }
    options.clean_text = f.boolean_or(*normalizer, "normalizer", "clean_text", true);
    options.handle_chinese_chars = f.boolean_or(*normalizer, "normalizer", "handle_chinese_chars", true);
    options.lowercase = f.boolean_or(*normalizer, "normalizer", "lowercase", true);
    if (f.optional(*normalizer, "strip_accents")) {
      options.strip_accents = f.boolean_or(*normalizer, "normalizer", "strip_accents", false);
    }
  }
  const json& pre = f.require(doc, "", "pre_tokenizer");
  const std::string pre_type = pre.is_null() ? "null" : f.string(pre, "pre_tokenizer", "type");
  if (pre_type != "BertPreTokenizer") {
    f.fail("pre_tokenizer.type", "is '" + pre_type + "'; graft's WordPiece reads BertPreTokenizer");
  }
  if (const json* decoder = f.optional(doc, "decoder")) {
    options.cleanup_decoded_spaces = f.boolean_or(*decoder, "decoder", "cleanup", true);
  }
  auto core = core_from(doc, model, f);
  if (config) {
    config->apply(options);
    config->apply(*core);
  }
  return make_wordpiece(std::move(core), options);
}

// model.merges in rank order: "a b" strings (older files) or ["a", "b"] pairs.
std::vector<MergeRule> read_merges(const json& model, const Fields& f) {
  const json& list = f.require(model, "model", "merges");
  if (!list.is_array()) f.fail("model.merges", "is " + Fields::describe(list) + ", expected an array");
  if (list.size() > static_cast<size_t>(kMaxVocabSize)) {
    f.fail("model.merges",
           "has " + std::to_string(list.size()) + " entries, over " + std::to_string(kMaxVocabSize));
  }
  std::vector<MergeRule> merges;
  merges.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const json& item = list[i];
    const std::string where = "model.merges[" + std::to_string(i) + "]";
    if (item.is_string()) {  // "a b"
      const std::string text = item.get<std::string>();
      const size_t space = text.find(' ');
      if (space == 0 || space == std::string::npos || space + 1 == text.size() ||
          text.find(' ', space + 1) != std::string::npos) {
        f.fail(where, "is '" + text + "', expected two tokens separated by one space");
      }
      merges.push_back({text.substr(0, space), text.substr(space + 1), i});
    } else if (item.is_array() && item.size() == 2 && item[0].is_string() &&
               item[1].is_string()) {  // ["a", "b"]
      merges.push_back({item[0].get<std::string>(), item[1].get<std::string>(), i});
    } else {
      f.fail(where, "is " + Fields::describe(item) + ", expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  return merges;
}

std::unique_ptr<ByteBpeTokenizer> bpe_from_json(const json& doc, const json& model, const Fields& f,
                                                const TokenizerConfig* config) {
  if (const json* dropout = f.optional(model, "dropout")) {
    f.fail("model.dropout",
           "is " + Fields::describe(*dropout) + "; graft's BPE has no dropout (expected null)");
  }
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!f.string_or(model, "model", name, "").empty()) {
      f.fail(std::string("model.") + name,
             "is '" + f.string(model, "model", name) + "'; graft's byte-level BPE expects it empty or null");
    }
  }
  ByteBpeTokenizer::Options options;
  const json* pre = &f.require(doc, "", "pre_tokenizer");
  std::string pre_type = pre->is_null() ? "null" : f.string(*pre, "pre_tokenizer", "type");
  std::string pre_where = "pre_tokenizer";
  if (pre_type == "Sequence") {
    // Sequence [Digits, ByteLevel] (SmolLM2, StarCoder): the one sequence graft reads.
    const json& steps = f.require(*pre, "pre_tokenizer", "pretokenizers");
    const auto type_of = [&](size_t i) {
      return steps[i].is_object() && steps[i].contains("type") && steps[i]["type"].is_string()
                 ? steps[i]["type"].get<std::string>()
                 : std::string("?");
    };
    if (!steps.is_array() || steps.size() != 2 || type_of(0) != "Digits" || type_of(1) != "ByteLevel") {
      f.fail("pre_tokenizer.pretokenizers",
             "is " + Fields::describe(steps) + "; graft's BPE reads a Sequence of Digits then ByteLevel");
    }
    options.split_digits = true;
    options.individual_digits =
        f.boolean_or(steps[0], "pre_tokenizer.pretokenizers[0]", "individual_digits", false);
    pre = &steps[1];
    pre_type = "ByteLevel";
    pre_where = "pre_tokenizer.pretokenizers[1]";
  }
  if (pre_type != "ByteLevel") {
    f.fail("pre_tokenizer.type",
           "is '" + pre_type +
               "'; graft's BPE reads ByteLevel (GPT-2, RoBERTa), alone or after Digits (SmolLM2)");
  }
  options.add_prefix_space = f.boolean_or(*pre, pre_where, "add_prefix_space", false);
  options.use_regex = f.boolean_or(*pre, pre_where, "use_regex", true);
  if (const json* normalizer = f.optional(doc, "normalizer")) {
    f.fail("normalizer", "is " + Fields::describe(*normalizer) + "; graft's byte-level BPE expects null");
  }

  const std::vector<MergeRule> merges = read_merges(model, f);
  auto core = core_from(doc, model, f);
  if (config) config->apply(*core);
  return make_byte_bpe(std::move(core), merges, f.file(), "model.merges entry", options);
}

// Llama 2's shape: normalizer Sequence [Prepend("\u2581"), Replace(" ", "\u2581")] and no pre-tokenizer.
bool is_sentencepiece_bpe(const json& doc, const Fields& f) {
  // Reads only what is there and of the right type: any other shape is not this one (and is refused by the
  // byte-level reader, which names the field).
  const auto text = [](const json& object, const char* key) -> std::string {
    if (!object.is_object() || !object.contains(key) || !object.at(key).is_string()) return "";
    return object.at(key).get<std::string>();
  };
  const json* normalizer = f.optional(doc, "normalizer");
  if (!normalizer || f.optional(doc, "pre_tokenizer") || text(*normalizer, "type") != "Sequence")
    return false;
  if (!normalizer->contains("normalizers")) return false;
  const json& steps = normalizer->at("normalizers");
  return steps.is_array() && steps.size() == 2 && text(steps[0], "type") == "Prepend" &&
         text(steps[0], "prepend") == "\u2581" && text(steps[1], "type") == "Replace" &&
         text(steps[1], "content") == "\u2581" && steps[1].contains("pattern") &&
         text(steps[1]["pattern"], "String") == " ";
}

std::unique_ptr<SentencePieceBpeTokenizer> sentencepiece_bpe_from_json(const json& doc, const json& model,
                                                                       const Fields& f,
                                                                       const TokenizerConfig* config) {
  if (const json* dropout = f.optional(model, "dropout"))
    f.fail("model.dropout", "is " + Fields::describe(*dropout) + "; graft's BPE expects null (no dropout)");
  SentencePieceBpeTokenizer::Options options;
  options.byte_fallback = f.boolean_or(model, "model", "byte_fallback", false);
  options.fuse_unk = f.boolean_or(model, "model", "fuse_unk", false);
  options.unk_token = f.string_or(model, "model", "unk_token", options.unk_token);
  if (f.boolean_or(model, "model", "ignore_merges", false))
    f.fail("model.ignore_merges", "is true; graft's BPE applies every merge");
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!f.string_or(model, "model", name, "").empty())
      f.fail(std::string("model.") + name,
             "is '" + f.string(model, "model", name) + "'; expected empty or null");
  }
  const std::vector<MergeRule> merges = read_merges(model, f);
  auto core = core_from(doc, model, f);
  if (config) config->apply(*core);
  return make_sentencepiece_bpe(std::move(core), merges, f.file(), options);
}

// transformers writes special tokens as "[PAD]" or as {"content": "[PAD]", ...}.
std::optional<std::string> token_name(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::string> vocab_from_json(const json& object, const std::string& source,
                                         const std::string& field) {
  const std::string what = field.empty() ? "the file" : "field '" + field + "'";
  if (!object.is_object()) {
    throw FormatError(source, what + " is " + Fields::describe(object) + ", expected an object token -> id");
  }
  if (object.empty()) throw FormatError(source, what + " is an empty vocabulary");
  if (object.size() > static_cast<size_t>(kMaxVocabSize)) {
    throw FormatError(source, what + " has " + std::to_string(object.size()) +
                                  " entries, over the limit of " + std::to_string(kMaxVocabSize));
  }
  int64_t max_id = -1;
  for (const auto& [token, id] : object.items()) {
    if (!id.is_number_integer()) {
      throw FormatError(
          source, what + ": entry \"" + token + "\" is " + Fields::describe(id) + ", expected an integer id");
    }
    const int64_t value = id.get<int64_t>();
    if (value < 0 || value >= kMaxVocabSize) {
      throw FormatError(source, what + ": entry \"" + token + "\" has id " + std::to_string(value) +
                                    ", expected 0 <= id < " + std::to_string(kMaxVocabSize));
    }
    max_id = std::max(max_id, value);
  }
  if (max_id >= static_cast<int64_t>(object.size()) + kMaxVocabIdGap) {
    throw FormatError(source,
                      what + " has " + std::to_string(object.size()) + " entries but ids up to " +
                          std::to_string(max_id) + ", more than " + std::to_string(kMaxVocabIdGap) +
                          " past the last entry",
                      "ids must number the tokens 0, 1, 2, ... (a gap this large is a damaged file)");
  }
  std::vector<std::string> vocab(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : object.items()) {
    if (token.empty()) throw FormatError(source, what + " has an empty token (id " + json_excerpt(id) + ")");
    std::string& slot = vocab[id.get<size_t>()];
    if (!slot.empty()) {
      throw FormatError(source, what + ": id " + json_excerpt(id) + " is used by both \"" + slot +
                                    "\" and \"" + token + "\"");
    }
    slot = token;
  }
  return vocab;
}

std::vector<std::string> vocab_from_json_file(const std::string& path) {
  return vocab_from_json(parse_json_file(path), path, "");
}

TokenizerConfig read_tokenizer_config(const std::string& path) {
  const json doc = parse_json_file(path);
  if (!doc.is_object()) throw FormatError(path, "is " + Fields::describe(doc) + ", expected a JSON object");
  TokenizerConfig config;
  const auto flag = [&](const char* name, std::optional<bool>& slot) {
    const auto it = doc.find(name);
    if (it == doc.end() || it->is_null()) return;
    if (!it->is_boolean()) {
      throw FormatError(
          path, std::string("field '") + name + "' is " + Fields::describe(*it) + ", expected true or false");
    }
    slot = it->get<bool>();
  };
  flag("do_lower_case", config.do_lower_case);
  flag("strip_accents", config.strip_accents);
  flag("tokenize_chinese_chars", config.tokenize_chinese_chars);
  for (const char* role : {"pad", "unk", "cls", "sep", "mask", "bos", "eos"}) {
    const auto it = doc.find(std::string(role) + "_token");
    if (it == doc.end()) continue;
    if (auto name = token_name(*it)) config.special_tokens.emplace_back(role, *name);
  }
  return config;
}

void TokenizerConfig::apply(WordPieceTokenizer::Options& options) const {
  if (do_lower_case) options.lowercase = *do_lower_case;
  if (strip_accents) options.strip_accents = *strip_accents;
  if (tokenize_chinese_chars) options.handle_chinese_chars = *tokenize_chinese_chars;
}

void TokenizerConfig::apply(Tokenizer::Core& core) const {
  for (const auto& [role, name] : special_tokens) {
    const auto id = core.find(name);
    if (!id) continue;
    if (role == "pad") core.pad = id;
    if (role == "unk") core.unk = id;
    if (role == "cls") core.cls = id;
    if (role == "sep") core.sep = id;
    if (role == "mask") core.mask = id;
    if (role == "bos") core.bos = id;
    if (role == "eos") core.eos = id;
  }
}

std::unique_ptr<Tokenizer> read_tokenizer_json(const std::string& path, const TokenizerConfig* config) {
  const json doc = parse_json_file(path);
  const Fields f(path);
  if (!doc.is_object())
    throw FormatError(path, "is " + Fields::describe(doc) + ", expected a tokenizer.json object");
  const json& model = f.require(doc, "", "model");
  std::string type;
  if (f.optional(model, "type")) {
    type = f.string(model, "model", "type");
  } else {  // files from before the model carried its type: tell the two apart by their fields
    type = f.optional(model, "merges")                     ? "BPE"
           : f.optional(model, "max_input_chars_per_word") ? "WordPiece"
                                                           : "";
    if (type.empty())
      f.fail("model.type", "is missing and the model's fields are neither WordPiece's nor BPE's");
  }
  if (type == "WordPiece") return wordpiece_from_json(doc, model, f, config);
  if (type == "BPE" && is_sentencepiece_bpe(doc, f))
    return sentencepiece_bpe_from_json(doc, model, f, config);
  if (type == "BPE") return bpe_from_json(doc, model, f, config);
  f.fail("model.type", "is '" + type + "'; graft reads 'WordPiece' (BERT) and 'BPE' (GPT-2, Llama 2) models");
}

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_tokenizer_json(const std::string& path) {
  auto tokenizer = read_tokenizer_json(path, nullptr);
  if (tokenizer->kind() != "wordpiece") {
    throw FormatError(path, "holds a " + tokenizer->kind() + " model, expected WordPiece",
                      "use ByteBpeTokenizer::from_tokenizer_json or load_tokenizer");
  }
  return std::unique_ptr<WordPieceTokenizer>(static_cast<WordPieceTokenizer*>(tokenizer.release()));
}

std::unique_ptr<ByteBpeTokenizer> ByteBpeTokenizer::from_tokenizer_json(const std::string& path) {
  auto tokenizer = read_tokenizer_json(path, nullptr);
  if (tokenizer->kind() != "byte_bpe") {
    throw FormatError(path, "holds a " + tokenizer->kind() + " model, expected BPE",
                      "use WordPieceTokenizer::from_tokenizer_json or load_tokenizer");
  }
  return std::unique_ptr<ByteBpeTokenizer>(static_cast<ByteBpeTokenizer*>(tokenizer.release()));
}

// ---------------------------------------------------------------------------------------------------
// load_tokenizer
// ---------------------------------------------------------------------------------------------------

namespace {

std::unique_ptr<Tokenizer> load_bpe_files(const fs::path& vocab, const fs::path& merges,
                                          const TokenizerConfig* config) {
  std::vector<MergeRule> rules;
  auto core = read_bpe_files(vocab.string(), merges.string(), rules);
  if (config) config->apply(*core);
  return make_byte_bpe(std::move(core), rules, merges.string(), "line", {});
}

// The merges file beside a vocab.json / encoder.json.
fs::path merges_beside(const fs::path& vocab) {
  const fs::path dir = vocab.parent_path();
  const bool openai = vocab.filename() == "encoder.json";
  const std::array<const char*, 2> names = openai ? std::array<const char*, 2>{"vocab.bpe", "merges.txt"}
                                                  : std::array<const char*, 2>{"merges.txt", "vocab.bpe"};
  for (const char* name : names) {
    if (fs::is_regular_file(dir / name)) return dir / name;
  }
  throw Error(vocab.string() +
              ": a BPE vocabulary needs its merges, and neither merges.txt nor vocab.bpe is in " +
              (dir.empty() ? std::string(".") : dir.string()));
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec))
    throw Error(path + ": no such file or directory (expected a tokenizer file or model directory)");
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  std::optional<TokenizerConfig> config;
  if (fs::is_regular_file(dir / "tokenizer_config.json")) {
    config = read_tokenizer_config((dir / "tokenizer_config.json").string());
  }
  const TokenizerConfig* cfg = config ? &*config : nullptr;

  const auto vocab_txt = [&](const fs::path& file) -> std::unique_ptr<Tokenizer> {
    auto core = read_vocab_txt(file.string());
    WordPieceTokenizer::Options options;
    if (cfg) {
      cfg->apply(options);
      cfg->apply(*core);
    }
    return make_wordpiece(std::move(core), options);
  };

  if (fs::is_directory(p)) {
    if (fs::is_regular_file(p / "tokenizer.json"))
      return read_tokenizer_json((p / "tokenizer.json").string(), cfg);
    if (fs::is_regular_file(p / "vocab.txt")) return vocab_txt(p / "vocab.txt");
    for (const char* name : {"vocab.json", "encoder.json"}) {
      if (fs::is_regular_file(p / name)) return load_bpe_files(p / name, merges_beside(p / name), cfg);
    }
    throw Error(path +
                ": no tokenizer here; expected tokenizer.json, vocab.txt, or vocab.json + merges.txt " +
                "(encoder.json + vocab.bpe)");
  }
  const std::string name = p.filename().string();
  if (name == "merges.txt" || name == "vocab.bpe") {
    for (const char* vocab : {"vocab.json", "encoder.json"}) {
      if (fs::is_regular_file(dir / vocab)) return load_bpe_files(dir / vocab, p, cfg);
    }
    throw Error(path +
                ": merges alone are not a tokenizer; vocab.json (or encoder.json) must be beside them");
  }
  if (p.extension() == ".json") {
    // tokenizer.json holds a "model"; vocab.json / encoder.json is a flat token -> id object. Parsing the
    // file twice costs a little once; telling them apart by name would fail on renamed files.
    const json doc = parse_json_file(path);
    if (doc.is_object() && doc.contains("model") && doc["model"].is_object())
      return read_tokenizer_json(path, cfg);
    return load_bpe_files(p, merges_beside(p), cfg);
  }
  return vocab_txt(p);
}

}  // namespace graft
