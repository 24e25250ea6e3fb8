// graft.json: one document for every task, read through one validated reader (read_run_document) and
// the task readers. Each refusal names the file and the field; what older graft versions wrote still reads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "graft/errors.h"
#include "graft/run_document.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string write_doc(const std::string& name, const json& doc) {
  const fs::path dir = fs::temp_directory_path() / ("graft_test_rundoc_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path file = dir / (name + ".json");
  std::ofstream(file) << doc.dump(2);
  return file.string();
}

json image_doc() {
  json doc = new_run_document("image-classify", {"cat", "dog"}, "backbone", "data/pets", {{"epochs", 3}});
  doc["model"] = "resnet18";
  doc["head"] = "avg,dense:2";
  doc["preprocessing"] = preprocessing_json(Preprocessing{});
  doc["weights"] = "model.safetensors";
  return doc;
}

json video_doc() {
  json doc =
      new_run_document("video-classify", {"dunk", "layup", "pass"}, "backbone", "clips", json::object());
  doc["model"] = "mobilenet_v2.nsfwjs";
  doc["temporal"] = "lstm:256";
  doc["preprocessing"] = preprocessing_json(Preprocessing{});
  doc["preprocessing"]["frames"] = 8;
  return doc;
}

json text_doc() {
  json doc = new_run_document("text-classify", {"negative", "positive"}, "", "reviews.csv", json::object());
  doc["max_length"] = 64;
  doc["block_size"] = 128;
  doc["line_by_line"] = false;
  TextColumns columns;
  columns.text = "sentence";
  doc["columns"] = columns_json(columns);
  doc["config"] = "config.json";
  doc["tokenizer"] = {"vocab.txt", "tokenizer_config.json"};
  return doc;
}

// The call fails with a graft::Error whose message names the file and holds `expected`.
void expect_refused(const std::string& name, const json& doc, const std::string& expected) {
  const std::string file = write_doc(name, doc);
  try {
    const RunDocument run = read_run_document(file);
    if (run.task == "image-classify") (void)read_run_spec(run);
    if (run.task == "video-classify") (void)read_video_run_spec(run);
    if (run.task == "text-classify" || run.task == "causal-lm") (void)read_text_run_spec(run);
    ADD_FAILURE() << name << ": read without an error; expected: " << expected;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
}

TEST(RunDocument, EveryTaskReadsThroughOneReader) {
  const RunDocument image = read_run_document(write_doc("image", image_doc()));
  EXPECT_EQ(image.task, "image-classify");
  const RunSpec spec = read_run_spec(image);
  EXPECT_EQ(spec.model, "resnet18");
  EXPECT_EQ(spec.classes, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(spec.freeze, "backbone");

  const RunDocument video = read_run_document(write_doc("video", video_doc()));
  const VideoRunSpec clip = read_video_run_spec(video);
  EXPECT_EQ(clip.model, "mobilenet_v2.nsfwjs");
  EXPECT_EQ(clip.temporal, "lstm:256");
  EXPECT_EQ(clip.frames, 8);
  EXPECT_EQ(video.classes.size(), 3u);

  const RunDocument text = read_run_document(write_doc("text", text_doc()));
  const TextRunSpec sequence = read_text_run_spec(text);
  EXPECT_EQ(sequence.max_length, 64);
  EXPECT_EQ(sequence.columns.text, "sentence");
  EXPECT_EQ(text.doc.at("training"), json::object());
  EXPECT_EQ(text.doc.at("format"), "graft-run");
  EXPECT_EQ(text.doc.at("format_version"), kRunFormatVersion);
}

TEST(RunDocument, RunsFromEarlierVersionsStillRead) {
  // Before the format fields and the save id, and text runs without columns or lengths.
  json image = image_doc();
  image.erase("format");
  image.erase("format_version");
  image.erase("libtorch_version");
  image["preprocessing"].erase("interpolation");
  EXPECT_EQ(read_run_spec(read_run_document(write_doc("old_image", image))).preprocessing.interpolation,
            "bilinear");
  json text = text_doc();
  for (const char* key : {"format", "columns", "max_length", "block_size", "line_by_line", "tokenizer"})
    text.erase(key);
  const TextRunSpec spec = read_text_run_spec(read_run_document(write_doc("old_text", text)));
  EXPECT_EQ(spec.max_length, 128);
  EXPECT_EQ(spec.columns.text, "text");
}

TEST(RunDocument, SharedFieldsAreChecked) {
  json newer = image_doc();
  newer["format_version"] = 2;
  expect_refused("newer", newer, "format_version 2 was written by a newer graft");
  json other = image_doc();
  other["format"] = "keras";
  expect_refused("format", other, "format 'keras'");
  json task = image_doc();
  task["task"] = "segment";
  expect_refused("task", task, "task 'segment' is not one graft knows");
  json repeated = image_doc();
  repeated["classes"] = {"cat", "cat"};
  expect_refused("repeated", repeated, "classes[1] repeats \"cat\"");
  json empty_name = video_doc();
  empty_name["classes"] = {"dunk", ""};
  expect_refused("empty_name", empty_name, "classes[1] is \"\"");
  json number = text_doc();
  number["classes"] = {"negative", 1};
  expect_refused("number", number, "classes[1] is 1");
  json freeze = image_doc();
  freeze["freeze"] = 3;
  expect_refused("freeze", freeze, "field 'freeze' is 3");
}

TEST(RunDocument, FileNamesStayInsideTheRunDirectory) {
  json weights = image_doc();
  weights["weights"] = "/etc/passwd";
  expect_refused("weights", weights, "field 'weights' is \"/etc/passwd\"");
  json config = text_doc();
  config["config"] = "..";
  expect_refused("config", config, "field 'config' is \"..\"");
  json tokenizer = text_doc();
  tokenizer["tokenizer"] = {"vocab.txt", "../../secret/tokenizer.json"};
  expect_refused("tokenizer", tokenizer, "field 'tokenizer[1]' is \"../../secret/tokenizer.json\"");
  json not_a_list = text_doc();
  not_a_list["tokenizer"] = "tokenizer.json";
  expect_refused("not_a_list", not_a_list, "field 'tokenizer' is \"tokenizer.json\"");
}

TEST(RunDocument, TaskFieldsAreChecked) {
  json one_class = video_doc();
  one_class["classes"] = {"dunk"};
  expect_refused("one_class", one_class, "fewer than two classes");
  json frames = video_doc();
  frames["preprocessing"]["frames"] = 0;
  expect_refused("frames", frames, "preprocessing frames 0");
  json no_model = video_doc();
  no_model.erase("model");
  expect_refused("no_model", no_model, "missing field 'model'");
  json block = text_doc();
  block["block_size"] = 0;  // eval divided by it (SIGFPE)
  expect_refused("block", block, "field 'block_size' is 0");
  json header = text_doc();
  header["columns"]["header"] = "yes";  // a raw JSON type_error before
  expect_refused("header", header, "field 'header' is \"yes\"");
  json columns = text_doc();
  columns["columns"] = {1, 2};
  expect_refused("columns", columns, "field 'columns' is [1,2]");
  json line = text_doc();
  line["line_by_line"] = 1;
  expect_refused("line", line, "field 'line_by_line' is 1");
  json classes = image_doc();
  classes["classes"] = json::array();
  expect_refused("no_classes", classes, "field 'classes' is empty");
}

}  // namespace
}  // namespace graft
