// JSON from untrusted files: nesting bounded while parsing at every reader, and messages that quote a
// bounded excerpt. A value nested 100,000 levels deep (a few hundred KB) used to overflow the stack when
// an error message dumped it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/run.h"
#include "graft/text_data.h"
#include "graft/tfjs.h"
#include "graft/tokenizer.h"
#include "graft/transformers.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

const std::string kDeep = std::string(100000, '[') + std::string(100000, ']');

fs::path fresh(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("graft_test_json_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void expect_format_error(const std::function<void()>& call, const std::string& file,
                         const std::string& expected) {
  try {
    call();
    ADD_FAILURE() << file << ": no error; expected: " << expected;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_LT(message.size(), 1000u) << "a message that quotes the whole value";
  }
}

TEST(JsonFile, DepthIsBoundedWhileParsing) {
  EXPECT_EQ(parse_json(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']'), "x").dump().size(),
            2u * kMaxJsonDepth);
  expect_format_error(
      [] { parse_json(std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']'), "x"); }, "x",
      "nests JSON deeper than 128 levels");
  expect_format_error([] { parse_json(kDeep, "data.jsonl", "line 3"); }, "data.jsonl",
                      "line 3 nests JSON deeper");
  expect_format_error([] { parse_json("{\"a\": ", "cfg.json"); }, "cfg.json", "is not valid JSON");
}

TEST(JsonFile, ExcerptsAreBounded) {
  EXPECT_EQ(json_excerpt(nlohmann::json::parse(R"({"a":[1,2],"b":"x"})")), R"({"a":[1,2],"b":"x"})");
  const std::string long_array = json_excerpt(nlohmann::json(std::vector<int>(1000000, 7)));
  EXPECT_EQ(long_array.size(), 123u);
  EXPECT_EQ(long_array.substr(long_array.size() - 3), "...");
  EXPECT_EQ(json_excerpt(nlohmann::json(std::string(1 << 20, 'z')), 10), "\"zzzzzzzzz...");
  nlohmann::json nested = 1;
  for (int i = 0; i < 100; ++i) nested = nlohmann::json::array({nested});
  EXPECT_EQ(json_excerpt(nested), "[[[[[[[[[...]]]]]]]]]");
}

// Every reader of JSON files refuses the deep value by its file name, without a crash.
TEST(JsonFile, EveryReaderRefusesDeepNesting) {
  const fs::path dir = fresh("deep");
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return (dir / name).string();
  };
  const std::string config =
      write("config.json", "{\"model_type\": \"bert\", \"hidden_size\": " + kDeep + "}");
  expect_format_error([&] { BertConfig::from_file(config); }, config, "nests JSON deeper than 128 levels");
  const std::string tokenizer = write("tokenizer.json", "{\"model\": " + kDeep + "}");
  expect_format_error([&] { load_tokenizer(tokenizer); }, tokenizer, "nests JSON deeper than 128 levels");
  const std::string model = write("model.json", "{\"modelTopology\": " + kDeep + "}");
  expect_format_error([&] { read_tfjs_model(model); }, model, "nests JSON deeper than 128 levels");
  const std::string run = write("graft.json", "{\"task\": \"image-classify\", \"classes\": " + kDeep + "}");
  expect_format_error([&] { read_run_spec(run); }, run, "nests JSON deeper than 128 levels");
  const std::string lines =
      write("data.jsonl", "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": " + kDeep + "}\n");
  TextColumns jsonl;
  jsonl.format = "jsonl";
  expect_format_error([&] { read_text_examples(lines, jsonl); }, lines, "line 2 nests JSON deeper");
  // A wrong type within the bound is quoted as an excerpt, not whole.
  std::string wide = "[";
  for (int i = 0; i < 100000; ++i) wide += "1,";
  wide += "1]";
  fs::create_directories(dir / "wide");
  const std::string wide_config =
      write("wide/config.json", "{\"model_type\": \"bert\", \"hidden_size\": " + wide + "}");
  expect_format_error([&] { BertConfig::from_file(wide_config); }, wide_config, "hidden_size");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
