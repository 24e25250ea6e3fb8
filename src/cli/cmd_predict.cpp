// `graft predict RUN_DIR IMAGE...`: top-k labels with probabilities (text or --json).
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "graft/image_task.h"
#include "graft/runtime.h"

namespace graft::cli {

void add_predict_command(CLI::App& app) {
  auto* command = app.add_subcommand("predict", "classify images with a run directory");
  auto run_dir = std::make_shared<std::string>();
  auto images = std::make_shared<std::vector<std::string>>();
  auto top_k = std::make_shared<int64_t>(5);
  auto as_json = std::make_shared<bool>(false);
  auto device = std::make_shared<std::string>("auto");
  command->add_option("run", *run_dir, "run directory written by graft train")->required();
  command->add_option("images", *images, "image files (JPEG, PNG)")->required()->check(CLI::ExistingFile);
  command->add_option("--top-k", *top_k, "labels per image");
  command->add_flag("--json", *as_json, "one JSON document on stdout");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([run_dir, images, top_k, as_json, device] {
    LoadedRun run = load_run(*run_dir);
    auto predictions = predict_images(run, *images, *top_k, parse_device(*device));
    if (*as_json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& p : predictions) {
        nlohmann::json top = nlohmann::json::array();
        for (const auto& [label, prob] : p.top) top.push_back({{"label", label}, {"probability", prob}});
        out.push_back({{"image", p.path}, {"top", top}});
      }
      std::cout << out.dump(2) << "\n";
      return;
    }
    for (const auto& p : predictions) {
      std::cout << p.path << "\n";
      for (const auto& [label, prob] : p.top) {
        std::cout << "  " << std::fixed << std::setprecision(4) << prob << "  " << label << "\n";
      }
    }
  });
}

}  // namespace graft::cli
