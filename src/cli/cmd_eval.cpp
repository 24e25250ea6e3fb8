// `graft eval RUN_DIR --data DIR`: metrics and confusion matrix of a trained run.
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/image_task.h"
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
  command->add_option("--batch-size", *batch, "images per batch");
  command->add_option("--limit", *limit, "IDX data: images to evaluate (0: all)");
  command->add_option("--confusion-svg", *svg, "write the confusion matrix picture here");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([run_dir, data, device, batch, limit, svg] {
    if (is_video_run(*run_dir)) {
      VideoRun video = load_video_run(*run_dir);
      const Metrics metrics = evaluate_video(video, *data, *batch, parse_device(*device), std::cerr);
      std::cout << metrics_report(metrics, video.classes);
      std::cout << "accuracy: " << metrics.accuracy << " on " << metrics.samples << " clips\n";
      const std::string picture =
          svg->empty() ? (std::filesystem::path(*run_dir) / "eval_confusion_matrix.svg").string() : *svg;
      write_confusion_matrix_svg(picture, metrics, video.classes);
      std::cout << "confusion matrix picture: " << picture << "\n";
      return;
    }
    if (is_text_run(*run_dir)) {
      TextRun text = load_text_run(*run_dir);
      const Metrics metrics = evaluate_text(text, *data, *batch, parse_device(*device), std::cerr);
      std::cout << metrics_report(metrics, text.classes);
      if (metrics.token_level) {
        std::cout << "perplexity: " << metrics.perplexity() << " on " << metrics.samples << " tokens\n";
        return;
      }
      std::cout << "accuracy: " << metrics.accuracy << " on " << metrics.samples << " examples\n";
      const std::string picture =
          svg->empty() ? (std::filesystem::path(*run_dir) / "eval_confusion_matrix.svg").string() : *svg;
      write_confusion_matrix_svg(picture, metrics, text.classes);
      std::cout << "confusion matrix picture: " << picture << "\n";
      return;
    }
    LoadedRun run = load_run(*run_dir);
    const torch::Device dev = parse_device(*device);
    auto dataset =
        open_eval_data(*data, run.spec.classes, transform_for(run.spec.preprocessing, false), *limit);
    LoaderOptions options;
    options.batch_size = *batch;
    options.shuffle = false;
    DataLoader loader(dataset, options);
    LoaderBatchSource source(loader);
    TrainConfig config;
    config.device = dev;
    config.log = &std::cerr;
    Backbone model = run.model;
    Trainer evaluator(
        model, [model](const torch::Tensor& x) { return model->forward(x); }, config);
    Metrics metrics = evaluator.evaluate(source, "eval");
    std::cout << metrics_report(metrics, run.spec.classes);
    std::cout << "accuracy: " << metrics.accuracy << " on " << metrics.samples << " images\n";
    const std::string picture =
        svg->empty() ? (std::filesystem::path(*run_dir) / "eval_confusion_matrix.svg").string() : *svg;
    write_confusion_matrix_svg(picture, metrics, run.spec.classes);
    std::cout << "confusion matrix picture: " << picture << "\n";
  });
}

}  // namespace graft::cli
