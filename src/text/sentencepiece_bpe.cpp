// Llama 2's tokenizer (graft/tokenizer.h SentencePieceBpeTokenizer) as Hugging Face tokenizers runs a
// tokenizer.json of that shape: normalizers Prepend("\u2581") and Replace(" ", "\u2581") on each stretch of
// text between added tokens, no pre-tokenizer (the stretch is one word), models/bpe with byte_fallback
// and fuse_unk, merges by rank (lowest first, leftmost among equal ranks); decoders Replace("\u2581", " "),
// ByteFallback, Fuse, Strip(" ", 1, 0). Written from those behaviours; no code is copied.
#include <cstdio>

#include "graft/strings.h"
#include "text/tokenizer_core.h"
#include "text/unicode.h"

namespace graft {
namespace {

const std::string kSpace = "\u2581";  // SentencePiece's visible space, 3 bytes in UTF-8

std::string byte_token(unsigned char byte) {
  char name[8];
  std::snprintf(name, sizeof(name), "<0x%02X>", byte);
  return name;
}

}  // namespace

struct SentencePieceBpeTokenizer::Model {
  Options options;
  int32_t unk = -1;                 // the <unk> id; -1 without one (unknown characters are dropped)
  std::array<int32_t, 256> byte{};  // <0xXX> ids; -1 where missing
  std::vector<int16_t> byte_of_id;  // id -> the byte a <0xXX> token stands for, -1 for other tokens
  BpeMerges merges;
};

SentencePieceBpeTokenizer::SentencePieceBpeTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model)
    : Tokenizer(std::move(core)), model_(std::move(model)) {}
SentencePieceBpeTokenizer::~SentencePieceBpeTokenizer() = default;

void SentencePieceBpeTokenizer::tokenize(std::string_view text, size_t base, Encoding& out) const {
  if (text.empty()) return;
  const Core& core = this->core();
  // The normalized stretch, and for each of its bytes the original bytes [from, to) of its character
  // (the prepended space covers nothing).
  std::string normalized = kSpace;
  std::vector<std::pair<size_t, size_t>> origin(kSpace.size(), {0, 0});
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    text::next_code_point(text, pos);
    const std::string_view ch = text.substr(start, pos - start);
    const std::string_view put = ch == " " ? std::string_view(kSpace) : ch;
    normalized += put;
    origin.insert(origin.end(), put.size(), {start, pos});
  }
  // Symbols: one per character (its token, its bytes' tokens, or <unk>), with the normalized bytes each
  // covers; then merged.
  struct Symbol {
    int32_t id;
    uint32_t begin, end;  // normalized bytes
    int32_t prev, next;   // -1 at the ends
  };
  std::vector<Symbol> symbols;
  const auto push = [&](int32_t id, size_t begin, size_t end) {
    if (model_->options.fuse_unk && id == model_->unk && !symbols.empty() && symbols.back().id == id) {
      symbols.back().end = static_cast<uint32_t>(end);
      return;
    }
    const auto at = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, static_cast<uint32_t>(begin), static_cast<uint32_t>(end), at - 1, -1});
    if (at > 0) symbols[at - 1].next = at;
  };
  for (size_t pos = 0; pos < normalized.size();) {
    const size_t start = pos;
    text::next_code_point(normalized, pos);
    if (const auto id = core.find(std::string_view(normalized).substr(start, pos - start))) {
      push(static_cast<int32_t>(*id), start, pos);
      continue;
    }
    bool bytes = model_->options.byte_fallback;
    for (size_t b = start; bytes && b < pos; ++b)
      bytes = model_->byte[static_cast<unsigned char>(normalized[b])] >= 0;
    if (bytes) {
      for (size_t b = start; b < pos; ++b)
        push(model_->byte[static_cast<unsigned char>(normalized[b])], b, b + 1);
    } else if (model_->unk >= 0) {
      push(model_->unk, start, pos);
    }  // else: dropped, as Hugging Face's BPE drops a character it cannot spell
  }
  if (symbols.empty()) return;

  std::vector<BpeCandidate> heap;
  merge_by_rank(
      symbols, heap, [&](int32_t left, int32_t right) { return model_->merges.find(left, right); },
      [](Symbol& left, const Symbol& right) { left.end = right.end; });
  for (int32_t i = 0; i >= 0; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    out.ids.push_back(s.id);
    out.tokens.push_back(core.vocab[s.id]);
    out.offsets.push_back({base + origin[s.begin].first, base + origin[s.end - 1].second});
  }
}

std::string SentencePieceBpeTokenizer::decode(const std::vector<int64_t>& ids,
                                              bool skip_special_tokens) const {
  std::string text, bytes;
  // ByteFallback: a run of <0xXX> tokens that spells valid UTF-8 is that text, else one U+FFFD per byte.
  const auto flush = [&] {
    if (bytes.empty()) return;
    if (invalid_utf8_at(bytes) == std::string::npos) {
      text += bytes;
    } else {
      for (size_t i = 0; i < bytes.size(); ++i) text += "\uFFFD";
    }
    bytes.clear();
  };
  for (int64_t id : ids) {
    const std::string& token = id_to_token(id);  // throws for an id outside the vocabulary
    if (skip_special_tokens && core().is_special(id)) continue;
    if (const int16_t byte = model_->byte_of_id[static_cast<size_t>(id)]; byte >= 0) {
      bytes += static_cast<char>(byte);
      continue;
    }
    flush();
    for (size_t pos = 0; pos < token.size();) {  // Replace("\u2581", " ")
      if (token.compare(pos, kSpace.size(), kSpace) == 0) {
        text += ' ';
        pos += kSpace.size();
      } else {
        text += token[pos++];
      }
    }
  }
  flush();
  if (!text.empty() && text[0] == ' ') text.erase(0, 1);  // Strip(" ", 1, 0): the space put in front
  return text;
}

std::unique_ptr<SentencePieceBpeTokenizer> make_sentencepiece_bpe(
    std::unique_ptr<Tokenizer::Core> core, const std::vector<MergeRule>& merges,
    const std::string& merges_source, const SentencePieceBpeTokenizer::Options& options) {
  auto model = std::make_unique<SentencePieceBpeTokenizer::Model>();
  model->options = options;
  if (const auto unk = core->find(options.unk_token)) model->unk = static_cast<int32_t>(*unk);
  model->byte_of_id.assign(core->vocab.size(), -1);
  for (int b = 0; b < 256; ++b) {
    const auto id = core->find(byte_token(static_cast<unsigned char>(b)));
    model->byte[b] = id ? static_cast<int32_t>(*id) : -1;
    if (id) model->byte_of_id[static_cast<size_t>(*id)] = static_cast<int16_t>(b);
  }
  if (options.byte_fallback && model->byte[0x41] < 0)
    throw FormatError(core->source,
                      "model.byte_fallback is true, but the vocabulary has no <0x41> byte token",
                      "a byte-fallback BPE has one <0xXX> token for each byte");
  model->merges = BpeMerges(*core, merges, merges_source, "model.merges entry");
  core->guess_special_ids();
  core->finalize();
  return std::make_unique<SentencePieceBpeTokenizer>(std::move(core), std::move(model));
}

}  // namespace graft
