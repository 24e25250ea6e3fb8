// graft: transfer learning and fine-tuning from the command line.
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/runtime.h"

int main(int argc, char** argv) {
  CLI::App app{"graft " GRAFT_VERSION
               ": transfer learning and fine-tuning on libtorch.\n"
               "Take a pretrained network, cut its top, add a head, freeze what should stay fixed, train."};
  app.set_version_flag("--version", "graft " GRAFT_VERSION);
  app.require_subcommand(1);
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
