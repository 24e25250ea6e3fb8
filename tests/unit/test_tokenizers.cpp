// Tokenizers (src/text): every golden line of shared/tokenizers (ids produced by Hugging Face tokenizers
// and cross-checked against transformers' BertTokenizer, OpenAI's encoder and tiktoken, see its README)
// through each loading path, byte-exact GPT-2 round trips, and hand-computed pairs, truncation, padding,
// masks, offsets, invalid UTF-8 and malformed files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "graft/errors.h"
#include "graft/tokenizer.h"
#include "graft/tokenizer_tensors.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kDir = std::string(GRAFT_SHARED_DIR) + "/tokenizers";

struct GoldenLine {
  size_t line = 0;
  std::string text;
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;
};

std::vector<GoldenLine> read_golden(const std::string& name) {
  std::ifstream in(kDir + "/" + name);
  EXPECT_TRUE(in) << "cannot open " << kDir << "/" << name;
  std::vector<GoldenLine> lines;
  std::string text;
  for (size_t n = 1; std::getline(in, text); ++n) {
    if (text.empty()) continue;
    const json doc = json::parse(text);
    lines.push_back({n, doc["text"].get<std::string>(), doc["ids"].get<std::vector<int64_t>>(),
                     doc["tokens"].get<std::vector<std::string>>()});
  }
  return lines;
}

std::string shorten(const std::string& text) {
  return text.size() > 80 ? text.substr(0, 77) + "..." : text;
}

template <typename T>
std::string join(const std::vector<T>& items, size_t from, size_t to) {
  std::ostringstream out;
  out << "[";
  for (size_t i = from; i < std::min(to, items.size()); ++i) out << (i > from ? ", " : "") << items[i];
  if (to < items.size()) out << ", ...";
  out << "]";
  return out.str();
}

// "" when equal, else where they first differ and both sides around it.
template <typename T>
std::string first_difference(const std::vector<T>& expected, const std::vector<T>& got) {
  size_t i = 0;
  while (i < expected.size() && i < got.size() && expected[i] == got[i]) ++i;
  if (i == expected.size() && i == got.size()) return "";
  const size_t from = i > 2 ? i - 2 : 0;
  std::ostringstream out;
  out << "first difference at position " << i << " (expected " << expected.size() << " items, got "
      << got.size() << "): expected " << join(expected, from, i + 4) << ", got " << join(got, from, i + 4);
  return out.str();
}

// Runs every golden line through `tokenizer`; returns how many matched exactly.
size_t check_golden(const Tokenizer& tokenizer, const std::string& file, bool check_tokens) {
  const auto lines = read_golden(file);
  size_t passed = 0;
  for (const auto& g : lines) {
    Encoding e;
    try {
      e = tokenizer.encode(g.text);
    } catch (const std::exception& ex) {
      ADD_FAILURE() << file << ":" << g.line << " '" << shorten(g.text) << "': threw " << ex.what();
      continue;
    }
    const std::string ids_diff = first_difference(g.ids, e.ids);
    const std::string tokens_diff = check_tokens ? first_difference(g.tokens, e.tokens) : "";
    EXPECT_EQ(ids_diff, "") << file << ":" << g.line << " via " << tokenizer.source() << ", text '"
                            << shorten(g.text) << "': ids differ, " << ids_diff;
    EXPECT_EQ(tokens_diff, "") << file << ":" << g.line << ", text '" << shorten(g.text)
                               << "': tokens differ, " << tokens_diff;
    if (ids_diff.empty() && tokens_diff.empty()) ++passed;
  }
  EXPECT_EQ(passed, lines.size()) << file << " via " << tokenizer.source();
  return passed;
}

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("graft_tok_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// The message of the FormatError `fn` throws ("" when it throws none).
template <typename Fn>
std::string format_error_of(Fn fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

class Tokenizers : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    bert_txt_ = WordPieceTokenizer::from_vocab_txt(kDir + "/bert-base-uncased/vocab.txt");
    bert_json_ =
        WordPieceTokenizer::from_tokenizer_json(kDir + "/tokenizer_json/bert-base-uncased.tokenizer.json");
    gpt2_files_ = ByteBpeTokenizer::from_files(kDir + "/gpt2/encoder.json", kDir + "/gpt2/vocab.bpe");
    gpt2_json_ = ByteBpeTokenizer::from_tokenizer_json(kDir + "/tokenizer_json/gpt2.tokenizer.json");
  }
  static void TearDownTestSuite() {
    bert_txt_.reset();
    bert_json_.reset();
    gpt2_files_.reset();
    gpt2_json_.reset();
  }
  static std::unique_ptr<WordPieceTokenizer> bert_txt_, bert_json_;
  static std::unique_ptr<ByteBpeTokenizer> gpt2_files_, gpt2_json_;
};
std::unique_ptr<WordPieceTokenizer> Tokenizers::bert_txt_, Tokenizers::bert_json_;
std::unique_ptr<ByteBpeTokenizer> Tokenizers::gpt2_files_, Tokenizers::gpt2_json_;

// ---------------------------------------------------------------------------------------------------
// Golden files
// ---------------------------------------------------------------------------------------------------

