// The model-independent half of every tokenizer (see graft/tokenizer.h): splitting added tokens out of the
// raw text, truncation, the post-processing template, padding and batches. The rules follow Hugging Face
// `tokenizers` (src/tokenizer/added_vocabulary.rs, src/utils/truncation.rs, src/processors/template.rs,
// src/utils/padding.rs): longest_first truncation shortens the longer text first and splits max_length
// evenly when both are too long; padding tokens get attention 0, type id 0 and offsets {0, 0}.
#include <algorithm>
#include <atomic>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "text/tokenizer_core.h"
#include "text/unicode.h"

namespace graft {

std::string read_tokenizer_file(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(path + ": cannot read the tokenizer file (" + ec.message() + ")");
  if (size > kMaxTokenizerFileBytes) {
    throw FormatError(path, "is " + std::to_string(size) + " bytes, over the " +
                                std::to_string(kMaxTokenizerFileBytes) + "-byte limit for a tokenizer file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the tokenizer file");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<uintmax_t>(in.gcount()) != size) throw Error(path + ": read failed part way");
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// Core
// ---------------------------------------------------------------------------------------------------

void Tokenizer::Core::set_vocab(std::vector<std::string> id_to_token) {
  vocab = std::move(id_to_token);
  special.assign(vocab.size(), 0);
  ids.clear();
  ids.reserve(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (!vocab[id].empty()) ids.emplace(vocab[id], static_cast<int64_t>(id));
  }
}

void Tokenizer::Core::add_token(const AddedToken& token) {
  if (token.content.empty()) throw Error(source + ": an added token is empty");
  if (token.id < 0 || token.id >= kMaxVocabSize) {
    throw Error(source + ": added token '" + token.content + "' has id " + std::to_string(token.id) +
                ", expected 0 <= id < " + std::to_string(kMaxVocabSize));
  }
  if (token.id >= static_cast<int64_t>(vocab.size()) + kMaxVocabIdGap) {
    throw Error(source + ": added token '" + token.content + "' has id " + std::to_string(token.id) +
                ", more than " + std::to_string(kMaxVocabIdGap) + " past the vocabulary's " +
                std::to_string(vocab.size()) + " entries (ids must follow on from the vocabulary)");
  }
  const auto id = static_cast<size_t>(token.id);
  if (id >= vocab.size()) {
    vocab.resize(id + 1);
    special.resize(id + 1, 0);
  }
  if (vocab[id].empty()) vocab[id] = token.content;
  ids[token.content] = token.id;
  if (token.special) special[id] = 1;
  for (auto& existing : added) {
    if (existing.content == token.content) {
      existing = token;
      return;
    }
  }
  added.push_back(token);
}

void Tokenizer::Core::finalize() {
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  added_first_byte.fill(false);
  for (const auto& token : added) {
    added_first_byte[static_cast<unsigned char>(token.content[0])] = true;
    // lstrip tokens may start their match at whitespace.
    if (token.lstrip) {
      for (unsigned char c : {' ', '\t', '\n', '\r', '\v', '\f'}) added_first_byte[c] = true;
      for (int c = 0x80; c < 0x100; ++c) added_first_byte[c] = true;
    }
  }
}

std::optional<int64_t> Tokenizer::Core::find(std::string_view token) const {
  const auto it = ids.find(std::string(token));
  if (it == ids.end()) return std::nullopt;
  return it->second;
}

size_t Tokenizer::Core::added_by_template(bool pair) const {
  size_t count = 0;
  for (const auto& piece : pair ? pair_template : single_template) count += piece.ids.size();
  return count;
}

void Tokenizer::Core::use_bert_template(int64_t cls_id, int64_t sep_id) {
  const auto special_piece = [&](int64_t id, int64_t type_id) {
    return TemplatePiece{-1, {id}, {vocab[static_cast<size_t>(id)]}, type_id};
  };
  single_template = {special_piece(cls_id, 0), TemplatePiece{0, {}, {}, 0}, special_piece(sep_id, 0)};
  pair_template = {special_piece(cls_id, 0), TemplatePiece{0, {}, {}, 0}, special_piece(sep_id, 0),
                   TemplatePiece{1, {}, {}, 1}, special_piece(sep_id, 1)};
}

BpeMerges::BpeMerges(const Tokenizer::Core& core, const std::vector<MergeRule>& rules,
                     const std::string& merges_source, const std::string& location_word) {
  if (rules.size() > static_cast<size_t>(kMaxVocabSize)) {
    throw FormatError(merges_source, "has " + std::to_string(rules.size()) + " merges, over the limit of " +
                                         std::to_string(kMaxVocabSize));
  }
  table_.reserve(rules.size());
  for (size_t rank = 0; rank < rules.size(); ++rank) {
    const MergeRule& rule = rules[rank];
    const auto where = [&] { return location_word + " " + std::to_string(rule.line); };
    const auto left = core.find(rule.left);
    const auto right = core.find(rule.right);
    const auto merged = core.find(rule.left + rule.right);
    for (const auto& [id, name] : {std::pair{left, &rule.left}, std::pair{right, &rule.right}}) {
      if (!id) {
        throw FormatError(merges_source, where() + ": merge '" + rule.left + " " + rule.right + "': '" +
                                             *name + "' is not in the vocabulary (" + core.source + ")");
      }
    }
    if (!merged) {
      throw FormatError(merges_source, where() + ": merge '" + rule.left + " " + rule.right + "' makes '" +
                                           rule.left + rule.right + "', which is not in the vocabulary (" +
                                           core.source + ")");
    }
    const uint64_t key = (uint64_t(uint32_t(*left)) << 32) | uint32_t(*right);
    table_.emplace(key, Merge{static_cast<int32_t>(rank), static_cast<int32_t>(*merged)});
  }
}

void Tokenizer::Core::guess_special_ids() {
  const auto first_of = [&](std::optional<int64_t>& slot, std::initializer_list<const char*> names) {
    if (slot) return;
    for (const char* name : names) {
      if (auto id = find(name)) {
        slot = id;
        return;
      }
    }
  };
  first_of(pad, {"[PAD]", "<pad>"});
  first_of(unk, {"[UNK]", "<unk>"});
  first_of(cls, {"[CLS]", "<s>"});
  first_of(sep, {"[SEP]", "</s>"});
  first_of(mask, {"[MASK]", "<mask>"});
  first_of(bos, {"<s>", "<|endoftext|>"});
  first_of(eos, {"</s>", "<|endoftext|>"});
}

// ---------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------

namespace {

bool is_word_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}

// Length of the whitespace code point starting at `pos`, 0 if none.
size_t whitespace_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  size_t p = pos;
  return text::is_white_space(text::next_code_point(text, p)) ? p - pos : 0;
}

struct AddedMatch {
  size_t begin = 0;  // the match, whitespace swallowed by lstrip/rstrip included
  size_t end = 0;
  const AddedToken* token = nullptr;
};

// The leftmost added token in text[from:], the longest one where several start at the same byte.
std::optional<AddedMatch> find_added(const Tokenizer::Core& core, std::string_view text, size_t from) {
  if (core.added.empty()) return std::nullopt;
  for (size_t pos = from; pos < text.size(); ++pos) {
    const auto byte = static_cast<unsigned char>(text[pos]);
    if (!core.added_first_byte[byte] || (byte & 0xC0) == 0x80) continue;  // (inside a character)
    for (const auto& token : core.added) {
      size_t begin = pos;
      if (token.lstrip) {
        while (size_t n = whitespace_at(text, begin)) begin += n;
      }
      if (text.compare(begin, token.content.size(), token.content) != 0) continue;
      size_t end = begin + token.content.size();
      if (token.single_word) {
        const bool word_before = begin > 0 && is_word_byte(static_cast<unsigned char>(text[begin - 1]));
        const bool word_after = end < text.size() && is_word_byte(static_cast<unsigned char>(text[end]));
        if (word_before || word_after) continue;
      }
      if (token.rstrip) {
        while (size_t n = whitespace_at(text, end)) end += n;
      }
      return AddedMatch{pos, end, &token};
    }
  }
  return std::nullopt;
}

void truncate_to(Encoding& e, size_t length) {
  if (e.ids.size() <= length) return;
  e.ids.resize(length);
  e.tokens.resize(length);
  e.offsets.resize(length);
  e.sequence_ids.resize(length);
}

// Hugging Face tokenizers' truncate_encodings with the special tokens already taken out of max_length.
void truncate_pair(Encoding& first, Encoding* second, size_t max_length, Truncation strategy) {
  const size_t total = first.size() + (second ? second->size() : 0);
  if (total <= max_length) return;
  const size_t to_remove = total - max_length;
  switch (strategy) {
    case Truncation::kNone:
      return;
    case Truncation::kLongestFirst: {
      if (!second) {
        truncate_to(first, max_length);
        return;
      }
      size_t n1 = first.size(), n2 = second->size();
      const bool swapped = n1 > n2;
      if (swapped) std::swap(n1, n2);  // n1 is the shorter
      n2 = n1 > max_length ? n1 : std::max(n1, max_length - n1);
      if (n1 + n2 > max_length) {
        n1 = max_length / 2;
        n2 = n1 + max_length % 2;
      }
      if (swapped) std::swap(n1, n2);
      truncate_to(first, n1);
      truncate_to(*second, n2);
      return;
    }
    case Truncation::kOnlyFirst:
    case Truncation::kOnlySecond: {
      Encoding* target = strategy == Truncation::kOnlyFirst ? &first : second;
      if (!target) throw Error("truncation only_second needs a pair of texts; encode() was given one");
      if (target->size() <= to_remove) {
        throw Error("truncation " +
                    std::string(strategy == Truncation::kOnlyFirst ? "only_first" : "only_second") +
                    ": the " + (target == &first ? "first" : "second") + " text has " +
                    std::to_string(target->size()) + " tokens, too few to remove the " +
                    std::to_string(to_remove) + " over max_length; use longest_first or a larger max_length");
      }
      truncate_to(*target, target->size() - to_remove);
      return;
    }
  }
}

void pad_to(Encoding& e, size_t length, const Tokenizer& tokenizer, bool left) {
  if (e.size() >= length) return;
  const auto pad = tokenizer.pad_id();
  const size_t n = length - e.size();
  const std::string& token = tokenizer.id_to_token(*pad);
  const auto grow = [&](auto& v, auto value) { v.insert(left ? v.begin() : v.end(), n, value); };
  grow(e.ids, *pad);
  grow(e.tokens, token);
  grow(e.offsets, Offset{});
  grow(e.attention_mask, int64_t{0});
  grow(e.token_type_ids, int64_t{0});
  grow(e.special_tokens_mask, int64_t{1});
  grow(e.sequence_ids, -1);
}

size_t round_up(size_t length, size_t multiple) {
  return multiple == 0 ? length : (length + multiple - 1) / multiple * multiple;
}

void check_options(const EncodeOptions& options, const Tokenizer& tokenizer) {
  const std::string& source = tokenizer.source();
  // Refused whether or not this batch happens to need padding, so that code does not work by luck.
  if (options.padding != Padding::kNone && !tokenizer.pad_id()) {
    throw Error(source + ": padding needs a pad token and this tokenizer has none (GPT-2 has none: call " +
                "set_pad_token(\"<|endoftext|>\") first, or pad yourself)");
  }
  if ((options.truncation != Truncation::kNone || options.padding == Padding::kMaxLength) &&
      options.max_length == 0) {
    throw Error(source + ": truncation and padding to max_length need EncodeOptions::max_length > 0");
  }
}

// Runs fn(i) for i in [0, n), on several threads when the work is large enough to pay for them.
template <typename Fn>
void parallel_for(size_t n, size_t total_bytes, Fn fn) {
  const size_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const size_t threads = std::min({hardware, n, total_bytes / 16384 + 1});
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto work = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Core> core) : core_(std::move(core)) {}
Tokenizer::~Tokenizer() = default;

Encoding Tokenizer::encode_one(std::string_view text, int sequence_id) const {
  if (text.size() > kMaxTextBytes) {
    throw Error("text of " + std::to_string(text.size()) + " bytes is over the " +
                std::to_string(kMaxTextBytes) + "-byte limit of a single encode; split it");
  }
  text::validate_utf8(text);
  Encoding e;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto match = find_added(*core_, text, pos);
    const size_t stretch_end = match ? match->begin : text.size();
    if (stretch_end > pos) tokenize(text.substr(pos, stretch_end - pos), pos, e);
    if (!match) break;
    e.ids.push_back(match->token->id);
    e.tokens.push_back(match->token->content);
    e.offsets.push_back({match->begin, match->end});
    pos = match->end;
  }
  e.sequence_ids.assign(e.ids.size(), sequence_id);
  return e;
}

