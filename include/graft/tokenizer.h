// Text tokenizers for the text models: BERT's WordPiece and GPT-2's byte-level BPE, loaded from the files
// the reference checkpoints ship (vocab.txt; vocab.json/encoder.json + merges.txt/vocab.bpe; Hugging Face
// tokenizer.json). They reproduce Hugging Face `tokenizers` (the Rust library behind the fast tokenizers of
// transformers) id for id: the WordPiece side matches BertNormalizer + BertPreTokenizer + WordPiece +
// TemplateProcessing (= transformers' BertTokenizer / BertTokenizerFast), the BPE side matches ByteLevel +
// BPE (= OpenAI gpt-2 src/encoder.py, transformers' GPT2Tokenizer). Written here from those behaviours; no
// code is copied. Unicode data (general categories, NFD, case mapping) comes from ICU.
//
// Offsets are BYTE offsets into the UTF-8 text given to encode(), half-open [begin, end). Special tokens
// added by the post-processor and padding have {0, 0}. For a pair, sequence_ids says which text a token's
// offsets refer to. A byte-level BPE token may cover part of a multi-byte character, its offsets say so
// exactly (Hugging Face widens them to whole characters).
//
// Tokenizers are immutable after loading (set_pad_token aside) and encode/decode are safe to call from
// several threads at once: the BPE merge cache is internal and guarded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "graft/errors.h"

namespace graft {

// Text handed to a tokenizer that is not valid UTF-8 (truncated sequence, overlong form, surrogate, code
// point above U+10FFFF). offset() is the byte offset of the first bad byte.
class InvalidUtf8 : public Error {
 public:
  InvalidUtf8(size_t offset, const std::string& what)
      : Error("text is not valid UTF-8: " + what + " at byte offset " + std::to_string(offset)),
        offset_(offset) {}
  size_t offset() const { return offset_; }

 private:
  size_t offset_;
};

// A byte range [begin, end) of the input text.
struct Offset {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const Offset& other) const { return begin == other.begin && end == other.end; }
  bool operator!=(const Offset& other) const { return !(*this == other); }
};

// One encoded text (or pair of texts): parallel vectors, one entry per token, as Hugging Face's Encoding.
struct Encoding {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;      // vocabulary strings ("##ing", "Ġworld"); "[PAD]" etc. for padding
  std::vector<Offset> offsets;          // byte offsets into the text named by sequence_ids
  std::vector<int64_t> attention_mask;  // 1 for real tokens, 0 for padding
  std::vector<int64_t> token_type_ids;  // BERT segment ids: 0 for the first text, 1 for the second
  std::vector<int64_t> special_tokens_mask;  // 1 for post-processor special tokens and padding
  std::vector<int> sequence_ids;             // 0 or 1: which text; -1 for special tokens and padding
  size_t size() const { return ids.size(); }
};

enum class Truncation {
  kNone,          // never shorten (padding to max_length still only lengthens)
  kLongestFirst,  // Hugging Face longest_first: shorten the longer text first, split evenly when both must
  kOnlyFirst,     // shorten the first text only; throws when it is too short to absorb the excess
  kOnlySecond,    // the same for the second text of a pair
};

enum class Padding {
  kNone,
  kLongest,    // encode_batch: pad to the longest encoding of the batch (a single encode: nothing to do)
  kMaxLength,  // pad every encoding to EncodeOptions::max_length
};

struct EncodeOptions {
  bool add_special_tokens = true;  // BERT's [CLS] ... [SEP]; GPT-2 adds none
  Truncation truncation = Truncation::kNone;
  Padding padding = Padding::kNone;
  size_t max_length = 0;          // needed by truncation and Padding::kMaxLength; counts special tokens
  size_t pad_to_multiple_of = 0;  // 0: off; e.g. 8 rounds padded lengths up for tensor cores
  bool pad_left = false;          // pad on the left (decoder-only generation) instead of the right
};

// The common interface of every tokenizer. encode() splits out added/special tokens written literally in
// the text ("[MASK]", "<|endoftext|>"; they are never split), runs the model on the rest, then truncates,
// adds the template's special tokens and pads.
class Tokenizer {
 public:
  struct Core;  // vocabulary, added tokens, template, special ids (src/text/tokenizer_core.h)
  virtual ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // "wordpiece", "byte_bpe" or "sentencepiece_bpe".
  virtual std::string kind() const = 0;

