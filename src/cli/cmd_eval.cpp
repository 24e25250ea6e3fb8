// `graft eval RUN_DIR --data DIR`: metrics and confusion matrix of a trained run.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/image_task.h"
#include "graft/run_document.h"
#include "graft/runtime.h"
#include "graft/text_task.h"
#include "graft/video_task.h"

namespace graft::cli {

void add_eval_command(CLI::App& app) {
  auto* command = app.add_subcommand("eval", "evaluate a run directory on labelled images (or text)");
  auto run_dir = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("auto");
  auto batch = std::make_shared<int64_t>(32);
  auto limit = std::make_shared<size_t>(0);
  auto svg = std::make_shared<std::string>();
  command->add_option("run", *run_dir, "run directory written by graft train")->required();
  command
      ->add_option("--data", *data,
                   "labelled images: DATA/<class>/*.jpg (DATA/val when DATA has train/ + val/); text runs: a "
                   "data file")
      ->required();
  command->add_option("--batch-size", *batch, "samples per batch")->check(CLI::PositiveNumber);
  command->add_option("--limit", *limit, "IDX data: images to evaluate (0: all)");
  command->add_option("--confusion-svg", *svg, "write the confusion matrix picture here");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([command, run_dir, data, device, batch, limit, svg] {
    const torch::Device dev = parse_device(*device);
    Metrics metrics;
    std::vector<std::string> classes;
    std::string unit = "images";
    // graft.json read once; "" for a folder without one (then load_run says what is missing).
    const std::string task = run_task(*run_dir);
    const bool video = task == "video-classify", text = task == "text-classify" || task == "causal-lm";
    if ((video || text) && command->get_option("--limit")->count() > 0)
      throw Error("--limit applies to image runs (IDX data) only; " + *run_dir + " is a " +
                  (video ? "video" : "text") + " run");
    if (video) {
      VideoRun run = load_video_run(*run_dir);
      metrics = evaluate_video(run, *data, *batch, dev, std::cerr);
      classes = run.classes;
      unit = "clips";
    } else if (text) {
      TextRun run = load_text_run(*run_dir);
      metrics = evaluate_text(run, *data, *batch, dev, std::cerr);
      classes = run.classes;
      unit = "examples";
    } else {
      LoadedRun run = load_run(*run_dir);
      metrics = evaluate_images(run, *data, *batch, *limit, dev, std::cerr);
      classes = run.spec.classes;
    }
    std::cout << metrics_report(metrics, classes);
    if (metrics.token_level) {
      std::cout << "perplexity: " << metrics.perplexity() << " on " << metrics.samples << " tokens\n";
      return;
    }
    std::cout << "accuracy: " << metrics.accuracy << " on " << metrics.samples << " " << unit << "\n";
    if (metrics.confusion.empty()) return;  // too many classes to draw; the report says so
    const std::string picture =
        svg->empty() ? (std::filesystem::path(*run_dir) / "eval_confusion_matrix.svg").string() : *svg;
    write_confusion_matrix_svg(picture, metrics, classes);
    std::cout << "confusion matrix picture: " << picture << "\n";
  });
}

}  // namespace graft::cli
