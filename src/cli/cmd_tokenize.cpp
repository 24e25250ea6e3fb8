// `graft tokenize --tokenizer PATH [--ids | --json] TEXT...`: what a tokenizer makes of some text, as
// tokens, ids or the whole encoding; `--decode ID...` goes the other way; `--file F --stats` measures
// encoding throughput on a file (first and best of --repeat runs, MB/s of UTF-8 input).
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "graft/strings.h"
#include "graft/tokenizer.h"

namespace graft::cli {

namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::vector<std::string> texts;
  std::string file;
  bool ids = false;
  bool json = false;
  bool decode = false;
  bool no_special = false;
  bool stats = false;
  int repeat = 3;
};

void print(const Encoding& e, const TokenizeArgs& args) {
  if (args.json) {
    nlohmann::json offsets = nlohmann::json::array();
    for (const auto& o : e.offsets) offsets.push_back({o.begin, o.end});
    const nlohmann::json out = {{"ids", e.ids},
                                {"tokens", e.tokens},
                                {"offsets", offsets},
                                {"attention_mask", e.attention_mask},
                                {"token_type_ids", e.token_type_ids}};
    std::cout << out.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) << "\n";
    return;
  }
  for (size_t i = 0; i < e.size(); ++i) {
    if (i) std::cout << ' ';
    if (args.ids) {
      std::cout << e.ids[i];
    } else {
      std::cout << e.tokens[i];
    }
  }
  std::cout << "\n";
}

void run(const TokenizeArgs& args) {
  const auto tokenizer = load_tokenizer(args.tokenizer);
  if (args.decode) {
    std::vector<int64_t> ids;
    for (const auto& text : args.texts) {
      try {
        size_t used = 0;
        ids.push_back(std::stoll(text, &used));
        if (used != text.size()) throw std::invalid_argument(text);
      } catch (const std::exception&) {
        throw Error("--decode expects token ids, got '" + text + "'");
      }
    }
    std::cout << tokenizer->decode(ids, /*skip_special_tokens=*/args.no_special) << "\n";
    return;
  }
  EncodeOptions options;
  options.add_special_tokens = !args.no_special;
  std::vector<std::string> texts = args.texts;
  if (!args.file.empty())
    texts.push_back(read_file(args.file, kMaxTextBytes, "text file"));  // bounded before it is read
  if (texts.empty()) throw Error("nothing to tokenize: give TEXT arguments or --file");
  for (const auto& text : texts) {
    if (!args.stats) {
      print(tokenizer->encode(text, options), args);
      continue;
    }
    // The first encode fills the BPE merge cache; later ones show the steady state.
    std::vector<double> seconds;
    size_t tokens = 0;
    for (int r = 0; r < std::max(1, args.repeat); ++r) {
      const auto start = std::chrono::steady_clock::now();
      tokens = tokenizer->encode(text, options).size();
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    const double best = *std::min_element(seconds.begin(), seconds.end());
    const auto mb_per_s = [&](double s) { return static_cast<double>(text.size()) / s / 1e6; };
    std::cout << text.size() << " bytes -> " << tokens << " tokens (" << tokenizer->kind()
              << "): first encode " << std::fixed << std::setprecision(3) << seconds.front() << " s ("
              << std::setprecision(2) << mb_per_s(seconds.front()) << " MB/s), best of " << seconds.size()
              << " " << std::setprecision(3) << best << " s (" << std::setprecision(2) << mb_per_s(best)
              << " MB/s)\n";
  }
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto* command = app.add_subcommand("tokenize", "tokens, ids or the whole encoding of some text");
  auto args = std::make_shared<TokenizeArgs>();
  command
      ->add_option("--tokenizer", args->tokenizer,
                   "tokenizer.json, vocab.txt, vocab.json/encoder.json, or a Hugging Face model directory")
      ->required();
  command->add_option("texts", args->texts, "texts to encode (token ids with --decode)");
  command->add_option("--file", args->file, "encode this file's contents as one text (at most 1 GiB)");
  command->add_flag("--ids", args->ids, "print ids instead of tokens");
  command->add_flag("--json", args->json, "print the encoding as JSON (ids, tokens, offsets, masks)");
  command->add_flag("--decode", args->decode, "the arguments are ids: print the text they decode to");
  command->add_flag("--no-special", args->no_special,
                    "encode without [CLS]/[SEP]; with --decode, drop special tokens");
  command->add_flag("--stats", args->stats, "print token count and encode throughput instead of tokens");
  command->add_option("--repeat", args->repeat, "encodes timed by --stats (the best is reported)");
  command->callback([args] { run(*args); });
}

}  // namespace graft::cli
