// BERT's WordPiece tokenizer (Devlin et al. 2018, google-research/bert tokenization.py), matching Hugging
// Face tokenizers' BertNormalizer + BertPreTokenizer + WordPiece model + WordPiece decoder
// (src/normalizers/bert.rs, src/pre_tokenizers/bert.rs, src/models/wordpiece/mod.rs) and so transformers'
// BertTokenizer / BertTokenizerFast. Written from their documented behaviour, no code copied:
//  1. clean text: drop NUL, U+FFFD and C* characters except \t \n \r; whitespace becomes ' ';
//  2. spaces around CJK ideographs (the CJK Unified Ideograph blocks BERT lists; not kana or hangul);
//  3. strip accents: NFD, then drop Mn (so hangul syllables become jamo);
//  4. lower-case, per code point and context-free (Rust's char::to_lowercase);
//  5. split on whitespace, and isolate each punctuation character (P*, plus the ASCII symbols
//     !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ as BERT does);
//  6. per word, greedy longest-match-first against the vocabulary, "##" before non-initial pieces; a word
//     with a piece that matches nothing, or longer than max_input_chars_per_word, is one unk token.
// Offsets follow every character through these steps back to its bytes in the original text.
#include <algorithm>

#include "text/tokenizer_core.h"
#include "text/unicode.h"

namespace graft {

struct WordPieceTokenizer::Model {
  Options options;
  bool strip_accents = true;
  int64_t unk_id = 0;
};

namespace {

// A character of the normalised text and the bytes of the original text it came from.
struct NormChar {
  char32_t cp;
  uint32_t begin;
  uint32_t end;
};

// The CJK Unified Ideographs blocks (and compatibility ideographs) of BERT's _is_chinese_char.
bool is_cjk_ideograph(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// Hugging Face's BertNormalizer counts \t \n \r as whitespace, never as control characters.
bool is_bert_whitespace(char32_t cp) {
  return cp == '\t' || cp == '\n' || cp == '\r' || text::is_white_space(cp);
}
bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  if (cp < 0x80) return cp < 0x20 || cp == 0x7F;
  return text::is_other(cp);
}
bool is_bert_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126)) {
    return true;
  }
  return cp >= 0x80 && text::is_punctuation(cp);
}

// NFD over the whole sequence: full decomposition of each character, then the canonical ordering of each
// run of combining marks (stable sort by combining class), each output character keeping its source span.
void decompose(std::vector<NormChar>& chars) {
  bool any = false;
  for (const auto& c : chars) any = any || c.cp >= 0xC0;
  if (!any) return;
  std::vector<NormChar> out;
  out.reserve(chars.size() + chars.size() / 2);
  std::u32string pieces;
  for (const auto& c : chars) {
    pieces.clear();
    text::append_nfd(c.cp, pieces);
    for (char32_t p : pieces) out.push_back({p, c.begin, c.end});
  }
  for (size_t i = 0; i < out.size();) {
    if (text::combining_class(out[i].cp) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < out.size() && text::combining_class(out[j].cp) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(out.begin() + i, out.begin() + j, [](const NormChar& a, const NormChar& b) {
        return text::combining_class(a.cp) < text::combining_class(b.cp);
      });
    }
    i = j;
  }
  chars = std::move(out);
}

}  // namespace

WordPieceTokenizer::WordPieceTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model)
    : Tokenizer(std::move(core)), model_(std::move(model)) {}
WordPieceTokenizer::~WordPieceTokenizer() = default;

const WordPieceTokenizer::Options& WordPieceTokenizer::options() const {
  return model_->options;
}

