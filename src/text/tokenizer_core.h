// What every tokenizer shares, whatever its model: the vocabulary, the added tokens that are split out of
// the text before the model sees it, the post-processing template ([CLS] $A [SEP]) and the special token
// ids. Built by the loaders (wordpiece.cpp, byte_bpe.cpp, tokenizer_json.cpp), used by tokenizer.cpp.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graft/tokenizer.h"

namespace graft {

// Ids above this are refused before anything is allocated (the largest real vocabularies hold ~256 K).
constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
// The id table is sized by the largest id, so ids may run past the number of tokens listed by at most
// this much: a 20-byte {"a": 16777215} must not allocate 16 M empty slots (real files have no gaps).
constexpr int64_t kMaxVocabIdGap = int64_t{1} << 16;
// Vocabulary and merge files above this are refused before they are read.
constexpr uintmax_t kMaxTokenizerFileBytes = uintmax_t{1} << 30;

// A token matched literally in the raw text, as Hugging Face's AddedToken.
struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = true;       // skipped by decode(skip_special_tokens = true)
  bool lstrip = false;       // the match swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // only when not inside a word
};

// One item of a post-processing template: a text ($A, $B) or special tokens, with a token type id.
struct TemplatePiece {
  int sequence = -1;  // 0 = $A, 1 = $B, -1 = special tokens
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;
  int64_t type_id = 0;
};

struct Tokenizer::Core {
  std::string source;                            // file the tokenizer came from, for messages
  std::vector<std::string> vocab;                // id -> token; "" for ids no token uses
  std::vector<uint8_t> special;                  // id -> 1 for special tokens
  std::unordered_map<std::string, int64_t> ids;  // token -> id
  std::vector<AddedToken> added;                 // longest first after finalize()
  std::array<bool, 256> added_first_byte{};      // bytes that can start an added token
  // Templates; an empty list means "$A" (single) and "$A $B:1" (pair) with nothing added.
  std::vector<TemplatePiece> single_template, pair_template;
  std::optional<int64_t> pad, unk, cls, sep, mask, bos, eos;

  // Sets the vocabulary from token -> id; ids must be < kMaxVocabSize (checked by the caller, who knows the
  // file and line) and unique.
  void set_vocab(std::vector<std::string> id_to_token);
  // Registers a token that is split out of the text whole; it joins the vocabulary if it is new.
  void add_token(const AddedToken& token);
  // Sorts the added tokens longest first and indexes their first bytes; call once, after add_token.
  void finalize();

  std::optional<int64_t> find(std::string_view token) const;
  bool is_special(int64_t id) const { return id >= 0 && size_t(id) < special.size() && special[id]; }
  // Number of special tokens the template adds to one text (pair = false) or two.
  size_t added_by_template(bool pair) const;
  // The BERT template over existing [CLS]/[SEP] ids: [CLS] $A [SEP] / [CLS] $A [SEP] $B:1 [SEP]:1.
  void use_bert_template(int64_t cls_id, int64_t sep_id);
  // Looks up the usual special token names ([PAD] or <pad>, ...) for the ids not set yet.
  void guess_special_ids();
};

// Where a merge rule came from: merges.txt line (1-based) or index in tokenizer.json's model.merges.
struct MergeRule {
  std::string left, right;
  size_t line = 0;
};

// BPE's merge table: (left id, right id) -> the merge's rank and the id it makes. Built from the rules in
// rank order, each checked against the vocabulary: a bad one is a FormatError naming merges_source and
// `location_word line` ("line 7", "model.merges entry 7"). byte_bpe.cpp and sentencepiece_bpe.cpp share it.
class BpeMerges {
 public:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  BpeMerges() = default;
  BpeMerges(const Tokenizer::Core& core, const std::vector<MergeRule>& rules,
            const std::string& merges_source, const std::string& location_word);
  const Merge* find(int32_t left, int32_t right) const {
    const auto it = table_.find((uint64_t(uint32_t(left)) << 32) | uint32_t(right));
    return it == table_.end() ? nullptr : &it->second;
  }

 private:
  std::unordered_map<uint64_t, Merge> table_;
};

// A pair of neighbouring symbols BPE may merge, keyed rank << 32 | the left symbol's index (smallest first);
// left and right are the two ids when it was found (a merge since then makes it stale).
struct BpeCandidate {
  uint64_t key;
  int32_t left, right;
  bool operator>(const BpeCandidate& other) const { return key > other.key; }
};

