// The seams between the image, text and video tasks (#13): one training driver that every task's recipe
// goes through, one portable shuffle for every seeded split, names that must become JSON checked when the
// data is scanned, not when the run is saved, and the folders' layering.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/run_document.h"
#include "graft/strings.h"
#include "graft/video.h"
#include "graft/weights.h"
#include "transfer/driver.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

fs::path fresh(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("graft_seams_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A task that is nothing but its recipe, as a new task would be: two separable blobs in two dimensions and a
// linear classifier. It records the order train_run calls it in.
class BlobRecipe : public TrainRecipe {
 public:
  explicit BlobRecipe(std::string out) : out_(std::move(out)) {
    train_.epochs = 4;
    train_.optimizer.name = "sgd";
    train_.optimizer.lr = 0.5;
    train_.seed = 7;
    train_.progress = false;
  }
  RunBasics basics() const override {
    RunBasics b;
    b.task = "image-classify";  // its options are checked against that task's rows
    b.model = "blob";
    b.data = "blobs";
    b.out = out_;
    b.weights = weights;
    b.init_from = init_from;
    b.sample_unit = "img";
    b.objective = "classify";
    b.train = &train_;
    return b;
  }
  nlohmann::json options() const override {
    return {{"epochs", train_.epochs}, {"lr", train_.optimizer.lr}, {"seed", train_.seed}};
  }
  void resolve(std::ostream&) override { calls.push_back("resolve"); }
  std::vector<std::string> open_data(std::ostream&) override {
    calls.push_back("data");
    const torch::Tensor t = torch::arange(64, torch::kFloat);
    x_ = torch::stack({torch::cos(t), torch::sin(t)}, 1) * 0.3;  // no generator: the data is fixed
    y_ = torch::arange(64) % 2;
    x_.select(1, 0).add_(y_.to(torch::kFloat) * 4 - 2);
    return {"left", "right"};
  }
  void build_model(const StartChoice& start, std::ostream&) override {
    calls.push_back("model");
    start_kind = start.kind;
    model_ = torch::nn::Linear(2, 2);  // initialised from torch's generator, which train_run seeds
  }
  FreezeStep freeze_step() override {
    calls.push_back("freeze");
    FreezeStep step;
    step.module = model_.ptr().get();
    step.spec = step.named = step.saved = "none";
    return step;
  }
  std::vector<ParamGroup> param_groups() override {
    calls.push_back("groups");
    return {};
  }
  FitPlan plan(TrainConfig&, std::ostream&) override {
    calls.push_back("plan");
    train_batches_ = std::make_unique<TensorBatchSource>(x_, y_, 16, true);
    val_batches_ = std::make_unique<TensorBatchSource>(x_, y_, 16, false);
    FitPlan plan;
    std::shared_ptr<torch::nn::LinearImpl> model = model_.ptr();
    plan.trained = plan.model = model;
    plan.trained_forward = plan.model_forward = [model](const torch::Tensor& x) { return model->forward(x); };
    plan.train = train_batches_.get();
    plan.val = val_batches_.get();
    return plan;
  }
  RunFiles run_files(const FitOutcome& outcome, std::ostream&) override {
    calls.push_back("files");
    EXPECT_TRUE(outcome.val_metrics.has_value());
    RunFiles files;
    files.fields["blob_width"] = 2;
    files.weights = state_dict(*model_);
    files.listing = "model.safetensors, graft.json";
    return files;
  }

  TrainConfig& train() { return train_; }
  std::vector<std::string> calls;
  std::string weights, init_from;
  StartChoice::Kind start_kind = StartChoice::Kind::kRun;

 private:
  std::string out_;
  TrainConfig train_;
  torch::Tensor x_, y_;
  torch::nn::Linear model_{nullptr};
  std::unique_ptr<TensorBatchSource> train_batches_, val_batches_;
};

TEST(Driver, CallsARecipeInOrderSeedsItAndWritesTheRunDirectory) {
  const fs::path root = fresh("driver");
  BlobRecipe first((root / "a").string()), second((root / "b").string());
  std::ostringstream log, log2;
  const FitOutcome outcome = train_run(first, log);
  train_run(second, log2);
  EXPECT_EQ(first.calls,
            (std::vector<std::string>{"resolve", "data", "model", "freeze", "groups", "plan", "files"}));
  EXPECT_EQ(first.start_kind, StartChoice::Kind::kRandom);  // "blob" names no weights
  ASSERT_TRUE(outcome.val_metrics.has_value());
  EXPECT_GT(outcome.val_metrics->accuracy, 0.9) << log.str();
  EXPECT_NE(log.str().find("graft train: resolved configuration"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("freeze 'none': 0 tensors frozen, 2 trainable"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("run directory: " + (root / "a").string()), std::string::npos) << log.str();
  // graft.json: the shared fields, the task's own, and the weights it names.
  const RunDocument doc = read_run_document((root / "a" / "graft.json").string());
  EXPECT_EQ(doc.task, "image-classify");
  EXPECT_EQ(doc.classes, (std::vector<std::string>{"left", "right"}));
  EXPECT_EQ(doc.freeze, "none");
  EXPECT_EQ(doc.doc.at("blob_width"), 2);
  EXPECT_EQ(doc.doc.at("training").at("seed"), 7);
  EXPECT_TRUE(fs::exists(root / "a" / "val_report.txt"));
  // Seeded before the model is built: the two runs end with the same weights.
  const NamedTensors a = read_safetensors((root / "a" / "model.safetensors").string());
  const NamedTensors b = read_safetensors((root / "b" / "model.safetensors").string());
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  fs::remove_all(root);
}

TEST(Driver, RefusesBadOptionsAndTwoStartsBeforeTheRecipeReadsAnything) {
  const fs::path root = fresh("driver_refuses");
  std::ostringstream log;
  BlobRecipe both((root / "out").string());
  both.weights = "w.safetensors";
  both.init_from = "earlier_run";
  try {
    train_run(both, log);
    ADD_FAILURE() << "two starts were taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("give --weights or --init-from, not both"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(both.calls.empty());
  BlobRecipe no_epochs((root / "out").string());
  no_epochs.train().epochs = 0;
  try {
    train_run(no_epochs, log);
    ADD_FAILURE() << "0 epochs were taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--epochs"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(no_epochs.calls.empty());
  BlobRecipe no_out("");
  EXPECT_THROW(train_run(no_out, log), Error);
  EXPECT_TRUE(no_out.calls.empty());
  EXPECT_FALSE(fs::exists(root / "out"));
  fs::remove_all(root);
}

TEST(Driver, StartChoiceIsOneOrderForEveryTask) {
  RunBasics b;  // no model name (a text run names its model by its weights)
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kRandom);
  b.model = "resnet18";
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kRandom);
  EXPECT_FALSE(start_choice(b).asked_random);
  b.model = "resnet18.tv_in1k";
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kPretrained);
  b.random_init = true;
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kRandom);
  EXPECT_TRUE(start_choice(b).asked_random);
  b.random_init = false;
  b.weights = "w.safetensors";
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kFile);
  EXPECT_EQ(start_choice(b).source, "w.safetensors");
  b.weights.clear();
  b.init_from = "runs/a";
  EXPECT_EQ(start_choice(b).kind, StartChoice::Kind::kRun);
  EXPECT_EQ(start_choice(b).source, "runs/a");
}

// std::mt19937_64's outputs are fixed by the standard (its 10000th is 9981545732273789042), so a shuffle that
// draws raw outputs and reduces them itself gives one order everywhere; std::shuffle and
// std::uniform_int_distribution do not (their reduction is implementation-defined).
TEST(PortableShuffle, IsFisherYatesOverRawMt19937Draws) {
  std::mt19937_64 check;
  check.discard(9999);
  ASSERT_EQ(check(), 9981545732273789042ull);
  std::vector<int> values(10);
  for (int i = 0; i < 10; ++i) values[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(42), draws(42);
  portable_shuffle(values, rng);
  std::vector<int> expected(10);
  for (int i = 0; i < 10; ++i) expected[static_cast<size_t>(i)] = i;
  for (size_t i = expected.size(); i > 1; --i) std::swap(expected[i - 1], expected[draws() % i]);
  EXPECT_EQ(values, expected);
}

// Every seeded split in the product goes through portable_shuffle: a std::shuffle in src/ would make the
// text and video splits differ between standard libraries (they did, while image splits did not).
TEST(PortableShuffle, NoSourceFileUsesStdShuffle) {
  std::vector<std::string> offenders;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(GRAFT_SOURCE_DIR) / "src")) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    if (std::regex_search(text.str(), std::regex(R"(std::shuffle\s*\()")))
      offenders.push_back(entry.path().string());
  }
  EXPECT_TRUE(offenders.empty()) << offenders.front();
}

