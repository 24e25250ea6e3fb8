// `graft summary MODEL [--head ..] [--freeze ..] [--input 224]`: a Keras-like table.
#include <iostream>

#include "cli/commands.h"
#include "graft/summary.h"

namespace graft::cli {

void add_summary_command(CLI::App& app) {
  auto* command = app.add_subcommand("summary", "layers, output shapes and (trainable) parameter counts");
  auto args = std::make_shared<ModelArgs>();
  auto input = std::make_shared<int64_t>(0);
  args->add_to(*command, /*with_freeze=*/true);
  command->add_option("--input", *input, "input image size in pixels (default: the model's)");
  command->callback([args, input] {
    Backbone model = build_model(*args, /*load_tag=*/false);  // shapes and counts need no weights
    std::cout << summarize(*model, {*input, *input}).to_string();
  });
}

}  // namespace graft::cli
