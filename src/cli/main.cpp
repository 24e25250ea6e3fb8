// graft: transfer learning and fine-tuning from the command line.
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/runtime.h"

namespace {

// Edits (insert, delete, replace, swap of neighbours) between two words: how far a typo is.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The first word that is not an option must be a command: `graft trian` is refused naming the nearest
// one (CLI11 said only "A subcommand is required"). Empty when the command line is fine.
std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word == "--threads") {
      ++i;  // its value
      continue;
    }
    if (word.rfind("-", 0) == 0) continue;
    std::string nearest;
    size_t best = 3;  // at most two edits away
    for (const CLI::App* command : app.get_subcommands([](const CLI::App*) { return true; })) {
      if (command->get_name() == word) return "";
      const size_t distance = edit_distance(word, command->get_name());
      if (distance < best) best = distance, nearest = command->get_name();
    }
    return "unknown command '" + word + "'" + (nearest.empty() ? "" : "; did you mean '" + nearest + "'?") +
           " (graft --help lists them)";
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"graft " GRAFT_VERSION
               ": transfer learning and fine-tuning on libtorch.\n"
               "Take a pretrained network, cut its top, add a head, freeze what should stay fixed, train."};
  app.set_version_flag("--version", "graft " GRAFT_VERSION);
  app.require_subcommand(1);
  // Every option's default shows in --help (subcommands inherit this setting).
  app.option_defaults()->always_capture_default();
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: the machine's cores)");
  app.fallthrough();

  graft::cli::add_info_command(app);
  graft::cli::add_models_command(app);
  graft::cli::add_summary_command(app);
  graft::cli::add_forward_command(app);
  graft::cli::add_convert_command(app);
  graft::cli::add_train_command(app);
  graft::cli::add_eval_command(app);
  graft::cli::add_predict_command(app);
  graft::cli::add_features_command(app);
  graft::cli::add_tokenize_command(app);
  graft::cli::add_generate_command(app);
  graft::cli::add_chat_command(app);
  graft::cli::add_export_command(app);
  graft::cli::add_pull_command(app);

  app.parse_complete_callback([&] {
    graft::set_threads(threads);
    graft::retain_freed_memory();
  });
  if (const std::string unknown = unknown_command(app, argc, argv); !unknown.empty()) {
    std::cerr << "graft: error: " << unknown << "\n";
    return 1;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const graft::Error& e) {
    std::cerr << "graft: error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << "graft: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "graft: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
