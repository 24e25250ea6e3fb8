// GPT-2's byte-level BPE (Radford et al. 2019), matching OpenAI gpt-2 src/encoder.py and Hugging Face
// tokenizers' ByteLevel pre-tokenizer + BPE model + ByteLevel decoder (src/pre_tokenizers/byte_level.rs,
// src/models/bpe/). Written from their documented behaviour, no code copied:
//  1. pre-tokenisation by GPT-2's pattern
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     evaluated by hand over code points (first alternative that matches at each position wins, as a
//     backtracking regex does; \s is White_Space, \p{L} / \p{N} the general categories);
//  2. each pre-token's UTF-8 bytes start as one symbol per byte (the byte's token in OpenAI's
//     bytes_to_unicode alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes for
//     U+0100 onwards in byte order, so " " is "Ġ");
//  3. the adjacent pair with the lowest merge rank is merged, leftmost first, until no pair has a rank.
// Decoding maps every token's characters back to bytes, so decode(encode(text)) == text exactly.
#include <algorithm>
#include <array>
#include <mutex>

#include "text/tokenizer_core.h"
#include "text/unicode.h"

namespace graft {

namespace {

// OpenAI's bytes_to_unicode(): the printable bytes '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF keep their
// code point; the remaining bytes, in increasing order, take U+0100, U+0101, ...
std::array<char32_t, 256> byte_alphabet() {
  std::array<char32_t, 256> table{};
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? char32_t(b) : next++;
  }
  return table;
}

// Character classes of the pre-tokenisation pattern.
enum CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

CharClass classify(char32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return kLetter;
    if (cp >= '0' && cp <= '9') return kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
    return kOther;
  }
  if (text::is_letter(cp)) return kLetter;
  if (text::is_number(cp)) return kNumber;
  if (text::is_white_space(cp)) return kSpace;
  return kOther;
}

// Calls emit(begin, end) with the byte range of every pre-token of `text`, in order, covering it all.
// Streams over the text with at most two code points of lookahead beyond the current run, so that memory
// does not grow with the text.
template <typename Emit>
void split_gpt2(std::string_view text, Emit emit) {
  const size_t n = text.size();
  // The code point at byte `pos`; `next` is set to the byte after it.
  const auto at = [&](size_t pos, size_t& next) {
    next = pos;
    return text::next_code_point(text, next);
  };
  for (size_t i = 0; i < n;) {
    size_t after_first;
    const char32_t first = at(i, after_first);
    size_t end = i;
    // 's 't 're 've 'm 'll 'd
    if (first == '\'' && after_first < n) {
      size_t after_a;
      const char32_t a = at(after_first, after_a);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        end = after_a;
      } else if (after_a < n) {
        size_t after_b;
        const char32_t b = at(after_a, after_b);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) end = after_b;
      }
    }
    if (end == i) {
      // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class.
      CharClass cls = classify(first);
      size_t pos = after_first;  // just after the run's first code point
      if (first == ' ' && after_first < n) {
        size_t after_second;
        const CharClass second = classify(at(after_first, after_second));
        if (second != kSpace) {
          cls = second;
          pos = after_second;
        }
      }
      if (cls != kSpace) {
        for (size_t next; pos < n && classify(at(pos, next)) == cls;) pos = next;
        end = pos;
      } else {
        // '\s+(?!\S)': whitespace up to the end of the text, or all but the last whitespace character
        // before a non-space; '\s+': a single whitespace character before a non-space.
        size_t last_start = i;
        for (size_t next; pos < n && classify(at(pos, next)) == kSpace;) {
          last_start = pos;
          pos = next;
        }
        end = (pos == n || last_start == i) ? pos : last_start;
      }
    }
    emit(i, end);
    i = end;
  }
}

// Pre-token -> ids, per tokenizer instance: fixed-size open-addressing tables (no allocation per lookup,
// unlike std::unordered_map<std::string, ...>), sharded by hash so that encode_batch threads rarely wait
// on the same mutex. A full shard is emptied and refilled: crude, but bounded and rare on real text.
class MergeCache {
 public:
  static constexpr size_t kMaxKeyBytes = 64;  // longer pre-tokens are rare; not worth keeping

