// `graft eval RUN_DIR --data DIR`: metrics and confusion matrix of a trained run, whatever its task.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/plots.h"
#include "graft/runtime.h"
#include "graft/task.h"

namespace graft::cli {

void add_eval_command(CLI::App& app) {
  auto* command = app.add_subcommand("eval", "evaluate a run directory on labelled images, clips or text");
  auto run_dir = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("auto");
  auto options = std::make_shared<UseOptions>();
  auto svg = std::make_shared<std::string>();
  command->add_option("run", *run_dir, "run directory written by graft train")->required();
  command
      ->add_option("--data", *data,
                   "labelled data as the run was trained on: DATA/<class>/<file> (DATA/val when DATA has "
                   "train/ + val/); text runs: a data file")
      ->required();
  command->add_option("--batch-size", options->batch_size, "samples per batch")->check(CLI::PositiveNumber);
  command->add_option("--limit", options->limit, "image runs: images to evaluate, a seeded subset (0: all)");
  command->add_option("--confusion-svg", *svg, "write the confusion matrix picture here");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  auto precision = std::make_shared<std::string>("fp32");
  add_precision_option(*command, *precision);
  auto adapters = std::make_shared<std::vector<std::string>>();
  auto merge = std::make_shared<bool>(false);
  add_adapter_options(*command, *adapters, *merge, "the run's model");
  command->callback([adapters, merge, run_dir, data, device, precision, options, svg] {
    options->device = parse_device(*device);
    const Precision mixed = resolve_precision(*precision, options->device, std::cerr);
    const std::unique_ptr<Run> run = open_run(*run_dir);
    apply_run_adapters(run->model(), run->classes(), *adapters, *merge);  // merged in float32
    const Metrics metrics = [&] {
      Autocast autocast(mixed, options->device);
      return run->evaluate(*data, *options, std::cerr);
    }();
    std::cout << metrics_report(metrics, run->classes());
    if (metrics.token_level) {
      std::cout << "perplexity: " << metrics.perplexity() << " on " << metrics.samples << " tokens\n";
      return;
    }
    std::cout << "accuracy: " << metrics.accuracy << " on " << metrics.samples << " " << run->unit() << "\n";
    if (metrics.confusion.empty()) return;  // too many classes to draw; the report says so
    const std::string picture =
        svg->empty() ? (std::filesystem::path(*run_dir) / "eval_confusion_matrix.svg").string() : *svg;
    write_confusion_matrix_svg(picture, metrics, run->classes());
    std::cout << "confusion matrix picture: " << picture << "\n";
  });
}

}  // namespace graft::cli