Encoding Tokenizer::finish(Encoding first, std::optional<Encoding> second,
                           const EncodeOptions& options) const {
  const bool pair = second.has_value();
  const size_t added = options.add_special_tokens ? core_->added_by_template(pair) : 0;
  if (options.truncation != Truncation::kNone) {
    if (options.max_length < added) {
      throw Error(source() + ": max_length " + std::to_string(options.max_length) +
                  " leaves no room for the " + std::to_string(added) + " special tokens the template adds");
    }
    truncate_pair(first, pair ? &*second : nullptr, options.max_length - added, options.truncation);
  }

  std::vector<TemplatePiece> default_template = {TemplatePiece{0, {}, {}, 0}};
  if (pair) default_template.push_back(TemplatePiece{1, {}, {}, 1});
  const auto& chosen = pair ? core_->pair_template : core_->single_template;
  const auto& pieces = chosen.empty() ? default_template : chosen;

  Encoding out;
  const size_t total = first.size() + (pair ? second->size() : 0) + added;
  out.ids.reserve(total);
  out.tokens.reserve(total);
  out.offsets.reserve(total);
  for (const auto& piece : pieces) {
    if (piece.sequence < 0) {
      if (!options.add_special_tokens) continue;
      for (size_t i = 0; i < piece.ids.size(); ++i) {
        out.ids.push_back(piece.ids[i]);
        out.tokens.push_back(piece.tokens[i]);
        out.offsets.push_back({});
        out.token_type_ids.push_back(piece.type_id);
        out.special_tokens_mask.push_back(1);
        out.sequence_ids.push_back(-1);
      }
      continue;
    }
    if (piece.sequence == 1 && !pair) continue;
    Encoding& part = piece.sequence == 0 ? first : *second;
    out.ids.insert(out.ids.end(), part.ids.begin(), part.ids.end());
    std::move(part.tokens.begin(), part.tokens.end(), std::back_inserter(out.tokens));
    out.offsets.insert(out.offsets.end(), part.offsets.begin(), part.offsets.end());
    out.token_type_ids.insert(out.token_type_ids.end(), part.size(), piece.type_id);
    out.special_tokens_mask.insert(out.special_tokens_mask.end(), part.size(), 0);
    out.sequence_ids.insert(out.sequence_ids.end(), part.sequence_ids.begin(), part.sequence_ids.end());
  }
  out.attention_mask.assign(out.ids.size(), 1);

  if (options.padding == Padding::kMaxLength) {
    pad_to(out, round_up(options.max_length, options.pad_to_multiple_of), *this, options.pad_left);
  } else if (options.padding == Padding::kLongest) {
    pad_to(out, round_up(out.size(), options.pad_to_multiple_of), *this, options.pad_left);
  }
  return out;
}