  // Appends the cached ids of `key` to `ids` and returns true, or returns false.
  bool get(std::string_view key, uint64_t hash, std::vector<int32_t>& ids) const {
    Shard& shard = shard_of(hash);
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.slots.empty()) return false;
    for (size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& slot = shard.slots[i];
      if (!slot.used) return false;
      if (slot.hash == hash && slot.key_len == key.size() &&
          key.compare(0, key.size(), shard.keys.data() + slot.key_at, slot.key_len) == 0) {
        ids.insert(ids.end(), shard.ids.begin() + slot.ids_at,
                   shard.ids.begin() + slot.ids_at + slot.ids_len);
        return true;
      }
    }
  }

  void put(std::string_view key, uint64_t hash, const int32_t* ids, size_t count) const {
    Shard& shard = shard_of(hash);
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.slots.empty() || shard.used >= kSlots / 2) {
      shard.slots.assign(kSlots, Slot{});
      shard.keys.clear();
      shard.ids.clear();
      shard.used = 0;
    }
    size_t i = hash & (kSlots - 1);
    while (shard.slots[i].used) {
      const Slot& slot = shard.slots[i];
      if (slot.hash == hash && slot.key_len == key.size() &&
          key.compare(0, key.size(), shard.keys.data() + slot.key_at, slot.key_len) == 0) {
        return;  // another thread got here first
      }
      i = (i + 1) & (kSlots - 1);
    }
    Slot& slot = shard.slots[i];
    slot = {hash,
            static_cast<uint32_t>(shard.keys.size()),
            static_cast<uint32_t>(shard.ids.size()),
            static_cast<uint16_t>(key.size()),
            static_cast<uint16_t>(count),
            true};
    shard.keys.append(key);
    shard.ids.insert(shard.ids.end(), ids, ids + count);
    ++shard.used;
  }

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kSlots = 8192;  // per shard, half of them used at most
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_at = 0, ids_at = 0;  // offsets into the shard's arenas
    uint16_t key_len = 0, ids_len = 0;
    bool used = false;
  };
  struct Shard {
    std::mutex mutex;
    std::vector<Slot> slots;
    std::string keys;
    std::vector<int32_t> ids;
    size_t used = 0;
  };
  Shard& shard_of(uint64_t hash) const { return shards_[(hash >> 56) % kShards]; }
  mutable std::array<Shard, kShards> shards_;
};

}  // namespace

struct ByteBpeTokenizer::Model {
  Options options;
  // Id of each byte's one-character token; -1 where the vocabulary has none (SmolLM2 lacks a few control
  // bytes): such a byte is dropped, as Hugging Face's BPE drops a character it has no token for when there
  // is no unk_token.
  std::array<int32_t, 256> byte_id{};
  BpeMerges merges;
  std::vector<std::string> id_bytes;  // what each id decodes to
  std::vector<uint32_t> id_length;    // id_bytes[id].size(), compact for the encode loop
  MergeCache cache;

  // BPE on one pre-token (merge_by_rank over its bytes' symbols).
  void merge(std::string_view piece, std::vector<int32_t>& ids) const {
    if (piece.size() == 1) {
      if (const int32_t id = byte_id[static_cast<unsigned char>(piece[0])]; id >= 0) ids.push_back(id);
      return;
    }
    struct Symbol {
      int32_t id;
      int32_t prev, next;  // -1 at the ends
    };
    thread_local std::vector<Symbol> symbols;
    thread_local std::vector<BpeCandidate> heap;
    symbols.clear();
    for (const char byte : piece) {
      const int32_t id = byte_id[static_cast<unsigned char>(byte)];
      if (id < 0) continue;  // no token: dropped, its neighbours meet
      const auto at = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, at - 1, -1});
      if (at > 0) symbols[at - 1].next = at;
    }
    if (symbols.empty()) return;
    merge_by_rank(
        symbols, heap, [&](int32_t left, int32_t right) { return merges.find(left, right); },
        [](Symbol&, const Symbol&) {});
    for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
    if (symbols.capacity() > (size_t{1} << 20)) {  // one huge word: give the memory back
      symbols = {};
      heap = {};
    }
  }
};

