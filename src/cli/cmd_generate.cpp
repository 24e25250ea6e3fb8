// `graft generate RUN_DIR --prompt "..."` and `graft chat RUN_DIR`: text from a causal language model
// (a causal-lm run directory or a Hugging Face folder), with the key/value cache; chat in the model's own
// format when its tokenizer has a chat template.
#include <unistd.h>

#include <iostream>

#include "cli/commands.h"
#include "graft/chat_template.h"
#include "graft/errors.h"
#include "graft/runtime.h"
#include "graft/text_task.h"

namespace graft::cli {
namespace {

struct DecodeArgs {
  GenerateOptions options;
  int64_t seed = -1;
  std::string device = "auto";
  std::string precision = "fp32";
  std::string tokenizer;
  std::vector<std::string> adapters;
  bool merge = false;

  DecodeArgs() { options.max_new_tokens = 50; }
  void add_to(CLI::App& command) {
    command.add_option("--max-new-tokens", options.max_new_tokens, "tokens to generate at most");
    command.add_option("--temperature", options.temperature, "0: greedy; > 0: sample with this temperature");
    command.add_option("--top-k", options.top_k, "sample among the k most likely tokens (0: all)");
    command.add_option("--top-p", options.top_p, "nucleus sampling: smallest set with this probability");
    command.add_option("--repetition-penalty", options.repetition_penalty,
                       "> 1 discourages repeats (1: off)");
    command.add_option("--seed", seed, "sampling seed: the same seed gives the same text (default: random)");
    command.add_option("--device", device, "auto, cpu or cuda[:N]");
    add_precision_option(command, precision);
    command.add_option("--tokenizer", tokenizer,
                       "tokenizer file or folder (tokenizer.json, vocab.json + merges.txt) when the model "
                       "folder has none");
    add_adapter_options(command, adapters, merge, "the model");
  }
  // The run or folder with its tokenizer and the adapters laid on it.
  TextRun load(const std::string& dir) const {
    TextRun run = load_text_run(dir, tokenizer);
    apply_run_adapters(*run.module, run.classes, adapters, merge);
    return run;
  }
  GenerateOptions resolved() const {
    GenerateOptions o = options;
    if (seed >= 0) o.seed = static_cast<uint64_t>(seed);
    return o;
  }
};

}  // namespace

void add_generate_command(CLI::App& app) {
  auto* command = app.add_subcommand("generate", "continue a prompt with a causal-lm run (or GPT-2 folder)");
  auto run_dir = std::make_shared<std::string>();
  auto prompt = std::make_shared<std::string>();
  auto decode = std::make_shared<DecodeArgs>();
  command->add_option("run", *run_dir, "causal-lm run directory or Hugging Face GPT-2 folder")->required();
  command->add_option("--prompt", *prompt, "text to continue (empty: start from the beginning of text)");
  decode->add_to(*command);
  command->callback([run_dir, prompt, decode] {
    const torch::Device device = parse_device(decode->device);
    const Precision mixed = resolve_precision(decode->precision, device, std::cerr);
    TextRun run = decode->load(*run_dir);
    std::cout << *prompt << std::flush;
    Autocast autocast(mixed, device);
    generate_text(run, *prompt, decode->resolved(), device, [](const std::string& piece) {
      std::cout << piece << std::flush;
      return true;
    });
    std::cout << "\n";
  });
}

void add_chat_command(CLI::App& app) {
  auto* command = app.add_subcommand(
      "chat",
      "talk with a causal-lm run: one line in, one reply out, until EOF; in the model's chat format "
      "when its tokenizer has a chat template");
  auto run_dir = std::make_shared<std::string>();
  auto user = std::make_shared<std::string>("User: ");
  auto bot = std::make_shared<std::string>("Bot: ");
  auto system = std::make_shared<std::string>();
  auto decode = std::make_shared<DecodeArgs>();
  command->add_option("run", *run_dir, "causal-lm run directory or Hugging Face folder")->required();
  auto* user_option = command->add_option(
      "--user-prefix", *user,
      "without a chat template: written before each of your lines in the model's context");
  auto* bot_option =
      command->add_option("--bot-prefix", *bot,
                          "without a chat template: written before each reply; the reply ends at a newline");
  auto* system_option = command->add_option("--system", *system,
                                            "with a chat template: a system message before the conversation");
  decode->add_to(*command);
  command->callback([=] {
    const torch::Device device = parse_device(decode->device);
    const Precision mixed = resolve_precision(decode->precision, device, std::cerr);
    TextRun run = decode->load(*run_dir);
    if (!run.chat_template_error.empty()) throw Error(run.chat_template_error);
    const bool templated = run.chat_template.has_value();
    // Flags of the other way of chatting are refused by name rather than ignored.
    for (const CLI::Option* option : {user_option, bot_option})
      if (templated && option->count() > 0)
        throw Error(option->get_name() + " does not apply: " + *run_dir +
                    "'s tokenizer has a chat template, which writes each turn in the model's own format");
    if (!templated && system_option->count() > 0)
      throw Error("--system needs a chat template, and " + *run_dir +
                  "'s tokenizer has none (tokenizer_config.json's chat_template)");
    Autocast autocast(mixed, device);
    const bool interactive = isatty(STDIN_FILENO) != 0;
    std::string history, line;
    std::vector<ChatMessage> messages;
    if (!system->empty()) messages.push_back({"system", *system});
    const std::map<std::string, std::string> special = special_token_names(*run.tokenizer);
    if (interactive) std::cerr << "chat with " << *run_dir << " (Ctrl-D ends)\n> " << std::flush;
    while (std::getline(std::cin, line)) {
      if (line.empty()) {
        if (interactive) std::cerr << "> " << std::flush;
        continue;
      }
      std::string reply;
      if (templated) {
        // The conversation so far in the model's format, ending with the assistant's turn opened; the reply
        // ends where the model emits its end-of-turn token (eos).
        messages.push_back({"user", line});
        const std::string prompt = render_chat(*run.chat_template, messages, true, special);
        if (interactive) std::cout << "assistant: " << std::flush;
        generate_text(run, prompt, decode->resolved(), device, [&reply](const std::string& piece) {
          reply += piece;
          std::cout << piece << std::flush;
          return true;
        });
        messages.push_back({"assistant", reply});
      } else {
        history += *user + line + "\n" + *bot;
        std::cout << *bot << std::flush;
        // The reply streams until the model ends its line (or emits end-of-text).
        generate_text(run, history, decode->resolved(), device, [&reply](const std::string& piece) {
          const size_t newline = piece.find('\n');
          const std::string shown = piece.substr(0, newline);
          reply += shown;
          std::cout << shown << std::flush;
          return newline == std::string::npos;
        });
        history += reply + "\n";
      }
      std::cout << "\n" << std::flush;
      if (interactive) std::cerr << "> " << std::flush;
    }
  });
}

}  // namespace graft::cli