// BPE merges over a linked list of symbols (each with int32_t id, prev, next; -1 at the ends; the list
// starts at index 0, which must exist): the pair of lowest rank first, the leftmost among equal ranks,
// with a heap of candidate pairs (stale ones recognised and dropped when popped). find(left id, right id)
// gives a pointer to {rank, id} of the merge or null; joined(left, right) widens what the left symbol
// covers. A merged-away symbol gets id -1. byte_bpe.cpp and sentencepiece_bpe.cpp share it.
template <class Symbol, class Find, class Joined>
void merge_by_rank(std::vector<Symbol>& symbols, std::vector<BpeCandidate>& heap, const Find& find,
                   const Joined& joined) {
  heap.clear();
  const auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    if (const auto* m = find(symbols[left].id, symbols[right].id)) {
      heap.push_back(
          {(uint64_t(uint32_t(m->rank)) << 32) | uint32_t(left), symbols[left].id, symbols[right].id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (int32_t i = 0; i >= 0 && symbols[i].next >= 0; i = symbols[i].next) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const BpeCandidate c = heap.back();
    heap.pop_back();
    const auto left = static_cast<int32_t>(c.key & 0xFFFFFFFFu);
    Symbol& l = symbols[left];
    if (l.id != c.left || l.next < 0 || symbols[l.next].id != c.right) continue;  // stale
    const int32_t right = l.next;
    l.id = find(c.left, c.right)->id;
    joined(l, symbols[right]);
    l.next = symbols[right].next;
    if (l.next >= 0) symbols[l.next].prev = left;
    symbols[right].id = -1;
    if (l.prev >= 0) consider(l.prev);
    consider(left);
  }
}

// The fields of a model directory's tokenizer_config.json that graft reads.
struct TokenizerConfig {
  std::optional<bool> do_lower_case, strip_accents, tokenize_chinese_chars;
  std::vector<std::pair<std::string, std::string>> special_tokens;  // ("pad", "[PAD]"), ("eos", "</s>")
  void apply(WordPieceTokenizer::Options& options) const;
  // Sets the special ids named here (tokens missing from the vocabulary are ignored, as transformers does
  // for unused entries).
  void apply(Tokenizer::Core& core) const;
};
// Reads tokenizer_config.json; throws FormatError when it is not a JSON object.
TokenizerConfig read_tokenizer_config(const std::string& path);

// The halves of the file loaders: the vocabulary and added tokens (wordpiece.cpp, byte_bpe.cpp) ...
std::unique_ptr<Tokenizer::Core> read_vocab_txt(const std::string& path);
std::unique_ptr<Tokenizer::Core> read_bpe_files(const std::string& vocab_json, const std::string& merges_txt,
                                                std::vector<MergeRule>& merges);
// ... and the tokenizers built around a finished core; both set the special ids not set yet and
// finalize() the core. merges are in rank order; merges_source and location_word ("line",
// "model.merges entry") place a bad merge in messages.
std::unique_ptr<WordPieceTokenizer> make_wordpiece(std::unique_ptr<Tokenizer::Core> core,
                                                   const WordPieceTokenizer::Options& options);
std::unique_ptr<ByteBpeTokenizer> make_byte_bpe(std::unique_ptr<Tokenizer::Core> core,
                                                const std::vector<MergeRule>& merges,
                                                const std::string& merges_source,
                                                const std::string& location_word,
                                                const ByteBpeTokenizer::Options& options);
std::unique_ptr<SentencePieceBpeTokenizer> make_sentencepiece_bpe(
    std::unique_ptr<Tokenizer::Core> core, const std::vector<MergeRule>& merges,
    const std::string& merges_source, const SentencePieceBpeTokenizer::Options& options);
// tokenizer.json, with tokenizer_config.json's settings over it when given (tokenizer_json.cpp).
std::unique_ptr<Tokenizer> read_tokenizer_json(const std::string& path, const TokenizerConfig* config);

// A vocabulary given as a JSON object token -> id (vocab.json, encoder.json, tokenizer.json's model.vocab)
// as id -> token. `field` names the object in messages ("" for a whole file). Throws FormatError for
// anything but an object of distinct integer ids in [0, kMaxVocabSize).
std::vector<std::string> vocab_from_json(const nlohmann::json& object, const std::string& source,
                                         const std::string& field);
std::vector<std::string> vocab_from_json_file(const std::string& path);

// The whole file, after checking it exists and is at most kMaxTokenizerFileBytes. Throws graft::Error.
std::string read_tokenizer_file(const std::string& path);

}  // namespace graft