ByteBpeTokenizer::ByteBpeTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model)
    : Tokenizer(std::move(core)), model_(std::move(model)) {}
ByteBpeTokenizer::~ByteBpeTokenizer() = default;

const ByteBpeTokenizer::Options& ByteBpeTokenizer::options() const {
  return model_->options;
}

void ByteBpeTokenizer::tokenize(std::string_view text, size_t base, Encoding& out) const {
  std::string prefixed;
  size_t shift = 0;  // 1 when a space was put in front: positions in `view` are one past the text's
  std::string_view view = text;
  if (model_->options.add_prefix_space && !text.empty() && text[0] != ' ') {
    prefixed = " ";
    prefixed += text;
    view = prefixed;
    shift = 1;
  }
  const Core& core = this->core();
  thread_local std::vector<int32_t> ids;
  const auto encode_piece = [&](size_t begin, size_t end) {
    const std::string_view piece = view.substr(begin, end - begin);
    ids.clear();
    if (piece.size() == 1) {
      if (const int32_t id = model_->byte_id[static_cast<unsigned char>(piece[0])]; id >= 0)
        ids.push_back(id);
    } else if (piece.size() > MergeCache::kMaxKeyBytes) {
      model_->merge(piece, ids);
    } else {
      const uint64_t hash = std::hash<std::string_view>{}(piece);
      if (!model_->cache.get(piece, hash, ids)) {
        model_->merge(piece, ids);
        model_->cache.put(piece, hash, ids.data(), ids.size());
      }
    }
    size_t pos = begin;
    for (int32_t id : ids) {
      const size_t next = pos + model_->id_length[id];
      out.ids.push_back(id);
      out.tokens.push_back(core.vocab[id]);
      out.offsets.push_back(
          {base + (pos > shift ? pos - shift : 0), base + (next > shift ? next - shift : 0)});
      pos = next;
    }
  };
  // About one token per four bytes of English; reserving avoids most regrowth.
  const size_t expected = out.ids.size() + view.size() / 4 + 1;
  out.ids.reserve(expected);
  out.tokens.reserve(expected);
  out.offsets.reserve(expected);
  // ByteLevel's split of one stretch of the text [from, to).
  const auto byte_level = [&](size_t from, size_t to) {
    if (from == to) return;
    if (!model_->options.use_regex) return encode_piece(from, to);
    split_gpt2(view.substr(from, to - from), [&](size_t b, size_t e) { encode_piece(from + b, from + e); });
  };
  if (!model_->options.split_digits) return byte_level(0, view.size());
  // Digits first (tokenizers' pre_tokenizers::digits, Isolated): each number, or each digit, a stretch of
  // its own; ByteLevel splits the stretches between them further.
  size_t stretch = 0;
  for (size_t i = 0; i < view.size();) {
    size_t next = i;
    const char32_t cp = text::next_code_point(view, next);
    if (!text::is_number(cp)) {
      i = next;
      continue;
    }
    byte_level(stretch, i);
    size_t end = next;
    if (!model_->options.individual_digits) {
      for (size_t after = end; end < view.size() && text::is_number(text::next_code_point(view, after));)
        end = after;
    }
    encode_piece(i, end);
    stretch = i = end;
  }
  byte_level(stretch, view.size());
}

std::string ByteBpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int64_t id : ids) {
    id_to_token(id);  // throws for an id outside the vocabulary
    if (skip_special_tokens && core().is_special(id)) continue;
    bytes += model_->id_bytes[id];
  }
  return bytes;
}