  // Throws InvalidUtf8 for malformed text, graft::Error for texts over kMaxTextBytes and for options
  // that cannot be met (max_length smaller than the special tokens, padding without a pad token).
  Encoding encode(std::string_view text, const EncodeOptions& options = {}) const;
  Encoding encode_pair(std::string_view first, std::string_view second,
                       const EncodeOptions& options = {}) const;
  // Encodes on several threads when the batch is large; Padding::kLongest pads to the batch's longest.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     const EncodeOptions& options = {}) const;
  std::vector<Encoding> encode_pair_batch(const std::vector<std::pair<std::string, std::string>>& pairs,
                                          const EncodeOptions& options = {}) const;

  // Text back from ids. WordPiece joins pieces ("un", "##aff" -> "unaff") and words with spaces (the
  // original spacing, case and accents are gone); byte-level BPE gives back the exact bytes that were
  // encoded. skip_special_tokens drops special tokens ([CLS], [PAD], <|endoftext|>). Throws graft::Error
  // for an id outside the vocabulary.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const = 0;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  // Throws graft::Error for an id outside the vocabulary.
  const std::string& id_to_token(int64_t id) const;
  // One more than the largest id, added tokens included (30522 for bert-base-uncased, 50257 for GPT-2).
  size_t vocab_size() const;

  std::optional<int64_t> pad_id() const;
  std::optional<int64_t> unk_id() const;
  std::optional<int64_t> cls_id() const;
  std::optional<int64_t> sep_id() const;
  std::optional<int64_t> mask_id() const;
  std::optional<int64_t> bos_id() const;
  std::optional<int64_t> eos_id() const;
  // Chooses the padding token (GPT-2 has none; "<|endoftext|>" is the usual choice). Throws graft::Error
  // when the token is not in the vocabulary.
  void set_pad_token(const std::string& token);

  // Where the tokenizer was loaded from, for messages.
  const std::string& source() const;

 protected:
  explicit Tokenizer(std::unique_ptr<Core> core);
  const Core& core() const { return *core_; }

  // The model on one stretch of text free of added tokens: appends ids, tokens and offsets (shifted by
  // `base`, the stretch's byte position in the whole text) to `out`; the other fields are left alone.
  virtual void tokenize(std::string_view text, size_t base, Encoding& out) const = 0;

 private:
  Encoding encode_one(std::string_view text, int sequence_id) const;
  Encoding finish(Encoding first, std::optional<Encoding> second, const EncodeOptions& options) const;

  std::unique_ptr<Core> core_;
};

// Texts longer than this are refused before any work (1 GiB).
constexpr size_t kMaxTextBytes = size_t{1} << 30;

// How WordPieceTokenizer normalises and splits (BertNormalizer / BasicTokenizer settings).
struct WordPieceOptions {
  bool lowercase = true;              // do_lower_case (false for the cased checkpoints)
  std::optional<bool> strip_accents;  // unset: follow lowercase, as BERT does
  bool clean_text = true;             // drop NUL, U+FFFD and control characters; whitespace -> ' '
  bool handle_chinese_chars = true;   // spaces around CJK ideographs (not kana, not hangul)
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  size_t max_input_chars_per_word = 100;  // longer words become unk_token
  bool cleanup_decoded_spaces = true;     // decode: "hello ," -> "hello,", " n't" -> "n't" ...
};

// ByteBpeTokenizer's pre-tokenizer settings (Hugging Face ByteLevel).
struct ByteBpeOptions {
  bool add_prefix_space = false;  // RoBERTa-style: a space before text that does not start with one
  bool use_regex = true;          // false: no pre-tokenisation, the whole text is one word
  // A Digits pre-tokenizer before ByteLevel (SmolLM2, StarCoder): numbers (Unicode N*) split from the text
  // around them, each digit on its own when individual_digits, else each run of them.
  bool split_digits = false;
  bool individual_digits = false;
};

// BERT's tokenizer: BasicTokenizer (clean text, CJK ideograph splitting, lower-casing, accent stripping,
// whitespace and punctuation splitting) followed by greedy longest-match-first WordPiece with "##".
class WordPieceTokenizer final : public Tokenizer {
 public:
  using Options = WordPieceOptions;
  struct Model;  // src/text/wordpiece.cpp

