// `graft train`'s one options table (graft/train_options.h): the table and each task's option struct name
// the same options; values are checked by type, range, choices and task before anything is read; and
// errors name the flag (and the --config file).
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "graft/errors.h"
#include "graft/train_options.h"

namespace graft {
namespace {

using nlohmann::json;

std::set<std::string> keys_of(const json& object) {
  std::set<std::string> keys;
  for (const auto& item : object.items()) keys.insert(item.key());
  return keys;
}

std::set<std::string> table_keys(unsigned task) {
  std::set<std::string> keys;
  for (const OptionSpec& spec : train_option_table())
    if (spec.tasks & task) keys.insert(spec.key);
  return keys;
}

void expect_error(const std::function<void()>& call, const std::string& expected) {
  try {
    call();
    ADD_FAILURE() << "no error; expected: " << expected;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

TEST(TrainOptions, EachTasksOptionsAreTheTablesRowsForIt) {
  // What each struct prints and saves is exactly what the table offers its task: no flag is dropped on the
  // way (text runs lost --step-size, video runs --rotation), and no field goes unsaved.
  EXPECT_EQ(keys_of(to_json(ImageTrainOptions{})), table_keys(kImageTask));
  EXPECT_EQ(keys_of(to_json(VideoTrainOptions{})), table_keys(kVideoTask));
  TextTrainOptions text;
  EXPECT_EQ(keys_of(to_json(text)), table_keys(kTextClassifyTask));
  text.task = "causal-lm";
  EXPECT_EQ(keys_of(to_json(text)), table_keys(kCausalLmTask));
  // Every row is some task's, and flags are unique.
  std::set<std::string> flags;
  for (const OptionSpec& spec : train_option_table()) {
    EXPECT_NE(spec.tasks & kEveryTask, 0u) << spec.key;
    EXPECT_TRUE(flags.insert(option_flag(spec)).second) << option_flag(spec);
  }
}

TEST(TrainOptions, ValuesReachTheStructAndComeBackResolved) {
  const json values = {{"epochs", 4},
                       {"lr", 0.02},
                       {"optimizer", "sgd"},
                       {"rotation", 10.0},
                       {"class_weights", {1.0, 2.0}},
                       {"validate", false},
                       {"weight_decay", 0.5},
                       {"limit", 300},
                       {"device", "cpu"}};
  check_train_values(values, "image-classify", "");
  ImageTrainOptions image;
  apply_train_values(image, values);
  EXPECT_EQ(image.train.epochs, 4);
  EXPECT_EQ(image.train.optimizer.name, "sgd");
  EXPECT_EQ(image.rotation, 10.0);
  EXPECT_FALSE(image.validate);
  ASSERT_TRUE(image.train.optimizer.weight_decay.has_value());
  EXPECT_EQ(*image.train.optimizer.weight_decay, 0.5);
  EXPECT_EQ(image.train.class_weights, (std::vector<double>{1.0, 2.0}));
  const json resolved = to_json(image);
  for (const auto& [key, value] : values.items()) EXPECT_EQ(resolved.at(key), value) << key;
  EXPECT_EQ(resolved.at("task"), "image-classify");
  // Text keeps its recipe's defaults where nothing is given (AdamW 5e-5, linear, 3 epochs).
  TextTrainOptions text;
  apply_train_values(text, {{"step_size", 2}, {"gamma", 0.5}, {"schedule", "step"}});
  EXPECT_EQ(text.train.epochs, 3);
  EXPECT_EQ(text.train.optimizer.lr, 5e-5);
  EXPECT_EQ(text.train.schedule.step_size, 2);
  EXPECT_EQ(to_json(text).at("gamma"), 0.5);
}

TEST(TrainOptions, AnOptionOfAnotherTaskIsRefusedByName) {
  expect_error(
      [] {
        check_train_values({{"rotation", 10.0}}, "text-classify", "");
      },
      "--rotation does not apply to --task text-classify; it is an option of image-classify and "
      "video-classify");
  expect_error(
      [] {
        check_train_values({{"head", "avg"}}, "video-classify", "");
      },
      "--head does not apply to --task video-classify");
  expect_error(
      [] {
        check_train_values({{"block_size", 64}}, "text-classify", "");
      },
      "--block-size does not apply to --task text-classify; it is an option of causal-lm");
  expect_error(
      [] {
        check_train_values({{"validate", false}, {"frames", 8}}, "image-classify", "run.json");
      },
      "--frames (in run.json) does not apply to --task image-classify");
  // Causal language models have no classes to smooth.
  expect_error(
      [] {
        check_train_values({{"label_smoothing", 0.1}}, "causal-lm", "");
      },
      "--label-smoothing does not apply to --task causal-lm");
}

TEST(TrainOptions, TypesRangesAndChoicesAreChecked) {
  expect_error(
      [] {
        check_train_values({{"epochz", 3}}, "image-classify", "run.json");
      },
      "unknown option 'epochz' (in run.json); known options: task, model");
  expect_error(
      [] {
        check_train_values({{"batch_size", 0}}, "image-classify", "");
      },
      "--batch-size must lie in 1..1048576, got 0");
  expect_error(
      [] {
        check_train_values({{"batch_size", "32"}}, "image-classify", "run.json");
      },
      "--batch-size (in run.json) is \"32\": expected an integer");
  expect_error(
      [] {
        check_train_values({{"max_length", -1}}, "text-classify", "");
      },
      "--max-length must lie in 2..65536 ([CLS] and [SEP], at least; 0: the model's positions), got -1");
  EXPECT_NO_THROW(check_train_values({{"max_length", 0}}, "text-classify", ""));  // the model's positions
  expect_error(
      [] {
        check_train_values({{"lr", -0.1}}, "causal-lm", "");
      },
      "--lr must lie in 1e-12..1000 (a rate of 0 trains nothing), got -0.1");
  // Accepted before (#15.9): a rate of 0, and an image size of a few pixels.
  expect_error(
      [] {
        check_train_values({{"lr", 0}}, "image-classify", "");
      },
      "(a rate of 0 trains nothing), got 0");
  expect_error(
      [] {
        check_train_values({{"image_size", 8}}, "image-classify", "");
      },
      "--image-size must lie in 16..4096 (0: the model's own size), got 8");
  EXPECT_NO_THROW(check_train_values({{"image_size", 0}}, "image-classify", ""));
  EXPECT_NO_THROW(check_train_values({{"image_size", 28}}, "video-classify", ""));
  expect_error(
      [] {
        check_train_values({{"val_split", 1.0}}, "video-classify", "");
      },
      "--val-split must lie in 0..0.99, got 1.0");
  expect_error(
      [] {
        check_train_values({{"gamma", -0.5}}, "image-classify", "");
      },
      "--gamma must be at least 0, got -0.5");
  expect_error(
      [] {
        check_train_values({{"optimizer", "adamx"}}, "image-classify", "");
      },
      "--optimizer adamx: expected sgd, adam or adamw");
  expect_error(
      [] {
        check_train_values({{"strategy", "finetune"}}, "image-classify", "");
      },
      "--strategy finetune: expected feature-extract, fine-tune or two-stage");
  expect_error(
      [] {
        check_train_values({{"class_weights", {1.0, -2.0}}}, "image-classify", "");
      },
      "--class-weights must lie in 0..1000000000, got -2.0");
  expect_error(
      [] {
        check_train_values({{"validate", "no"}}, "image-classify", "");
      },
      "--no-val is \"no\": expected true or false");
  expect_error([] { check_train_values(json::array(), "image-classify", "run.json"); }, "run.json: is []");
  expect_error([] { task_mask("segment"); }, "--task segment: expected image-classify");
}

TEST(TrainOptions, FlagTextIsParsedByTheOptionsType) {
  const OptionSpec& batch = *find_train_option("batch_size");
  EXPECT_EQ(parse_option_text(batch, "32"), 32);
  expect_error([&] { parse_option_text(batch, "3x"); }, "--batch-size 3x: expected an integer");
  expect_error([&] { parse_option_text(*find_train_option("lr"), ""); }, "--lr : expected a number");
  EXPECT_EQ(parse_option_text(*find_train_option("class_weights"), "1,2.5"), json({1.0, 2.5}));
  expect_error([&] { parse_option_text(*find_train_option("gamma"), "nan"); },
               "--gamma nan: expected a number");
  expect_error([&] { parse_option_text(*find_train_option("lr"), "inf"); }, "--lr inf: expected a number");
  EXPECT_EQ(parse_option_text(*find_train_option("validate"), ""), false);  // --no-val
  EXPECT_EQ(parse_option_text(*find_train_option("early_stopping"), ""), true);
  EXPECT_EQ(option_flag(*find_train_option("cache_features")), "--no-feature-cache");
}

TEST(TrainOptions, HelpShowsEachTasksDefault) {
  EXPECT_EQ(option_default_text(*find_train_option("batch_size")),
            "image-classify: 32; video-classify: 8; text-classify: 16; causal-lm: 16");
  EXPECT_EQ(option_default_text(*find_train_option("frames")), "8");
  EXPECT_EQ(option_default_text(*find_train_option("strategy")), "fine-tune");
}

}  // namespace
}  // namespace graft