TEST_F(Tokenizers, WordPieceGoldenFromVocabTxt) {
  EXPECT_EQ(check_golden(*bert_txt_, "bert_uncased.jsonl", true), 43u);
}

TEST_F(Tokenizers, WordPieceGoldenFromTokenizerJson) {
  EXPECT_EQ(check_golden(*bert_json_, "bert_uncased.jsonl", true), 43u);
}

TEST_F(Tokenizers, BpeGoldenFromEncoderJsonAndVocabBpe) {
  EXPECT_EQ(check_golden(*gpt2_files_, "gpt2.jsonl", true), 42u);
}

TEST_F(Tokenizers, BpeGoldenFromTokenizerJson) {
  EXPECT_EQ(check_golden(*gpt2_json_, "gpt2.jsonl", true), 42u);
}

// SmolLM2's tokenizer.json (Sequence [Digits individual, ByteLevel], 17 added special tokens) against the
// Rust tokenizers' ids and tokens (shared/tokenizers/smollm2_135m_instruct/SOURCE.md): 42 texts, each with
// and without special tokens (the same here: no post-processor), including digits of other scripts
// (U+216B, U+2460) that Rust's is_numeric splits, and text after a special token.
TEST(TokenizerGolden, SmolLM2ByteLevelAfterDigits) {
  const auto tokenizer =
      ByteBpeTokenizer::from_tokenizer_json(kDir + "/smollm2_135m_instruct/tokenizer.json");
  EXPECT_EQ(check_golden(*tokenizer, "smollm2_135m_instruct/dev.jsonl", true), 84u);
  EXPECT_EQ(tokenizer->token_to_id("<|im_end|>"), std::optional<int64_t>(2));
  for (const auto& g : read_golden("smollm2_135m_instruct/dev.jsonl"))
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(g.text).ids, false), g.text) << "dev.jsonl:" << g.line;
  // Its vocabulary has no token for a few control bytes (0x04 among them): dropped, as Hugging Face's BPE
  // drops a character without a token when there is no unk_token.
  ASSERT_FALSE(tokenizer->token_to_id(std::string(1, '\x04')));
  EXPECT_EQ(tokenizer
                ->encode("a\x04"
                         "b")
                .ids,
            (std::vector<int64_t>{*tokenizer->token_to_id("a"), *tokenizer->token_to_id("b")}));
}

// TinyLlama's tokenizer.json (Llama 2's SentencePiece BPE: Prepend and Replace normalizers, byte
// fallback, <s> from a TemplateProcessing) against the Rust tokenizers' ids and tokens, each text with
// and without special tokens (tinyllama_chat/SOURCE.md), text after a special token included.
TEST(TokenizerGolden, TinyLlamaSentencePieceBpe) {
  const auto tokenizer = load_tokenizer(kDir + "/tinyllama_chat");
  EXPECT_EQ(tokenizer->kind(), "sentencepiece_bpe");
  std::ifstream in(kDir + "/tinyllama_chat/dev.jsonl");
  ASSERT_TRUE(in);
  size_t lines = 0, passed = 0;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const json doc = json::parse(line);
    EncodeOptions options;
    options.add_special_tokens = doc["add_special_tokens"].get<bool>();
    const Encoding e = tokenizer->encode(doc["text"].get<std::string>(), options);
    const std::string ids = first_difference(doc["ids"].get<std::vector<int64_t>>(), e.ids);
    const std::string tokens = first_difference(doc["tokens"].get<std::vector<std::string>>(), e.tokens);
    EXPECT_EQ(ids + tokens, "") << "dev.jsonl:" << n << " '" << shorten(doc["text"].get<std::string>())
                                << "'";
    ++lines;
    passed += ids.empty() && tokens.empty();
    // Decoding gives the text back (the space put in front left out), where it holds no special token
    // (decode leaves those out).
    const std::string text = doc["text"].get<std::string>();
    if (text.find("<s>") == std::string::npos && text.find("</s>") == std::string::npos &&
        text.find("<unk>") == std::string::npos)
      EXPECT_EQ(tokenizer->decode(e.ids), text) << "dev.jsonl:" << n;
  }
  EXPECT_EQ(lines, 84u);
  EXPECT_EQ(passed, lines);
}

TEST_F(Tokenizers, BpeDecodeGivesBackTheExactBytesOfEveryGoldenLine) {
  for (const auto* tokenizer : {gpt2_files_.get(), gpt2_json_.get()}) {
    for (const auto& g : read_golden("gpt2.jsonl")) {
      EXPECT_EQ(tokenizer->decode(g.ids), g.text) << "gpt2.jsonl:" << g.line << " decode(golden ids)";
      EXPECT_EQ(tokenizer->decode(tokenizer->encode(g.text).ids), g.text) << "gpt2.jsonl:" << g.line;
    }
  }
}

TEST_F(Tokenizers, BpeOffsetsTileTheTextAndEachTokenDecodesToItsBytes) {
  for (const auto& g : read_golden("gpt2.jsonl")) {
    const Encoding e = gpt2_files_->encode(g.text);
    size_t pos = 0;
    for (size_t i = 0; i < e.size(); ++i) {
      ASSERT_EQ(e.offsets[i].begin, pos) << "gpt2.jsonl:" << g.line << " token " << i;
      ASSERT_EQ(g.text.substr(e.offsets[i].begin, e.offsets[i].end - e.offsets[i].begin),
                gpt2_files_->decode({e.ids[i]}))
          << "gpt2.jsonl:" << g.line << " token " << i;
      pos = e.offsets[i].end;
    }
    EXPECT_EQ(pos, g.text.size()) << "gpt2.jsonl:" << g.line;
  }
}