  // vocab.txt: one token per line, line i (from 0) is id i. [CLS] $A [SEP] ([CLS] $A [SEP] $B [SEP] for
  // pairs) when those tokens exist; [PAD] [UNK] [CLS] [SEP] [MASK] are the special tokens.
  // Throws FormatError (file and line) for an empty file, an empty line or a duplicate token.
  static std::unique_ptr<WordPieceTokenizer> from_vocab_txt(const std::string& path,
                                                            const Options& options = {});
  // tokenizer.json with a WordPiece model (src/text/tokenizer_json.cpp).
  static std::unique_ptr<WordPieceTokenizer> from_tokenizer_json(const std::string& path);

  WordPieceTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model);
  ~WordPieceTokenizer() override;
  std::string kind() const override { return "wordpiece"; }
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const override;
  const Options& options() const;

 protected:
  void tokenize(std::string_view text, size_t base, Encoding& out) const override;

 private:
  std::unique_ptr<Model> model_;
};

// GPT-2's tokenizer: the GPT-2 pre-tokenisation pattern over code points, bytes mapped to printable
// characters (OpenAI's bytes_to_unicode table), then BPE merges by rank, with a per-instance cache of
// pre-token -> ids (thread-safe, bounded). "<|endoftext|>" is the eos (and bos) token.
class ByteBpeTokenizer final : public Tokenizer {
 public:
  using Options = ByteBpeOptions;
  struct Model;  // src/text/byte_bpe.cpp

  // vocab.json + merges.txt (Hugging Face names) or encoder.json + vocab.bpe (OpenAI names): a JSON
  // object token -> id, and one merge "a b" per line in rank order after an optional "#version" line.
  // Throws FormatError naming file, line and what was found.
  static std::unique_ptr<ByteBpeTokenizer> from_files(const std::string& vocab_json,
                                                      const std::string& merges_txt,
                                                      const Options& options = {});
  // tokenizer.json with a BPE model and a ByteLevel pre-tokenizer (src/text/tokenizer_json.cpp).
  static std::unique_ptr<ByteBpeTokenizer> from_tokenizer_json(const std::string& path);

  ByteBpeTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model);
  ~ByteBpeTokenizer() override;
  std::string kind() const override { return "byte_bpe"; }
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const override;
  const Options& options() const;

 protected:
  void tokenize(std::string_view text, size_t base, Encoding& out) const override;

 private:
  std::unique_ptr<Model> model_;
};

// Llama 2's tokenizer as tokenizer.json writes it (TinyLlama, Llama 2, Mistral 7B v0.1): SentencePiece's BPE
// on text whose spaces are "\u2581" with one more put in front of each stretch between added tokens (the
// normalizer Sequence [Prepend, Replace]), no pre-tokenisation, characters without a token spelled as
// their bytes (<0x41>) or <unk>, then merges by rank. Decoding turns "\u2581" back into spaces, bytes back
// into text, and drops the one space put in front.
struct SentencePieceBpeOptions {
  bool byte_fallback = true;  // unknown characters as <0xXX> byte tokens; false: <unk>
  bool fuse_unk = true;       // consecutive <unk> as one
  std::string unk_token = "<unk>";
};

class SentencePieceBpeTokenizer final : public Tokenizer {
 public:
  using Options = SentencePieceBpeOptions;
  struct Model;  // src/text/sentencepiece_bpe.cpp

  SentencePieceBpeTokenizer(std::unique_ptr<Core> core, std::unique_ptr<Model> model);
  ~SentencePieceBpeTokenizer() override;
  std::string kind() const override { return "sentencepiece_bpe"; }
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const override;

 protected:
  void tokenize(std::string_view text, size_t base, Encoding& out) const override;

 private:
  std::unique_ptr<Model> model_;
};

// Loads a tokenizer from a file or a Hugging Face model directory.
//  - a file: tokenizer.json (any name ending in .json holding a "model" object), vocab.txt (any other
//    .txt), vocab.json / encoder.json (merges.txt or vocab.bpe next to it);
//  - a directory: tokenizer.json if present, else vocab.txt, else vocab.json + merges.txt (or
//    encoder.json + vocab.bpe).
// A tokenizer_config.json in the directory (the file's directory for a file) supplies do_lower_case and
// strip_accents for WordPiece, and the pad/unk/bos/eos token names when present.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace graft