// The house plan (DESIGN.md): core, io, layers, models, text and data are the lower floors; transfer, train
// and cli build on them and never the other way round. A lower file, or a header of a lower folder, that
// includes a header of a higher one fails here (models/ used to build heads from transfer/ and call its
// glob_match; io/keras_convert.cpp included graft/transfer.h).
// One stratified split for images and clips (the clip split was a second copy): per class round(n * f) to
// validation, at most n - 1, every sample in exactly one part, the listing's order, the same for a seed.
TEST(StratifiedSplit, EveryClassKeepsATrainingSampleAndTheSplitRepeats) {
  std::vector<LabeledPath> samples;
  const std::vector<int> per_class = {8, 1, 3, 0, 5};
  for (size_t c = 0; c < per_class.size(); ++c)
    for (int i = 0; i < per_class[c]; ++i)
      samples.push_back({"c" + std::to_string(c) + "_" + std::to_string(i), int64_t(c)});
  std::sort(samples.begin(), samples.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  const SplitIndices parts = stratified_split(samples, per_class.size(), 0.25, 7);
  std::vector<int> val(per_class.size()), train(per_class.size());
  for (size_t i : parts.val) ++val[size_t(samples.at(i).label)];
  for (size_t i : parts.train) ++train[size_t(samples.at(i).label)];
  EXPECT_EQ(
      val, (std::vector<int>{2, 0, 1, 0,
                             1}));  // round(8/4) = 2, a single sample stays, round(0.75) = 1, round(1.25) = 1
  EXPECT_EQ(train, (std::vector<int>{6, 1, 2, 0, 4}));
  EXPECT_TRUE(std::is_sorted(parts.train.begin(), parts.train.end()));
  EXPECT_TRUE(std::is_sorted(parts.val.begin(), parts.val.end()));
  std::vector<size_t> all = parts.train;
  all.insert(all.end(), parts.val.begin(), parts.val.end());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], i);
  EXPECT_EQ(all.size(), samples.size());
  const SplitIndices again = stratified_split(samples, per_class.size(), 0.25, 7);
  EXPECT_EQ(again.val, parts.val);
  bool differs = false;
  for (uint64_t seed = 8; seed < 16 && !differs; ++seed)
    differs = stratified_split(samples, per_class.size(), 0.25, seed).val != parts.val;
  EXPECT_TRUE(differs) << "the seed chooses the validation samples";
  // All in one class: at most n - 1 to validation, whatever the fraction.
  EXPECT_EQ(stratified_split(samples, per_class.size(), 0.99, 7).train.size(), 4u);
}