TEST_F(Tokenizers, BatchOnThreadsEqualsOneByOne) {
  std::vector<std::string> texts;
  for (int copy = 0; copy < 20; ++copy) {
    for (const auto& g : read_golden("gpt2.jsonl")) texts.push_back(g.text);
  }
  for (const Tokenizer* tokenizer :
       {static_cast<const Tokenizer*>(gpt2_files_.get()), static_cast<const Tokenizer*>(bert_txt_.get())}) {
    const auto batch = tokenizer->encode_batch(texts);
    ASSERT_EQ(batch.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
      EXPECT_EQ(batch[i].ids, tokenizer->encode(texts[i]).ids)
          << "text " << i << " '" << shorten(texts[i]) << "'";
    }
  }
}

TEST_F(Tokenizers, LongTextsGiveTheTokensOfTheirParts) {
  // The 276-token golden paragraph, 600 times (~400 KB): WordPiece works through it in 64 KiB pieces,
  // GPT-2 streams its pre-tokenizer; both must give exactly the paragraph's tokens again and again.
  const GoldenLine paragraph = read_golden("gpt2.jsonl")[41];
  ASSERT_GT(paragraph.ids.size(), 200u);
  std::string text;
  std::vector<int64_t> expected_bpe;
  EncodeOptions no_special;
  no_special.add_special_tokens = false;
  const std::vector<int64_t> bert_paragraph = bert_txt_->encode(paragraph.text, no_special).ids;
  std::vector<int64_t> expected_bert;
  for (int copy = 0; copy < 600; ++copy) {
    if (copy) {
      text += "\n";
      expected_bpe.push_back(198);  // "\n"
    }
    text += paragraph.text;
    expected_bpe.insert(expected_bpe.end(), paragraph.ids.begin(), paragraph.ids.end());
    expected_bert.insert(expected_bert.end(), bert_paragraph.begin(), bert_paragraph.end());
  }
  ASSERT_GT(text.size(), 200000u);
  EXPECT_EQ(first_difference(expected_bpe, gpt2_files_->encode(text).ids), "");
  EncodeOptions plain;
  plain.add_special_tokens = false;
  const Encoding bert = bert_txt_->encode(text, plain);
  EXPECT_EQ(first_difference(expected_bert, bert.ids), "");
  EXPECT_EQ(bert.offsets.back(), (Offset{text.size() - 1, text.size()}));  // the final "."
}

// ---------------------------------------------------------------------------------------------------
// Vocabulary and special tokens
// ---------------------------------------------------------------------------------------------------

TEST_F(Tokenizers, VocabularyAndSpecialIds) {
  for (const WordPieceTokenizer* bert : {bert_txt_.get(), bert_json_.get()}) {
    EXPECT_EQ(bert->kind(), "wordpiece");
    EXPECT_EQ(bert->vocab_size(), 30522u);
    EXPECT_EQ(bert->pad_id(), 0);
    EXPECT_EQ(bert->unk_id(), 100);
    EXPECT_EQ(bert->cls_id(), 101);
    EXPECT_EQ(bert->sep_id(), 102);
    EXPECT_EQ(bert->mask_id(), 103);
    EXPECT_EQ(bert->token_to_id("hello"), 7592);
    EXPECT_EQ(bert->token_to_id("no-such-token"), std::nullopt);
    EXPECT_EQ(bert->id_to_token(2015), "##s");
    EXPECT_THROW(bert->id_to_token(30522), Error);
    EXPECT_THROW(bert->id_to_token(-1), Error);
  }
  for (const ByteBpeTokenizer* gpt2 : {gpt2_files_.get(), gpt2_json_.get()}) {
    EXPECT_EQ(gpt2->kind(), "byte_bpe");
    EXPECT_EQ(gpt2->vocab_size(), 50257u);
    EXPECT_EQ(gpt2->eos_id(), 50256);
    EXPECT_EQ(gpt2->bos_id(), 50256);
    EXPECT_EQ(gpt2->pad_id(), std::nullopt);
    EXPECT_EQ(gpt2->unk_id(), std::nullopt);
    EXPECT_EQ(gpt2->token_to_id("\u0120world"), 995);
    EXPECT_EQ(gpt2->id_to_token(50256), "<|endoftext|>");
  }
}