namespace {

// The whole pipeline on a stretch of text that starts and ends at word boundaries. Kept as one function
// (about 115 lines): it is BertTokenizer's steps in order, each a few lines, sharing the offsets map.
void tokenize_chunk(const WordPieceTokenizer::Model& model, const Tokenizer::Core& core,
                    std::string_view text, size_t base, Encoding& out) {
  const WordPieceOptions& opt = model.options;
  std::vector<NormChar> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const auto begin = static_cast<uint32_t>(pos);
    char32_t cp = text::next_code_point(text, pos);
    const auto end = static_cast<uint32_t>(pos);
    if (opt.clean_text) {
      if (cp == 0 || cp == 0xFFFD || is_bert_control(cp)) continue;
      if (is_bert_whitespace(cp)) cp = ' ';
    }
    if (opt.handle_chinese_chars && is_cjk_ideograph(cp)) {
      chars.push_back({' ', begin, end});
      chars.push_back({cp, begin, end});
      chars.push_back({' ', begin, end});
    } else {
      chars.push_back({cp, begin, end});
    }
  }
  if (model.strip_accents) {
    decompose(chars);
    chars.erase(std::remove_if(chars.begin(), chars.end(),
                               [](const NormChar& c) { return text::is_nonspacing_mark(c.cp); }),
                chars.end());
  }
  if (opt.lowercase) {
    std::u32string lowered;
    std::vector<NormChar> out;
    bool changed_length = false;
    for (auto& c : chars) {
      lowered.clear();
      text::append_lowercase(c.cp, lowered);
      if (lowered.size() == 1) {
        c.cp = lowered[0];
      } else {
        changed_length = true;
        break;
      }
    }
    if (changed_length) {  // a few characters lower-case to two (U+0130 -> i + U+0307): redo with room
      out.reserve(chars.size() + 8);
      for (const auto& c : chars) {
        lowered.clear();
        text::append_lowercase(c.cp, lowered);
        for (char32_t l : lowered) out.push_back({l, c.begin, c.end});
      }
      chars = std::move(out);
    }
  }

  std::string word;                // the word in UTF-8
  std::vector<size_t> char_bytes;  // byte position of each character of the word, and the end
  std::string key;
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> pieces;  // id, [first char, end char)
  const auto emit_word = [&](size_t first, size_t last) {             // chars[first, last)
    if (first == last) return;
    const size_t n = last - first;
    if (n > opt.max_input_chars_per_word) {
      out.ids.push_back(model.unk_id);
      out.tokens.push_back(core.vocab[model.unk_id]);
      out.offsets.push_back({base + chars[first].begin, base + chars[last - 1].end});
      return;
    }
    word.clear();
    char_bytes.clear();
    for (size_t i = first; i < last; ++i) {
      char_bytes.push_back(word.size());
      text::append_utf8(word, chars[i].cp);
    }
    char_bytes.push_back(word.size());
    pieces.clear();
    for (size_t start = 0; start < n;) {
      size_t end = n;
      std::optional<int64_t> found;
      for (; end > start; --end) {
        key.clear();
        if (start > 0) key += opt.continuing_subword_prefix;
        key.append(word, char_bytes[start], char_bytes[end] - char_bytes[start]);
        const auto it = core.ids.find(key);
        if (it != core.ids.end()) {
          found = it->second;
          break;
        }
      }
      if (!found) {  // one piece matches nothing: the whole word is unknown
        out.ids.push_back(model.unk_id);
        out.tokens.push_back(core.vocab[model.unk_id]);
        out.offsets.push_back({base + chars[first].begin, base + chars[last - 1].end});
        return;
      }
      pieces.push_back({*found, {start, end}});
      start = end;
    }
    for (const auto& [id, span] : pieces) {
      out.ids.push_back(id);
      out.tokens.push_back(core.vocab[id]);
      out.offsets.push_back(
          {base + chars[first + span.first].begin, base + chars[first + span.second - 1].end});
    }
  };

  size_t word_start = 0;
  for (size_t i = 0; i < chars.size(); ++i) {
    const char32_t cp = chars[i].cp;
    if (is_bert_whitespace(cp)) {
      emit_word(word_start, i);
      word_start = i + 1;
    } else if (is_bert_punctuation(cp)) {
      emit_word(word_start, i);
      emit_word(i, i + 1);
      word_start = i + 1;
    }
  }
  emit_word(word_start, chars.size());
}

}  // namespace

void WordPieceTokenizer::tokenize(std::string_view text, size_t base, Encoding& out) const {
  // Long texts go through in pieces of ~64 KiB cut after an ASCII whitespace byte: a word boundary that
  // no normalisation step looks across, so the result is the same and memory stays bounded.
  constexpr size_t kChunkBytes = 64 * 1024;
  size_t begin = 0;
  while (text.size() - begin > kChunkBytes) {
    size_t cut = text.find_first_of(" \t\n\r", begin + kChunkBytes);
    if (cut == std::string_view::npos) break;
    ++cut;
    tokenize_chunk(*model_, core(), text.substr(begin, cut - begin), base + begin, out);
    begin = cut;
  }
  tokenize_chunk(*model_, core(), text.substr(begin), base + begin, out);
}

