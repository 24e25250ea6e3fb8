// `graft predict RUN_DIR IMAGE...` (or --text / --input for a text run): top-k labels with probabilities.
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/image_task.h"
#include "graft/run_document.h"
#include "graft/runtime.h"
#include "graft/strings.h"
#include "graft/text_task.h"
#include "graft/video_task.h"

namespace graft::cli {

namespace {

constexpr uint64_t kMaxInputBytes = uint64_t{256} << 20;  // --input: texts to classify, one per line

// What was classified (a file's path, or a text) and its top labels: as lines, or one JSON document.
template <class Predictions, class Name>
void print_predictions(const Predictions& predictions, bool as_json, const char* key, Name name) {
  if (as_json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& p : predictions) {
      nlohmann::json top = nlohmann::json::array();
      for (const auto& [label, prob] : p.top) top.push_back({{"label", label}, {"probability", prob}});
      out.push_back({{key, name(p)}, {"top", top}});
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  for (const auto& p : predictions) {
    std::cout << name(p) << "\n";
    for (const auto& [label, prob] : p.top)
      std::cout << "  " << std::fixed << std::setprecision(4) << prob << "  " << label << "\n";
  }
}

const auto path_of = [](const Prediction& p) { return p.path; };

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
  command->callback([run_dir, images, top_k, as_json, device, texts, input] {
    // graft.json read once; "" for a folder without one (then load_run says what is missing).
    const std::string task = run_task(*run_dir);
    const bool video = task == "video-classify";
    if (task == "text-classify" || task == "causal-lm") {
      if (!images->empty())
        throw Error(*run_dir + " classifies text: give --text \"...\" or --input FILE, not files");
      const std::vector<std::string> all = texts_to_classify(*texts, *input);
      if (all.empty()) throw Error("nothing to classify: give --text \"...\" or --input FILE");
      TextRun run = load_text_run(*run_dir);
      print_predictions(predict_texts(run, all, *top_k, parse_device(*device)), *as_json, "text",
                        [](const TextPrediction& p) { return p.text; });
      return;
    }
    if (!texts->empty() || !input->empty())
      throw Error(std::string(texts->empty() ? "--input" : "--text") + " is for text runs; " + *run_dir +
                  " classifies " + (video ? "clips" : "images") + ": give their files");
    if (images->empty()) throw Error("no images given: graft predict RUN_DIR IMAGE...");
    if (video) {
      VideoRun run = load_video_run(*run_dir);
      for (const auto& clip :
           *images)  // a frame folder, or a video file (not a FIFO or device: they never end)
        if (!std::filesystem::is_directory(clip)) regular_file_size(clip, "video file or frame folder");
      print_predictions(predict_clips(run, *images, *top_k, parse_device(*device)), *as_json, "clip",
                        path_of);
      return;
    }
    for (const auto& image : *images) regular_file_size(image, "image file");
    LoadedRun run = load_run(*run_dir);
    print_predictions(predict_images(run, *images, *top_k, parse_device(*device)), *as_json, "image",
                      path_of);
  });
}

}  // namespace graft::cli