Encoding Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  check_options(options, *this);
  return finish(encode_one(text, 0), std::nullopt, options);
}

Encoding Tokenizer::encode_pair(std::string_view first, std::string_view second,
                                const EncodeOptions& options) const {
  check_options(options, *this);
  return finish(encode_one(first, 0), encode_one(second, 1), options);
}

namespace {

// Batches: each item encoded without kLongest padding, then all padded to the longest.
template <typename EncodeItem>
std::vector<Encoding> encode_many(size_t n, size_t total_bytes, const EncodeOptions& options,
                                  const Tokenizer& tokenizer, EncodeItem encode_item) {
  EncodeOptions item_options = options;
  if (options.padding == Padding::kLongest) item_options.padding = Padding::kNone;
  std::vector<Encoding> out(n);
  parallel_for(n, total_bytes, [&](size_t i) { out[i] = encode_item(i, item_options); });
  if (options.padding == Padding::kLongest) {
    size_t longest = 0;
    for (const auto& e : out) longest = std::max(longest, e.size());
    longest = round_up(longest, options.pad_to_multiple_of);
    for (auto& e : out) pad_to(e, longest, tokenizer, options.pad_left);
  }
  return out;
}

}  // namespace

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                              const EncodeOptions& options) const {
  check_options(options, *this);
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  return encode_many(texts.size(), bytes, options, *this,
                     [&](size_t i, const EncodeOptions& o) { return encode(texts[i], o); });
}

