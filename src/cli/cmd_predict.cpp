// `graft predict RUN_DIR IMAGE...` (or --text / --input for a text run): top-k labels with probabilities.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/runtime.h"
#include "graft/strings.h"
#include "graft/task.h"

namespace graft::cli {

namespace {

constexpr uint64_t kMaxInputBytes = uint64_t{256} << 20;  // --input: texts to classify, one per line

// What was classified (a file's path, or a text) and its top labels: as lines, or one JSON document. An
// input that could not be classified gets an error line on stderr in its place ("error" in JSON).
void print_predictions(const std::vector<Prediction>& predictions, bool as_json, const char* key) {
  if (as_json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& p : predictions) {
      if (!p.error.empty()) {
        out.push_back({{key, p.input}, {"error", p.error}});
        continue;
      }
      nlohmann::json top = nlohmann::json::array();
      for (const auto& [label, prob] : p.top) top.push_back({{"label", label}, {"probability", prob}});
      out.push_back({{key, p.input}, {"top", top}});
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  for (const auto& p : predictions) {
    if (!p.error.empty()) {
      std::cout << std::flush;
      std::cerr << "graft: error: " << p.error << "\n" << std::flush;
      continue;
    }
    std::cout << p.input << "\n";
    for (const auto& [label, prob] : p.top)
      std::cout << "  " << std::fixed << std::setprecision(4) << prob << "  " << label << "\n";
  }
}

// Predictions of every input in order: those that are not files the run can read (a folder for an image
// run, a FIFO or a device that never ends) get their error here, the rest go to the run.
std::vector<Prediction> predict_each(Run& run, const std::vector<std::string>& inputs, int64_t top_k,
                                     torch::Device device) {
  std::vector<Prediction> results(inputs.size());
  std::vector<std::string> readable;
  std::vector<size_t> where;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& file = inputs[i];
    try {
      if (!run.reads_text() && (run.unit() == "images" || !std::filesystem::is_directory(file)))
        regular_file_size(file, run.unit() == "images" ? "image file" : "video file or frame folder");
      readable.push_back(file);
      where.push_back(i);
    } catch (const Error& e) {
      results[i] = {file, {}, e.what()};
    }
  }
  std::vector<Prediction> predicted = run.predict(readable, top_k, device);
  for (size_t j = 0; j < predicted.size(); ++j) results[where[j]] = std::move(predicted[j]);
  return results;
}

// The texts of --text and of --input (one per line, blank lines skipped), the file read whole and bounded
// (a FIFO or /dev/zero is refused, not read without end).
std::vector<std::string> texts_to_classify(std::vector<std::string> texts, const std::string& input) {
  if (input.empty()) return texts;
  std::istringstream lines(read_file(input, kMaxInputBytes, "--input file"));
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) texts.push_back(line);
  }
  return texts;
}

}  // namespace

void add_predict_command(CLI::App& app) {
  auto* command = app.add_subcommand("predict", "classify images (or texts) with a run directory");
  auto run_dir = std::make_shared<std::string>();
  auto images = std::make_shared<std::vector<std::string>>();
  auto top_k = std::make_shared<int64_t>(5);
  auto as_json = std::make_shared<bool>(false);
  auto device = std::make_shared<std::string>("auto");
  command->add_option("run", *run_dir, "run directory written by graft train")->required();
  auto texts = std::make_shared<std::vector<std::string>>();
  auto input = std::make_shared<std::string>();
  command->add_option("images", *images, "image files (JPEG, PNG); video runs: video files or frame folders");
  command->add_option("--text", *texts, "text run: a text to classify (repeatable)");
  command->add_option("--input", *input, "text run: a file of texts to classify, one per line");
  command->add_option("--top-k", *top_k, "labels per image");
  command->add_flag("--json", *as_json, "one JSON document on stdout");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  auto precision = std::make_shared<std::string>("fp32");
  add_precision_option(*command, *precision);
  auto adapters = std::make_shared<std::vector<std::string>>();
  auto merge = std::make_shared<bool>(false);
  add_adapter_options(*command, *adapters, *merge, "the run's model");
  command->callback([adapters, merge, run_dir, images, top_k, as_json, device, precision, texts, input] {
    const torch::Device on = parse_device(*device);
    const Precision mixed = resolve_precision(*precision, on, std::cerr);
    const std::unique_ptr<Run> run = open_run(*run_dir);
    apply_run_adapters(run->model(), run->classes(), *adapters, *merge);
    std::vector<std::string> inputs = *images;
    if (run->reads_text()) {
      if (!images->empty())
        throw Error(*run_dir + " classifies text: give --text \"...\" or --input FILE, not files");
      inputs = texts_to_classify(*texts, *input);
      if (inputs.empty()) throw Error("nothing to classify: give --text \"...\" or --input FILE");
    } else {
      if (!texts->empty() || !input->empty())
        throw Error(std::string(texts->empty() ? "--input" : "--text") + " is for text runs; " + *run_dir +
                    " classifies " + run->unit() + ": give their files");
      if (inputs.empty()) throw Error("no " + run->unit() + " given: graft predict RUN_DIR FILE...");
    }
    const char* key = run->reads_text() ? "text" : run->unit() == "clips" ? "clip" : "image";
    const std::vector<Prediction> predictions = [&] {
      Autocast autocast(mixed, on);
      return predict_each(*run, inputs, *top_k, on);
    }();
    print_predictions(predictions, *as_json, key);
    const auto failed = std::count_if(predictions.begin(), predictions.end(),
                                      [](const Prediction& p) { return !p.error.empty(); });
    if (failed > 0)
      throw Error(std::to_string(failed) + " of " + std::to_string(predictions.size()) +
                  " inputs could not be classified (said above); the others were");
  });
}

}  // namespace graft::cli
