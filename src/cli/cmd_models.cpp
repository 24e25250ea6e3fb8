// `graft models [filter]`: architectures and their pretrained tags.
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "graft/registry.h"

namespace graft::cli {

namespace {

// "224px" for images, "16x112px" (frames x pixels) for video.
std::string input_label(const PretrainedCfg& cfg) {
  const std::string px = std::to_string(input_hw(cfg)[0]) + "px";
  return is_video_cfg(cfg) ? std::to_string(cfg.input_size[1]) + "x" + px : px;
}

}  // namespace

void add_models_command(CLI::App& app) {
  auto* command = app.add_subcommand("models", "list architectures and pretrained tags");
  auto filter = std::make_shared<std::string>();
  command->add_option("filter", *filter, "substring of the architecture or tag name");
  command->callback([filter] {
    int shown = 0;
    for (const auto& entry : model_entries()) {
      for (const auto& tag : entry.tags) {
        const std::string name = entry.arch + "." + tag.tag;
        if (!filter->empty() && name.find(*filter) == std::string::npos) continue;
        std::cout << std::left << std::setw(26) << name << std::setw(10) << input_label(tag)
                  << tag.description << "\n";
        std::cout << std::setw(36) << ""
                  << "weights: " << tag.source << "\n";
        ++shown;
      }
    }
    if (shown == 0) std::cout << "no model matches '" << *filter << "'\n";
  });
}

}  // namespace graft::cli