std::vector<Encoding> Tokenizer::encode_pair_batch(
    const std::vector<std::pair<std::string, std::string>>& pairs, const EncodeOptions& options) const {
  check_options(options, *this);
  size_t bytes = 0;
  for (const auto& [a, b] : pairs) bytes += a.size() + b.size();
  return encode_many(pairs.size(), bytes, options, *this, [&](size_t i, const EncodeOptions& o) {
    return encode_pair(pairs[i].first, pairs[i].second, o);
  });
}

// ---------------------------------------------------------------------------------------------------
// Vocabulary access
// ---------------------------------------------------------------------------------------------------

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  return core_->find(token);
}

const std::string& Tokenizer::id_to_token(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= core_->vocab.size() || core_->vocab[id].empty()) {
    throw Error(source() + ": id " + std::to_string(id) + " is not in the vocabulary (" +
                std::to_string(core_->vocab.size()) + " ids)");
  }
  return core_->vocab[id];
}

size_t Tokenizer::vocab_size() const {
  return core_->vocab.size();
}
std::optional<int64_t> Tokenizer::pad_id() const {
  return core_->pad;
}
std::optional<int64_t> Tokenizer::unk_id() const {
  return core_->unk;
}
std::optional<int64_t> Tokenizer::cls_id() const {
  return core_->cls;
}
std::optional<int64_t> Tokenizer::sep_id() const {
  return core_->sep;
}
std::optional<int64_t> Tokenizer::mask_id() const {
  return core_->mask;
}
std::optional<int64_t> Tokenizer::bos_id() const {
  return core_->bos;
}
std::optional<int64_t> Tokenizer::eos_id() const {
  return core_->eos;
}
const std::string& Tokenizer::source() const {
  return core_->source;
}

void Tokenizer::set_pad_token(const std::string& token) {
  const auto id = core_->find(token);
  if (!id) throw Error(source() + ": pad token '" + token + "' is not in the vocabulary");
  core_->pad = id;
}

}  // namespace graft