TEST_F(Tokenizers, SpecialTokensWrittenInTheTextStayWhole) {
  // "a[MASK]b": the added token is split out even inside a word, as Hugging Face does.
  EXPECT_EQ(bert_txt_->encode("a[MASK]b").ids, (std::vector<int64_t>{101, 1037, 103, 1038, 102}));
  EXPECT_EQ(bert_json_->encode("a[MASK]b").ids, (std::vector<int64_t>{101, 1037, 103, 1038, 102}));
  // Lower-case "[mask]" is text: "[", "mask", "]".
  EXPECT_EQ(bert_txt_->encode("[mask]").tokens,
            (std::vector<std::string>{"[CLS]", "[", "mask", "]", "[SEP]"}));
  for (const auto* gpt2 : {gpt2_files_.get(), gpt2_json_.get()}) {
    const Encoding e = gpt2->encode("Hello<|endoftext|>world");
    EXPECT_EQ(e.ids, (std::vector<int64_t>{15496, 50256, 6894}));
    EXPECT_EQ(e.offsets[1], (Offset{5, 18}));
    EXPECT_EQ(gpt2->decode(e.ids), "Helloworld");
    EXPECT_EQ(gpt2->decode(e.ids, /*skip_special_tokens=*/false), "Hello<|endoftext|>world");
  }
}

TEST_F(Tokenizers, WordPieceLongWordsBecomeUnknown) {
  // 100 characters is still split into pieces; 101 is [UNK], offsets covering the whole word.
  const Encoding hundred = bert_txt_->encode(std::string(100, 'a'));
  ASSERT_EQ(hundred.size(), 52u);  // [CLS] "aaa", 48 x "##aa", "##a" [SEP]: greedy longest first
  EXPECT_EQ(hundred.ids[1], 13360);
  EXPECT_EQ(hundred.ids[2], 11057);
  const Encoding long_word = bert_txt_->encode(std::string(101, 'a') + " b");
  EXPECT_EQ(long_word.ids, (std::vector<int64_t>{101, 100, 1038, 102}));
  EXPECT_EQ(long_word.offsets[1], (Offset{0, 101}));
}

// ---------------------------------------------------------------------------------------------------
// Pairs, truncation, padding, masks
// ---------------------------------------------------------------------------------------------------

TEST_F(Tokenizers, WordPiecePairHasSegmentsAndMasks) {
  const Encoding e = bert_txt_->encode_pair("hello world", "how are you");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{101, 7592, 2088, 102, 2129, 2024, 2017, 102}));
  EXPECT_EQ(e.tokens,
            (std::vector<std::string>{"[CLS]", "hello", "world", "[SEP]", "how", "are", "you", "[SEP]"}));
  EXPECT_EQ(e.token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(e.attention_mask, (std::vector<int64_t>(8, 1)));
  EXPECT_EQ(e.special_tokens_mask, (std::vector<int64_t>{1, 0, 0, 1, 0, 0, 0, 1}));
  EXPECT_EQ(e.sequence_ids, (std::vector<int>{-1, 0, 0, -1, 1, 1, 1, -1}));
  // Offsets of the second text point into the second text.
  EXPECT_EQ(e.offsets,
            (std::vector<Offset>{{0, 0}, {0, 5}, {6, 11}, {0, 0}, {0, 3}, {4, 7}, {8, 11}, {0, 0}}));
  EXPECT_EQ(bert_json_->encode_pair("hello world", "how are you").ids, e.ids);

  EncodeOptions plain;
  plain.add_special_tokens = false;
  const Encoding bare = bert_txt_->encode_pair("hello world", "how are you", plain);
  EXPECT_EQ(bare.ids, (std::vector<int64_t>{7592, 2088, 2129, 2024, 2017}));
  EXPECT_EQ(bare.token_type_ids, (std::vector<int64_t>{0, 0, 1, 1, 1}));
}

TEST_F(Tokenizers, TruncationLongestFirst) {
  EncodeOptions o;
  o.truncation = Truncation::kLongestFirst;
  // One text: 6 words + [CLS] [SEP] cut to 6 tokens.
  o.max_length = 6;
  EXPECT_EQ(bert_txt_->encode("one two three four five six", o).ids,
            (std::vector<int64_t>{101, 2028, 2048, 2093, 2176, 102}));
  // Pair 6 + 2 words, max_length 8: 5 for the texts; the short one fits (2), the long one gets 3.
  o.max_length = 8;
  Encoding e = bert_txt_->encode_pair("one two three four five six", "a b", o);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{101, 2028, 2048, 2093, 102, 1037, 1038, 102}));
  // Both 6 words, max_length 10: 7 for the texts, split 3 / 4 (the odd one to the second).
  o.max_length = 10;
  e = bert_txt_->encode_pair("one two three four five six", "a b c d e f", o);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{101, 2028, 2048, 2093, 102, 1037, 1038, 1039, 1040, 102}));
  EXPECT_EQ(e.token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  // The second longer: 2 + 6 words, max_length 7: 4 for the texts, the short one keeps 2.
  o.max_length = 7;
  e = bert_txt_->encode_pair("a b", "one two three four five six", o);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{101, 1037, 1038, 102, 2028, 2048, 102}));
  // Nothing to cut: unchanged.
  o.max_length = 100;
  EXPECT_EQ(bert_txt_->encode_pair("a b", "c", o).ids,
            (std::vector<int64_t>{101, 1037, 1038, 102, 1039, 102}));
  // No room for the special tokens.
  o.max_length = 2;
  EXPECT_THROW(bert_txt_->encode_pair("a", "b", o), Error);
}

