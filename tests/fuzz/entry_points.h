// The entry points the fuzz targets drive, shared with tests/unit/test_untrusted_files.cpp, which feeds
// every kept input of tests/fuzz/regressions/<target>/ through the same function. Each takes the raw
// input bytes, writes the file(s) a reader expects into a scratch folder and runs the reader; a bad input
// must end in graft::Error.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "graft/chat_template.h"
#include "graft/data.h"
#include "graft/errors.h"
#include "graft/keras.h"
#include "graft/keras_h5.h"
#include "graft/run.h"
#include "graft/run_document.h"
#include "graft/tfjs.h"
#include "graft/tfjs_graph.h"
#include "graft/tokenizer.h"
#include "graft/weights.h"

namespace graft::fuzz {

// A per-process scratch folder (in /dev/shm when there is one: a write per input must be cheap).
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base =
        std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    std::filesystem::path d = base / ("graft-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::string write_file(const std::filesystem::path& dir, const std::string& name,
                              std::string_view bytes) {
  const std::string path = (dir / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// A fresh empty subfolder of the scratch folder.
inline std::filesystem::path fresh_dir(const std::string& name) {
  const std::filesystem::path dir = scratch_dir() / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Splits the input at each "\n#%#\n": lets one input carry several files (model.json + shard, vocab.json
// + merges.txt + text). Missing parts are empty.
inline std::vector<std::string_view> split_parts(std::string_view rest, size_t parts) {
  static constexpr std::string_view kSeparator = "\n#%#\n";
  std::vector<std::string_view> out;
  while (out.size() + 1 < parts) {
    const size_t at = rest.find(kSeparator);
    if (at == std::string_view::npos) break;
    out.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kSeparator.size());
  }
  out.push_back(rest);
  out.resize(parts);
  return out;
}

// safetensors: the whole file; every tensor is loaded and summed.
inline void read_safetensors_bytes(std::string_view bytes) {
  const std::string path = write_file(scratch_dir(), "fuzz.safetensors", bytes);
  const SafeTensorsReader reader(path);
  for (const TensorInfo& info : reader.tensors()) {
    const torch::Tensor t = reader.load(info.name);
    if (t.numel() > 0 && t.is_floating_point()) (void)t.sum().item<double>();
  }
  (void)reader.metadata();
}

// TF.js: model.json, separator, the bytes of group1-shard1of1. A graph model goes to TfjsGraphModel.
inline void read_tfjs_bytes(std::string_view bytes) {
  const auto parts = split_parts(bytes, 2);
  const std::filesystem::path dir = fresh_dir("tfjs");
  const std::string model = write_file(dir, "model.json", parts[0]);
  write_file(dir, "group1-shard1of1", parts[1]);
  if (parts[0].find("graph-model") != std::string_view::npos) {
    const TfjsGraphModel graph(model);
    (void)graph.inputs();
  } else {
    (void)read_tfjs_model(model);
  }
}

// Keras .h5: the whole file.
inline void read_keras_h5_bytes(std::string_view bytes) {
  // In-process: the fuzzer needs libhdf5 in its own address space (coverage, sanitizer reports).
  KerasH5Options options;
  options.separate_process = false;
  (void)read_keras_h5(write_file(scratch_dir(), "fuzz.h5", bytes), options);
}

// Keras .h5 the way graft reads it for real: in a child process (2 s deadline), so that a libhdf5
// crash or hang there is a FormatError here. A finding of this target is a crash, hang or escape in the
// parent: the stream checks, the builder, parse_keras_layers.
inline void read_keras_h5_child_bytes(std::string_view bytes) {
  KerasH5Options options;
  options.timeout = std::chrono::seconds(2);
  (void)read_keras_h5(write_file(scratch_dir(), "fuzz-child.h5", bytes), options);
}

// Images: JPEG/PNG bytes, decoded at full size and with DCT scaling, then made a tensor.
inline void decode_image_bytes(std::string_view bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const Image image = decode_image_memory(data, bytes.size(), "fuzz-image", 0);
  if (image.rgb.size() != size_t(image.width) * size_t(image.height) * 3) std::abort();
  (void)image_to_tensor(image);
  (void)decode_image_memory(data, bytes.size(), "fuzz-image", 2);
}

// Tokenizers. The first byte picks the files: 0 tokenizer.json, 1 vocab.txt, 2 vocab.json + merges.txt,
// 3 tokenizer.json + tokenizer_config.json, 4 vocab.txt + tokenizer_config.json; then the parts, the
// last one the text to encode (as a single text and as a truncated, padded pair) and decode.
inline void load_tokenizer_bytes(std::string_view bytes) {
  if (bytes.empty()) return;
  const int mode = static_cast<unsigned char>(bytes[0]) % 5;
  const auto parts = split_parts(bytes.substr(1), mode <= 1 ? 2 : 3);
  const std::filesystem::path dir = fresh_dir("tokenizer");
  std::string load = dir.string();
  switch (mode) {
    case 0:
      load = write_file(dir, "tokenizer.json", parts[0]);
      break;
    case 1:
      load = write_file(dir, "vocab.txt", parts[0]);
      break;
    case 2:
      write_file(dir, "vocab.json", parts[0]), write_file(dir, "merges.txt", parts[1]);
      break;
    case 3:
      write_file(dir, "tokenizer.json", parts[0]), write_file(dir, "tokenizer_config.json", parts[1]);
      break;
    default:
      write_file(dir, "vocab.txt", parts[0]), write_file(dir, "tokenizer_config.json", parts[1]);
      break;
  }
  const std::string_view text = parts.back();
  const auto tokenizer = load_tokenizer(load);
  EncodeOptions options;
  const Encoding plain = tokenizer->encode(text, options);
  (void)tokenizer->decode(plain.ids, false);
  (void)tokenizer->decode(plain.ids, true);
  options.truncation = Truncation::kLongestFirst;
  options.padding = tokenizer->pad_id() ? Padding::kMaxLength : Padding::kNone;
  options.max_length = 8 + text.size() % 24;
  options.pad_left = text.size() % 2 == 1;
  options.pad_to_multiple_of = text.size() % 3 == 0 ? 8 : 0;
  const size_t half = text.size() / 2;
  (void)tokenizer->encode_pair(text.substr(0, half), text.substr(half), options);
}

// Chat templates: the bytes are a template (tokenizer_config.json's chat_template), parsed, rendered with
// a short conversation and asked where its assistant turn is.
inline void render_chat_template_bytes(std::string_view bytes) {
  const ChatTemplate chat{std::string(bytes), "chat_template"};
  const std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "Who won?"}, {"assistant", "Spain."}};
  const std::map<std::string, std::string> special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  (void)render_chat(chat, messages, true, special);
  (void)assistant_spans(chat, messages, special);
}

// graft.json of a run directory, of every task: the shared reader, then the task's own fields.
inline void read_run_json_bytes(std::string_view bytes) {
  const RunDocument doc = read_run_document(write_file(scratch_dir(), "graft.json", bytes));
  if (doc.task == "image-classify") (void)read_run_spec(doc);
  if (doc.task == "video-classify") (void)read_video_run_spec(doc);
  if (doc.task == "text-classify" || doc.task == "causal-lm") (void)read_text_run_spec(doc);
}

}  // namespace graft::fuzz