std::string WordPieceTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const std::string& prefix = model_->options.continuing_subword_prefix;
  std::string text;
  bool first = true;
  for (int64_t id : ids) {
    const std::string& token = id_to_token(id);
    if (skip_special_tokens && core().is_special(id)) continue;
    if (!first && !prefix.empty() && token.compare(0, prefix.size(), prefix) == 0) {
      text.append(token, prefix.size(), std::string::npos);
    } else {
      if (!first) text.push_back(' ');
      text += token;
    }
    first = false;
  }
  if (!model_->options.cleanup_decoded_spaces) return text;
  // transformers' clean_up_tokenization: no space before punctuation and English contractions.
  static const std::pair<const char*, const char*> kCleanups[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
  };
  for (const auto& [from, to] : kCleanups) {
    const std::string_view f(from);
    std::string cleaned;
    cleaned.reserve(text.size());
    size_t pos = 0;
    for (size_t hit; (hit = text.find(f, pos)) != std::string::npos; pos = hit + f.size()) {
      cleaned.append(text, pos, hit - pos);
      cleaned += to;
    }
    cleaned.append(text, pos, std::string::npos);
    text = std::move(cleaned);
  }
  return text;
}

std::unique_ptr<WordPieceTokenizer> make_wordpiece(std::unique_ptr<Tokenizer::Core> core,
                                                   const WordPieceTokenizer::Options& options) {
  auto model = std::make_unique<WordPieceTokenizer::Model>();
  model->options = options;
  model->strip_accents = options.strip_accents.value_or(options.lowercase);
  const auto unk = core->find(options.unk_token);
  if (!unk) {
    throw FormatError(core->source, "the unknown token '" + options.unk_token + "' is not in the vocabulary",
                      "WordPiece needs one for words it cannot split");
  }
  model->unk_id = *unk;
  core->unk = unk;
  core->guess_special_ids();
  core->finalize();
  return std::make_unique<WordPieceTokenizer>(std::move(core), std::move(model));
}

std::unique_ptr<Tokenizer::Core> read_vocab_txt(const std::string& path) {
  const std::string bytes = read_tokenizer_file(path);
  if (bytes.empty()) throw FormatError(path, "is empty", "expected one token per line, line i holding id i");
  const size_t lines = static_cast<size_t>(std::count(bytes.begin(), bytes.end(), '\n')) + 1;
  if (lines > static_cast<size_t>(kMaxVocabSize)) {
    throw FormatError(path, "has " + std::to_string(lines) + " lines, over the limit of " +
                                std::to_string(kMaxVocabSize) + " vocabulary entries");
  }
  std::vector<std::string> vocab;
  vocab.reserve(lines);
  std::unordered_map<std::string, size_t> line_of;
  line_of.reserve(lines);
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string token = bytes.substr(pos, end - pos);
    if (!token.empty() && token.back() == '\r') token.pop_back();
    const size_t line = vocab.size() + 1;
    const std::string where = "line " + std::to_string(line);
    if (token.empty())
      throw FormatError(path, where + " is empty", "expected a token (line i holds id i - 1)");
    try {
      text::validate_utf8(token);
    } catch (const InvalidUtf8& e) {
      throw FormatError(path, where + ": " + e.what());
    }
    const auto [it, inserted] = line_of.emplace(token, line);
    if (!inserted) {
      throw FormatError(
          path, where + ": token '" + token + "' already appears on line " + std::to_string(it->second),
          "each token must appear once");
    }
    vocab.push_back(std::move(token));
    pos = end + 1;
  }
  auto core = std::make_unique<Tokenizer::Core>();
  core->source = path;
  core->set_vocab(std::move(vocab));
  // BERT's special tokens are never split, wherever they appear in the text.
  for (const char* name : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    if (auto id = core->find(name)) core->add_token(AddedToken{name, *id});
  }
  const auto cls = core->find("[CLS]");
  const auto sep = core->find("[SEP]");
  if (cls && sep) core->use_bert_template(*cls, *sep);
  return core;
}

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_vocab_txt(const std::string& path,
                                                                       const Options& options) {
  return make_wordpiece(read_vocab_txt(path), options);
}

}  // namespace graft