TEST_F(Tokenizers, TruncationOnlyFirstAndOnlySecond) {
  EncodeOptions o;
  o.max_length = 7;
  o.truncation = Truncation::kOnlyFirst;
  EXPECT_EQ(bert_txt_->encode_pair("one two three four", "a b", o).ids,
            (std::vector<int64_t>{101, 2028, 2048, 102, 1037, 1038, 102}));
  o.truncation = Truncation::kOnlySecond;
  EXPECT_EQ(bert_txt_->encode_pair("a b", "one two three four", o).ids,
            (std::vector<int64_t>{101, 1037, 1038, 102, 2028, 2048, 102}));
  // The first text is too short to absorb the excess.
  o.truncation = Truncation::kOnlyFirst;
  EXPECT_THROW(bert_txt_->encode_pair("a b", "one two three four", o), Error);
  o.truncation = Truncation::kOnlySecond;
  EXPECT_THROW(bert_txt_->encode("one two three four five six", o), Error);
}

TEST_F(Tokenizers, PaddingToMaxLengthAndToTheLongestOfABatch) {
  EncodeOptions o;
  o.padding = Padding::kMaxLength;
  o.max_length = 6;
  Encoding e = bert_txt_->encode("hello world", o);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{101, 7592, 2088, 102, 0, 0}));
  EXPECT_EQ(e.tokens, (std::vector<std::string>{"[CLS]", "hello", "world", "[SEP]", "[PAD]", "[PAD]"}));
  EXPECT_EQ(e.attention_mask, (std::vector<int64_t>{1, 1, 1, 1, 0, 0}));
  EXPECT_EQ(e.token_type_ids, (std::vector<int64_t>{0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(e.special_tokens_mask, (std::vector<int64_t>{1, 0, 0, 1, 1, 1}));
  EXPECT_EQ(e.offsets[5], (Offset{0, 0}));
  // Without truncation, padding never shortens.
  EXPECT_EQ(bert_txt_->encode("one two three four five six", o).size(), 8u);

  o.pad_left = true;
  EXPECT_EQ(bert_txt_->encode("hello world", o).ids, (std::vector<int64_t>{0, 0, 101, 7592, 2088, 102}));
  EXPECT_EQ(bert_txt_->encode("hello world", o).attention_mask, (std::vector<int64_t>{0, 0, 1, 1, 1, 1}));

  EncodeOptions longest;
  longest.padding = Padding::kLongest;
  auto batch = bert_txt_->encode_batch({"hello", "how are you", "a b"}, longest);
  EXPECT_EQ(batch[0].ids, (std::vector<int64_t>{101, 7592, 102, 0, 0}));
  EXPECT_EQ(batch[1].ids, (std::vector<int64_t>{101, 2129, 2024, 2017, 102}));
  EXPECT_EQ(batch[2].ids, (std::vector<int64_t>{101, 1037, 1038, 102, 0}));
  EXPECT_EQ(batch[2].attention_mask, (std::vector<int64_t>{1, 1, 1, 1, 0}));
  longest.pad_to_multiple_of = 4;
  batch = bert_txt_->encode_batch({"hello", "how are you"}, longest);
  EXPECT_EQ(batch[0].size(), 8u);
  EXPECT_EQ(batch[1].size(), 8u);

  // Truncate and pad together, on pairs.
  EncodeOptions both;
  both.truncation = Truncation::kLongestFirst;
  both.padding = Padding::kMaxLength;
  both.max_length = 9;
  const auto pairs =
      bert_txt_->encode_pair_batch({{"hello", "world"}, {"one two three four five six", "a b"}}, both);
  EXPECT_EQ(pairs[0].ids, (std::vector<int64_t>{101, 7592, 102, 2088, 102, 0, 0, 0, 0}));
  EXPECT_EQ(pairs[0].token_type_ids, (std::vector<int64_t>{0, 0, 0, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(pairs[1].ids, (std::vector<int64_t>{101, 2028, 2048, 2093, 2176, 102, 1037, 1038, 102}));

  // max_length is required.
  EncodeOptions missing;
  missing.padding = Padding::kMaxLength;
  EXPECT_THROW(bert_txt_->encode("a", missing), Error);
}

TEST_F(Tokenizers, PaddedBatchAsTensors) {
  EncodeOptions longest;
  longest.padding = Padding::kLongest;
  const EncodedBatch t = to_tensors(bert_txt_->encode_batch({"hello", "how are you"}, longest));
  EXPECT_EQ(t.input_ids.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(t.input_ids.scalar_type(), torch::kLong);
  EXPECT_TRUE(torch::equal(
      t.input_ids,
      torch::tensor({101, 7592, 102, 0, 0, 101, 2129, 2024, 2017, 102}, torch::kLong).view({2, 5})));
  EXPECT_TRUE(torch::equal(t.attention_mask,
                           torch::tensor({1, 1, 1, 0, 0, 1, 1, 1, 1, 1}, torch::kLong).view({2, 5})));
  EXPECT_EQ(t.token_type_ids.sum().item<int64_t>(), 0);
  EXPECT_THROW(to_tensors(bert_txt_->encode_batch({"hello", "how are you"})), Error);  // not padded
}

TEST(TokenizerPadding, Gpt2HasNoPadTokenUntilOneIsChosen) {
  auto gpt2 = ByteBpeTokenizer::from_files(kDir + "/gpt2/encoder.json", kDir + "/gpt2/vocab.bpe");
  EncodeOptions o;
  o.padding = Padding::kLongest;
  EXPECT_THROW(gpt2->encode_batch({"Hello, world!", "Hello"}, o), Error);
  EXPECT_THROW(gpt2->encode_batch({"Hello", "Hello"}, o), Error);  // even when nothing needs padding
  gpt2->set_pad_token("<|endoftext|>");
  const auto batch = gpt2->encode_batch({"Hello, world!", "Hello"}, o);
  EXPECT_EQ(batch[1].ids, (std::vector<int64_t>{15496, 50256, 50256, 50256}));
  EXPECT_EQ(batch[1].attention_mask, (std::vector<int64_t>{1, 0, 0, 0}));
  EXPECT_THROW(gpt2->set_pad_token("<no such token>"), Error);
  // GPT-2 adds no special tokens; a pair is the two texts, type ids 0 then 1.
  const Encoding pair = gpt2->encode_pair("Hello", ",");
  EXPECT_EQ(pair.ids, (std::vector<int64_t>{15496, 11}));
  EXPECT_EQ(pair.token_type_ids, (std::vector<int64_t>{0, 1}));
}

// ---------------------------------------------------------------------------------------------------
// Offsets and decoding
// ---------------------------------------------------------------------------------------------------

TEST_F(Tokenizers, WordPieceByteOffsetsIntoTheOriginalText) {
  Encoding e = bert_txt_->encode("Hello, world!");
  EXPECT_EQ(e.offsets, (std::vector<Offset>{{0, 0}, {0, 5}, {5, 6}, {7, 12}, {12, 13}, {0, 0}}));
  // Pieces of one word; an accented letter (2 bytes) lower-cased and stripped; CJK ideographs (3 bytes).
  e = bert_txt_->encode("tabs Caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC");
  EXPECT_EQ(e.tokens, (std::vector<std::string>{"[CLS]", "tab", "##s", "cafe", "\xE6\x9D\xB1", "\xE4\xBA\xAC",
                                                "[SEP]"}));
  EXPECT_EQ(e.offsets, (std::vector<Offset>{{0, 0}, {0, 3}, {3, 4}, {5, 10}, {11, 14}, {14, 17}, {0, 0}}));
  EXPECT_EQ(bert_json_->encode("tabs Caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC").offsets, e.offsets);
  // Dropped control characters shift nothing.
  e = bert_txt_->encode(
      "a\x07"
      "b c");
  EXPECT_EQ(e.offsets[1], (Offset{0, 3}));
  EXPECT_EQ(e.offsets[2].begin, 4u);
}

TEST_F(Tokenizers, BpeOffsetsAndPrefixSpace) {
  const Encoding e = gpt2_files_->encode("Hello, world!");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{15496, 11, 995, 0}));
  EXPECT_EQ(e.offsets, (std::vector<Offset>{{0, 5}, {5, 6}, {6, 12}, {12, 13}}));
  ByteBpeTokenizer::Options prefix;
  prefix.add_prefix_space = true;
  auto roberta_style =
      ByteBpeTokenizer::from_files(kDir + "/gpt2/encoder.json", kDir + "/gpt2/vocab.bpe", prefix);
  const Encoding w = roberta_style->encode("world");
  EXPECT_EQ(w.ids, (std::vector<int64_t>{995}));  // "\u0120world"
  EXPECT_EQ(w.offsets, (std::vector<Offset>{{0, 5}}));
}

TEST_F(Tokenizers, WordPieceDecodeJoinsPiecesAndCleansSpaces) {
  EXPECT_EQ(bert_txt_->decode(bert_txt_->encode("Hello, world!").ids), "hello, world!");
  EXPECT_EQ(bert_txt_->decode(bert_txt_->encode("I'm fine, tabs aren't!").ids), "i'm fine, tabs aren't!");
  EXPECT_EQ(bert_txt_->decode({101, 21628, 2015, 102}, /*skip_special_tokens=*/false), "[CLS] tabs [SEP]");
  EXPECT_EQ(bert_json_->decode({101, 21628, 2015, 102}), "tabs");
  EXPECT_THROW(bert_txt_->decode({1, 999999}), Error);
}

// ---------------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------------

TEST_F(Tokenizers, InvalidUtf8NamesTheByteOffset) {
  const auto offset_of = [&](const std::string& text) -> long {
    for (const Tokenizer* t :
         {static_cast<const Tokenizer*>(bert_txt_.get()), static_cast<const Tokenizer*>(gpt2_files_.get())}) {
      try {
        t->encode(text);
        ADD_FAILURE() << "no error for invalid UTF-8";
      } catch (const InvalidUtf8& e) {
        EXPECT_NE(std::string(e.what()).find("offset " + std::to_string(e.offset())), std::string::npos)
            << e.what();
        if (t == gpt2_files_.get()) return static_cast<long>(e.offset());
      }
    }
    return -1;
  };
  EXPECT_EQ(offset_of("abc\xC3"), 3);  // cut short by the end
  EXPECT_EQ(offset_of("ab\x80"
                      "cd"),
            2);                                     // continuation byte without a lead
  EXPECT_EQ(offset_of("x\xC0\xAF"), 1);             // overlong '/'
  EXPECT_EQ(offset_of("12345678\xED\xA0\x80"), 8);  // UTF-16 surrogate, after the 8-byte fast path
  EXPECT_EQ(offset_of("\xF4\x90\x80\x80"), 0);      // above U+10FFFF
  EXPECT_EQ(offset_of("\xFF"), 0);                  // never in UTF-8
  EXPECT_EQ(offset_of("\xE2\x82x"), 2);             // bad third byte: offset of that byte
  EXPECT_EQ(offset_of("ok \xE2\x82\xAC then \xF0\x9F"), 12);
  // Valid 1-4 byte sequences pass.
  EXPECT_NO_THROW(gpt2_files_->encode("a \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF"));
}

TEST(TokenizerFiles, MalformedVocabTxt) {
  EXPECT_NE(format_error_of([] {
              WordPieceTokenizer::from_vocab_txt(write_file("empty.txt", ""));
            }).find("is empty"),
            std::string::npos);
  const std::string duplicate =
      format_error_of([] { WordPieceTokenizer::from_vocab_txt(write_file("dup.txt", "[UNK]\na\nb\na\n")); });
  EXPECT_NE(duplicate.find("dup.txt"), std::string::npos) << duplicate;
  EXPECT_NE(duplicate.find("line 4: token 'a' already appears on line 2"), std::string::npos) << duplicate;
  const std::string blank =
      format_error_of([] { WordPieceTokenizer::from_vocab_txt(write_file("blank.txt", "[UNK]\n\nb\n")); });
  EXPECT_NE(blank.find("line 2 is empty"), std::string::npos) << blank;
  const std::string no_unk =
      format_error_of([] { WordPieceTokenizer::from_vocab_txt(write_file("nounk.txt", "a\nb\n")); });
  EXPECT_NE(no_unk.find("'[UNK]' is not in the vocabulary"), std::string::npos) << no_unk;
  const std::string bad_utf8 = format_error_of(
      [] { WordPieceTokenizer::from_vocab_txt(write_file("badutf8.txt", "[UNK]\na\xC3\n")); });
  EXPECT_NE(bad_utf8.find("line 2"), std::string::npos) << bad_utf8;
  // CRLF files read like LF files.
  auto crlf = WordPieceTokenizer::from_vocab_txt(write_file("crlf.txt", "[UNK]\r\nhello\r\n##s\r\n"));
  EXPECT_EQ(crlf->encode("hellos").ids, (std::vector<int64_t>{1, 2}));
  EXPECT_THROW(WordPieceTokenizer::from_vocab_txt(temp_path("does_not_exist.txt")), Error);
}

// A complete byte alphabet (OpenAI's bytes_to_unicode: printable Latin-1 bytes as themselves, the rest as
// U+0100...), byte b having id b, then `extra` tokens from id 256.
json byte_vocab(const std::vector<std::string>& extra) {
  json vocab = json::object();
  int next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    vocab[s] = b;
  }
  int64_t id = 256;
  for (const auto& token : extra) vocab[token] = id++;
  return vocab;
}

TEST(TokenizerFiles, MalformedEncoderJsonAndMerges) {
  const std::string merges = write_file("ok_merges.txt", "#version: 0.2\nh e\n");
  const std::string array =
      format_error_of([&] { ByteBpeTokenizer::from_files(write_file("array.json", "[1, 2]"), merges); });
  EXPECT_NE(array.find("expected an object token -> id"), std::string::npos) << array;
  const std::string string_id = format_error_of(
      [&] { ByteBpeTokenizer::from_files(write_file("strid.json", "{\"a\": 0, \"b\": \"1\"}"), merges); });
  EXPECT_NE(string_id.find("entry \"b\" is string \"1\", expected an integer id"), std::string::npos)
      << string_id;
  const std::string not_json = format_error_of(
      [&] { ByteBpeTokenizer::from_files(write_file("notjson.json", "{\"a\": 0,"), merges); });
  EXPECT_NE(not_json.find("is not valid JSON"), std::string::npos) << not_json;
  const std::string same_id = format_error_of(
      [&] { ByteBpeTokenizer::from_files(write_file("sameid.json", "{\"a\": 0, \"b\": 0}"), merges); });
  EXPECT_NE(same_id.find("id 0 is used by both"), std::string::npos) << same_id;
  const std::string huge_id = format_error_of(
      [&] { ByteBpeTokenizer::from_files(write_file("hugeid.json", "{\"a\": 99999999999}"), merges); });
  EXPECT_NE(huge_id.find("expected 0 <= id <"), std::string::npos) << huge_id;

  const std::string vocab = write_file("vocab.json", byte_vocab({"he", "hel"}).dump());
  auto ok = ByteBpeTokenizer::from_files(vocab, merges);
  EXPECT_EQ(ok->encode("hel").ids, (std::vector<int64_t>{256, 'l'}));
  const std::string three = format_error_of(
      [&] { ByteBpeTokenizer::from_files(vocab, write_file("three.txt", "#version: 0.2\nh e\nhe l x\n")); });
  EXPECT_NE(three.find("three.txt: line 3: expected two tokens separated by one space"), std::string::npos)
      << three;
  const std::string one =
      format_error_of([&] { ByteBpeTokenizer::from_files(vocab, write_file("one.txt", "h e\nhel\n")); });
  EXPECT_NE(one.find("line 2"), std::string::npos) << one;
  const std::string unknown =
      format_error_of([&] { ByteBpeTokenizer::from_files(vocab, write_file("unknown.txt", "h e\nhe y\n")); });
  EXPECT_NE(unknown.find("line 2: merge 'he y' makes 'hey', which is not in the vocabulary"),
            std::string::npos)
      << unknown;
  const std::string no_bytes = format_error_of(
      [&] { ByteBpeTokenizer::from_files(write_file("nobytes.json", "{\"a\": 0}"), merges); });
  EXPECT_NE(no_bytes.find("no token for 255 of the 256 bytes"), std::string::npos) << no_bytes;
}

TEST(TokenizerFiles, MalformedTokenizerJson) {
  const auto error_of_json = [](const std::string& name, const json& doc) {
    const std::string path = write_file(name, doc.dump());
    return format_error_of([&] { load_tokenizer(path); });
  };
  json unigram = {{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}};
  std::string e = error_of_json("unigram.json", unigram);
  EXPECT_NE(e.find("field 'model.type' is 'Unigram'; graft reads 'WordPiece' (BERT) and 'BPE' (GPT-2, Llama "
                   "2) models"),
            std::string::npos)
      << e;
  json no_vocab = {{"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}}},
                   {"normalizer", nullptr},
                   {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  e = error_of_json("novocab.json", no_vocab);
  EXPECT_NE(e.find("field 'model.vocab' is missing"), std::string::npos) << e;
  json bad_normalizer = {{"model", {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}}},
                         {"normalizer", {{"type", "NFKC"}}},
                         {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  e = error_of_json("badnorm.json", bad_normalizer);
  EXPECT_NE(e.find("field 'normalizer.type' is 'NFKC'"), std::string::npos) << e;
  json metaspace = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array()}}},
                    {"pre_tokenizer", {{"type", "Metaspace"}}}};
  e = error_of_json("metaspace.json", metaspace);
  EXPECT_NE(e.find("field 'pre_tokenizer.type' is 'Metaspace'"), std::string::npos) << e;
  json bad_added = {{"model", {{"type", "WordPiece"}, {"vocab", {{"[UNK]", 0}}}}},
                    {"added_tokens", {{{"id", "zero"}, {"content", "[UNK]"}}}},
                    {"normalizer", nullptr},
                    {"pre_tokenizer", {{"type", "BertPreTokenizer"}}}};
  e = error_of_json("badadded.json", bad_added);
  EXPECT_NE(e.find("field 'added_tokens[0].id' is string \"zero\", expected an integer"), std::string::npos)
      << e;
  e = format_error_of(
      [] { WordPieceTokenizer::from_tokenizer_json(kDir + "/tokenizer_json/gpt2.tokenizer.json"); });
  EXPECT_NE(e.find("expected WordPiece"), std::string::npos) << e;
}

// ---------------------------------------------------------------------------------------------------
// load_tokenizer
// ---------------------------------------------------------------------------------------------------

TEST(TokenizerLoad, FilesAndDirectories) {
  EXPECT_EQ(load_tokenizer(kDir + "/bert-base-uncased")->kind(), "wordpiece");
  EXPECT_EQ(load_tokenizer(kDir + "/bert-base-uncased/vocab.txt")->encode("Hello").ids,
            (std::vector<int64_t>{101, 7592, 102}));
  EXPECT_EQ(load_tokenizer(kDir + "/gpt2")->encode("Hello, world!").ids,
            (std::vector<int64_t>{15496, 11, 995, 0}));
  EXPECT_EQ(load_tokenizer(kDir + "/gpt2/encoder.json")->kind(), "byte_bpe");
  EXPECT_EQ(load_tokenizer(kDir + "/tokenizer_json/gpt2.tokenizer.json")->kind(), "byte_bpe");
  EXPECT_EQ(load_tokenizer(kDir + "/tokenizer_json/bert-base-uncased.tokenizer.json")->kind(), "wordpiece");
  EXPECT_THROW(load_tokenizer(temp_path("nowhere")), Error);

  // A model directory: tokenizer.json wins over vocab.txt, and tokenizer_config.json's do_lower_case
  // applies (cased: "Hello" is not in the uncased vocabulary, so [UNK]).
  const fs::path dir = temp_path("model_dir");
  fs::create_directories(dir);
  fs::copy_file(kDir + "/bert-base-uncased/vocab.txt", dir / "vocab.txt",
                fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"do_lower_case": false, "pad_token": {"content": "[MASK]"}})";
  auto cased = load_tokenizer(dir.string());
  EXPECT_EQ(cased->encode("Hello hello").ids, (std::vector<int64_t>{101, 100, 7592, 102}));
  EXPECT_EQ(cased->pad_id(), 103);
  fs::copy_file(kDir + "/tokenizer_json/bert-base-uncased.tokenizer.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  auto cased_json = load_tokenizer(dir.string());
  EXPECT_EQ(cased_json->encode("Hello hello").ids, (std::vector<int64_t>{101, 100, 7592, 102}));
  std::ofstream(dir / "tokenizer_config.json") << R"({"do_lower_case": "yes"})";
  EXPECT_THROW(load_tokenizer(dir.string()), FormatError);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