TEST(Layering, LowerFoldersIncludeNoHigherHeader) {
  const fs::path root = GRAFT_SOURCE_DIR;
  // Public headers of the higher floors; every other header in include/graft/ belongs to a lower one.
  const std::vector<std::string> higher = {
      "transfer.h", "run.h",        "run_document.h", "image_task.h",    "text_task.h", "video_task.h",
      "summary.h",  "trainer.h",    "optim.h",        "schedule.h",      "metrics.h",   "batches.h",
      "history.h",  "checkpoint.h", "plots.h",        "train_options.h", "task.h"};
  const std::regex include_line(R"re(#include\s+"([^"]+)")re");
  std::vector<fs::path> lower_files;
  for (const char* folder : {"core", "io", "layers", "models", "text", "data"})
    for (const auto& entry : fs::recursive_directory_iterator(root / "src" / folder))
      if (entry.is_regular_file()) lower_files.push_back(entry.path());
  for (const auto& entry : fs::directory_iterator(root / "include" / "graft"))
    if (std::find(higher.begin(), higher.end(), entry.path().filename().string()) == higher.end())
      lower_files.push_back(entry.path());
  ASSERT_GT(lower_files.size(), 50u);
  std::vector<std::string> offences;
  for (const fs::path& file : lower_files) {
    std::ifstream in(file);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      std::smatch match;
      if (!std::regex_search(line, match, include_line)) continue;
      const std::string included = match[1];
      const bool up = included.rfind("cli/", 0) == 0 || included.rfind("transfer/", 0) == 0 ||
                      included.rfind("train/", 0) == 0 ||
                      (included.rfind("graft/", 0) == 0 &&
                       std::find(higher.begin(), higher.end(), included.substr(6)) != higher.end());
      if (up) offences.push_back(file.string() + ":" + std::to_string(number) + " includes " + included);
    }
  }
  std::string list;
  for (const auto& offence : offences) list += offence + "\n";
  EXPECT_TRUE(offences.empty()) << list;
}

TEST(Utf8, InvalidSequencesAreFoundWhereTheyStart) {
  EXPECT_EQ(invalid_utf8_at("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), std::string::npos);
  EXPECT_EQ(invalid_utf8_at("ab\xFF"), 2u);
  EXPECT_EQ(invalid_utf8_at("a\xC0\xAF"), 1u);         // overlong '/'
  EXPECT_EQ(invalid_utf8_at("a\xED\xA0\x80"), 1u);     // a surrogate
  EXPECT_EQ(invalid_utf8_at("a\xE2\x82"), 1u);         // cut short
  EXPECT_EQ(invalid_utf8_at("\xF4\x90\x80\x80"), 0u);  // above U+10FFFF
}

// A class folder whose name is not UTF-8 used to train to the end and then lose the run writing graft.json.
TEST(Utf8, ClassFolderNamesAreCheckedWhenScanned) {
  const fs::path dir = fresh("utf8");
  fs::create_directories(dir / "images" / "cat");
  fs::create_directories(dir / "images" / "d\xFFg");
  fs::create_directories(dir / "clips" / "cat");
  fs::create_directories(dir / "clips" / "d\xFFg");
  for (const char* name : {"images/cat/a.png", "images/d\xFFg/b.png"}) std::ofstream(dir / name) << "x";
  for (const char* name : {"clips/cat/a.mp4", "clips/d\xFFg/b.mp4"}) std::ofstream(dir / name) << "x";
  for (const auto& scan :
       std::vector<std::function<void()>>{[&] { scan_image_folder((dir / "images").string()); },
                                          [&] { discover_image_splits((dir / "images").string(), 0.2, 1); },
                                          [&] { scan_clip_folder((dir / "clips").string()); }}) {
    try {
      scan();
      ADD_FAILURE() << "a class folder name that is not UTF-8 passed";
    } catch (const Error& e) {
      EXPECT_NE(
          std::string(e.what()).find("class folder 'd\\xFFg' is not valid UTF-8 (byte 0xFF at offset 1)"),
          std::string::npos)
          << e.what();
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