std::unique_ptr<ByteBpeTokenizer> make_byte_bpe(std::unique_ptr<Tokenizer::Core> core,
                                                const std::vector<MergeRule>& merges,
                                                const std::string& merges_source,
                                                const std::string& location_word,
                                                const ByteBpeTokenizer::Options& options) {
  auto model = std::make_unique<ByteBpeTokenizer::Model>();
  model->options = options;
  const auto alphabet = byte_alphabet();
  std::unordered_map<char32_t, unsigned char> byte_of;
  int missing = 0;
  for (int b = 0; b < 256; ++b) {
    byte_of[alphabet[b]] = static_cast<unsigned char>(b);
    std::string token;
    text::append_utf8(token, alphabet[b]);
    const auto id = core->find(token);
    model->byte_id[b] = id ? static_cast<int32_t>(*id) : -1;
    missing += id ? 0 : 1;
  }
  // A few control bytes may lack a token (dropped when met, as Hugging Face drops them); a vocabulary
  // without most of the alphabet is not a byte-level one.
  if (missing > 64) {
    throw FormatError(core->source,
                      "the vocabulary has no token for " + std::to_string(missing) + " of the 256 bytes",
                      "byte-level BPE needs a token for each byte (a few control bytes aside)");
  }

  model->merges = BpeMerges(*core, merges, merges_source, location_word);

  std::vector<bool> added(core->vocab.size(), false);
  for (const auto& token : core->added) added[static_cast<size_t>(token.id)] = true;
  model->id_bytes.resize(core->vocab.size());
  for (size_t id = 0; id < core->vocab.size(); ++id) {
    const std::string& token = core->vocab[id];
    if (added[id]) {  // added tokens are plain text, not byte-level symbols
      model->id_bytes[id] = token;
      continue;
    }
    std::string& bytes = model->id_bytes[id];
    for (size_t pos = 0; pos < token.size();) {
      const size_t start = pos;
      const char32_t cp = text::next_code_point(token, pos);
      const auto it = byte_of.find(cp);
      if (it != byte_of.end()) {
        bytes.push_back(static_cast<char>(it->second));
      } else {
        bytes.append(token, start, pos - start);  // not a byte-level symbol: keep the character
      }
    }
  }

  model->id_length.resize(model->id_bytes.size());
  for (size_t id = 0; id < model->id_bytes.size(); ++id) {
    model->id_length[id] = static_cast<uint32_t>(model->id_bytes[id].size());
  }

  core->guess_special_ids();
  core->finalize();
  return std::make_unique<ByteBpeTokenizer>(std::move(core), std::move(model));
}

std::unique_ptr<Tokenizer::Core> read_bpe_files(const std::string& vocab_json, const std::string& merges_txt,
                                                std::vector<MergeRule>& merges) {
  auto core = std::make_unique<Tokenizer::Core>();
  core->source = vocab_json;
  core->set_vocab(vocab_from_json_file(vocab_json));
  // GPT-2's one special token, and RoBERTa's, which ships the same two files.
  for (const char* name : {"<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>"}) {
    if (auto id = core->find(name)) core->add_token(AddedToken{name, *id});
  }

  const std::string bytes = read_tokenizer_file(merges_txt);
  try {
    text::validate_utf8(bytes);
  } catch (const InvalidUtf8& e) {
    const auto line =
        std::count(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(e.offset()), '\n') + 1;
    throw FormatError(merges_txt, "line " + std::to_string(line) + ": " + e.what());
  }
  merges.clear();
  size_t pos = 0;
  size_t line = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string text = bytes.substr(pos, end - pos);
    pos = end + 1;
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (line == 1 && text.rfind("#version", 0) == 0) continue;
    if (text.empty() && (pos >= bytes.size() || bytes.find_first_not_of("\r\n", pos) == std::string::npos)) {
      break;  // blank lines at the end
    }
    const size_t space = text.find(' ');
    if (text.empty() || space == 0 || space == std::string::npos || space + 1 == text.size() ||
        text.find(' ', space + 1) != std::string::npos) {
      throw FormatError(merges_txt, "line " + std::to_string(line) +
                                        ": expected two tokens separated by one " +
                                        "space ('\u0120 t'), found '" + text + "'");
    }
    if (merges.size() >= static_cast<size_t>(kMaxVocabSize)) {
      throw FormatError(merges_txt, "has more than " + std::to_string(kMaxVocabSize) + " merges");
    }
    merges.push_back({text.substr(0, space), text.substr(space + 1), line});
  }
  return core;
}

std::unique_ptr<ByteBpeTokenizer> ByteBpeTokenizer::from_files(const std::string& vocab_json,
                                                               const std::string& merges_txt,
                                                               const Options& options) {
  std::vector<MergeRule> merges;
  auto core = read_bpe_files(vocab_json, merges_txt, merges);
  return make_byte_bpe(std::move(core), merges, merges_txt, "line", options);
}

}  // namespace graft
