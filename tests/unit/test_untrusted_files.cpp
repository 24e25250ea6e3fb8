// Untrusted files (issue #8): every input the fuzzers once crashed on (tests/fuzz/regressions/<target>/)
// must now end in a clean graft::Error through the same entry point the fuzz target drives
// (tests/fuzz/entry_points.h); every seed of tests/fuzz/corpus/ must load or be refused cleanly; and the
// size limits refuse "bombs" (headers that claim far more than the file holds) before allocating.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>

#include "fuzz/entry_points.h"
#include "graft/errors.h"
#include "graft/keras.h"
#include "graft/keras_h5.h"
#include "graft/tfjs.h"

namespace fs = std::filesystem;

namespace {

const std::map<std::string, std::function<void(std::string_view)>>& entry_points() {
  static const std::map<std::string, std::function<void(std::string_view)>> entries = {
      {"safetensors", graft::fuzz::read_safetensors_bytes},
      {"tfjs", graft::fuzz::read_tfjs_bytes},
      {"keras_h5", graft::fuzz::read_keras_h5_bytes},
      {"keras_h5_child", graft::fuzz::read_keras_h5_child_bytes},
      {"image", graft::fuzz::decode_image_bytes},
      {"tokenizer", graft::fuzz::load_tokenizer_bytes},
      {"run_json", graft::fuzz::read_run_json_bytes},
      {"chat_template", graft::fuzz::render_chat_template_bytes}};
  return entries;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `entry` on `bytes`; returns "" when it loaded or threw graft::Error (the message in *message),
// else what escaped.
std::string run_entry(const std::function<void(std::string_view)>& entry, const std::string& bytes,
                      std::string* message) {
  try {
    entry(bytes);
    return "";
  } catch (const graft::Error& e) {
    *message = e.what();
    return "";
  } catch (const std::exception& e) {
    return std::string("a non-graft exception: ") + e.what();
  } catch (...) {
    return "an unknown exception";
  }
}

std::string safetensors_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

template <typename Fn>
void expect_error_mentioning(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL() << "expected graft::Error mentioning " << needles.front() << ", nothing was thrown";
  } catch (const graft::Error& e) {
    for (const std::string& needle : needles)
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "'" << needle << "' not in: " << e.what();
  }
}

}  // namespace

TEST(FuzzRegressions, EveryKeptCrashInputEndsInGraftError) {
  const fs::path root = fs::path(GRAFT_SOURCE_DIR) / "tests" / "fuzz" / "regressions";
  size_t replayed = 0;
  for (const auto& [target, entry] : entry_points()) {
    if (!fs::is_directory(root / target)) continue;
    for (const auto& file : fs::directory_iterator(root / target)) {
      if (!file.is_regular_file() || file.path().filename() == "README.md") continue;
      std::string message;
      const std::string escaped = run_entry(entry, read_bytes(file.path()), &message);
      EXPECT_EQ(escaped, "") << target << "/" << file.path().filename().string();
      EXPECT_NE(message, "") << target << "/" << file.path().filename().string()
                             << " loaded without an error; a kept crash input must be refused";
      ++replayed;
    }
  }
  RecordProperty("replayed", static_cast<int>(replayed));
}

TEST(FuzzCorpus, EverySeedLoadsOrIsRefusedCleanly) {
  const fs::path root = fs::path(GRAFT_SOURCE_DIR) / "tests" / "fuzz" / "corpus";
  size_t seeds = 0;
  for (const auto& [target, entry] : entry_points()) {
    ASSERT_TRUE(fs::is_directory(root / target)) << "no seed corpus for " << target;
    for (const auto& file : fs::directory_iterator(root / target)) {
      if (!file.is_regular_file()) continue;
      std::string message;
      EXPECT_EQ(run_entry(entry, read_bytes(file.path()), &message), "")
          << target << "/" << file.path().filename().string();
      ++seeds;
    }
  }
  EXPECT_GT(seeds, 20u);
}

// ---- bombs: a few bytes that claim gigabytes are refused from the header

TEST(UntrustedBombs, SafetensorsTensorClaimingTerabytes) {
  // The header itself is small; the entry claims 2^20 x 2^20 float32 (4 TiB) over 16 bytes of data.
  const std::string header = R"({"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,16]}})";
  expect_error_mentioning(
      [&] { graft::fuzz::read_safetensors_bytes(safetensors_file(header, std::string(16, '\0'))); }, {"'w'"});
}

TEST(UntrustedBombs, TfjsWeightClaimingTwoToThe40Elements) {
  const std::string model = R"({"modelTopology":{"class_name":"Sequential","config":{"layers":[]}},)"
                            R"("weightsManifest":[{"paths":["group1-shard1of1"],"weights":[)"
                            R"({"name":"d/kernel","shape":[1048576,1048576],"dtype":"float32"}]}]})";
  expect_error_mentioning([&] { graft::fuzz::read_tfjs_bytes(model + "\n#%#\n" + std::string(16, '\0')); },
                          {"d/kernel", "2^36"});
}

TEST(UntrustedBombs, TfjsShardPathOutsideTheModelFolder) {
  const std::string model = R"({"modelTopology":{"class_name":"Sequential","config":{"layers":[]}},)"
                            R"("weightsManifest":[{"paths":["../../etc/passwd"],"weights":[]}]})";
  expect_error_mentioning([&] { graft::fuzz::read_tfjs_bytes(model); }, {"../../etc/passwd", ".."});
}

TEST(UntrustedBombs, VocabJsonWithOneHugeId) {
  // 20 bytes asking for a 16 M-entry id table.
  const std::string vocab = R"({"a": 16777215})";
  expect_error_mentioning(
      [&] { graft::fuzz::load_tokenizer_bytes(std::string("\x02") + vocab + "\n#%#\na b\n#%#\nab"); },
      {"vocab.json", "16777215"});
}

TEST(UntrustedBombs, AddedTokenWithHugeId) {
  // The WordPiece seed with one added token moved to id 16,000,000 (under kMaxVocabSize, far past the
  // 22-token vocabulary): it would size the id table to 16 M entries.
  const std::string seed =
      read_bytes(fs::path(GRAFT_SOURCE_DIR) / "tests/fuzz/corpus/tokenizer/wordpiece_tokenizer_json");
  const auto parts = graft::fuzz::split_parts(std::string_view(seed).substr(1), 2);
  nlohmann::json doc = nlohmann::json::parse(parts[0]);
  doc["added_tokens"][4]["id"] = 16000000;
  expect_error_mentioning(
      [&] { graft::fuzz::load_tokenizer_bytes(std::string("\x00", 1) + doc.dump() + "\n#%#\n[MASK] a"); },
      {"tokenizer.json", "[MASK]", "16000000"});
}

TEST(UntrustedBombs, VocabTxtOverTheSizeLimit) {
  // The line count is checked before the table is built; 2^24 + 1 one-byte lines is 32 MiB of file.
  std::string vocab;
  vocab.reserve(size_t{2} << 24);
  for (int64_t i = 0; i <= (int64_t{1} << 24); ++i) vocab += "a\n";
  expect_error_mentioning([&] { graft::fuzz::load_tokenizer_bytes("\x01" + vocab); }, {"vocab.txt", "lines"});
}

TEST(UntrustedBombs, TextOverTheEncodeLimitIsRefusedBeforeItIsRead) {
  auto tokenizer = [] {
    const fs::path dir = graft::fuzz::fresh_dir("bomb-text");
    return graft::load_tokenizer(graft::fuzz::write_file(dir, "vocab.txt", "[UNK]\na\n"));
  }();
  // The size is checked first, so a view longer than its buffer is never dereferenced.
  const char buffer[1] = {'a'};
  expect_error_mentioning([&] { tokenizer->encode(std::string_view(buffer, graft::kMaxTextBytes + 1)); },
                          {std::to_string(graft::kMaxTextBytes)});
}

TEST(UntrustedBombs, RunJsonWithTooManyClasses) {
  std::string classes;
  for (int i = 0; i < 100001; ++i) classes += (i ? ",\"" : "\"") + std::to_string(i) + "\"";
  const std::string doc = R"({"task":"image-classify","model":"resnet18","head":"","classes":[)" + classes +
                          R"(],"preprocessing":{"size":224,"crop_pct":0.875,"mean":[0,0,0],"std":[1,1,1]}})";
  expect_error_mentioning([&] { graft::fuzz::read_run_json_bytes(doc); }, {"graft.json", "100001"});
}

TEST(UntrustedBombs, KerasH5DatasetThatStoresNothing) {
  // A 2^31-element dataset whose chunks were never written: HDF5 would hand back 8 GiB of fill value.
  const fs::path dir = graft::fuzz::fresh_dir("bomb-h5");
  const std::string path = (dir / "bomb.h5").string();
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const auto string_list = [](hid_t object, const char* name, const std::vector<const char*>& values) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    const hsize_t n = values.size();
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, type, values.data());
    H5Aclose(attribute), H5Sclose(space), H5Tclose(type);
  };
  string_list(file, "layer_names", {"dense"});
  const hid_t group = H5Gcreate2(file, "dense", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  string_list(group, "weight_names", {"kernel:0"});
  const hsize_t dims[2] = {65536, 32768}, chunk[2] = {64, 64};
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t plist = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(plist, 2, chunk);
  const hid_t dataset = H5Dcreate2(group, "kernel:0", H5T_IEEE_F32LE, space, H5P_DEFAULT, plist, H5P_DEFAULT);
  H5Dclose(dataset), H5Pclose(plist), H5Sclose(space), H5Gclose(group), H5Fclose(file);
  expect_error_mentioning([&] { graft::fuzz::read_keras_h5_bytes(read_bytes(path)); },
                          {"kernel:0", "[65536, 32768]", "stores no data"});
}

// libhdf5 itself crashes or loops forever on some damaged files (tests/fuzz/known-libhdf5/, found by
// fuzz_keras_h5). read_keras_h5 reads in a child process by default, so each must end in a FormatError
// naming the file, and this process carries on. scripts/fuzz also points GRAFT_TEST_H5_FINDINGS at the
// libhdf5 findings of the run it just made. Under ASan the children's reports are printed: expected.
TEST(KerasH5ChildProcess, Libhdf5CrashesAndHangsBecomeFormatErrors) {
  std::vector<fs::path> paths;
  for (const auto& entry : fs::directory_iterator(fs::path(GRAFT_SOURCE_DIR) / "tests/fuzz/known-libhdf5"))
    paths.push_back(entry.path());
  if (const char* findings = std::getenv("GRAFT_TEST_H5_FINDINGS")) {
    for (const auto& entry : fs::directory_iterator(findings)) paths.push_back(entry.path());
  }
  graft::KerasH5Options options;
  options.timeout = std::chrono::seconds(2);
  // "crashed with signal 11" here, signal 6 under ASan (scripts/fuzz sets abort_on_error).
  const std::map<std::string, std::string> expected = {
      {"h5hg-read-segv", "libhdf5 crashed with signal"},
      {"h5hg-deserialize-infinite-loop", "libhdf5 did not finish within 2 s"}};
  size_t files = 0;
  for (const fs::path& path : paths) {
    const std::string name = path.filename().string();
    SCOPED_TRACE(path.string());
    try {
      (void)graft::read_keras_h5(path.string(), options);
      ADD_FAILURE() << "loaded without an error";
    } catch (const graft::FormatError& e) {
      std::cout << "[h5 child] " << name << ": " << e.what() << "\n";
      EXPECT_EQ(e.file(), path.string());
      if (expected.count(name)) {
        EXPECT_NE(std::string(e.what()).find(expected.at(name)), std::string::npos) << e.what();
      }
    }
    ++files;
  }
  EXPECT_GE(files, expected.size());
}

// The child's stream carries everything the in-process walk finds: the same tensors, bit for bit, the
// same topology, and the same error message for a file it refuses.
TEST(KerasH5ChildProcess, SameModelAsInProcessReading) {
  graft::KerasH5Options in_process;
  in_process.separate_process = false;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(fs::path(GRAFT_SOURCE_DIR) / "tests/fuzz/corpus/keras_h5"))
    files.push_back(entry.path());
  for (const auto& entry :
       fs::directory_iterator(fs::path(GRAFT_SOURCE_DIR) / "tests/fuzz/regressions/keras_h5"))
    if (entry.path().filename() != "README.md") files.push_back(entry.path());
  size_t compared = 0;
  for (const fs::path& path : files) {
    SCOPED_TRACE(path.string());
    std::string child_error, own_error;
    graft::KerasModel child, own;
    try {
      child = graft::read_keras_h5(path.string());
    } catch (const graft::Error& e) {
      child_error = e.what();
    }
    try {
      own = graft::read_keras_h5(path.string(), in_process);
    } catch (const graft::Error& e) {
      own_error = e.what();
    }
    EXPECT_EQ(child_error, own_error);
    if (!own_error.empty()) continue;
    EXPECT_EQ(child.format, own.format);
    EXPECT_EQ(child.keras_version, own.keras_version);
    EXPECT_EQ(child.model_config, own.model_config);
    EXPECT_EQ(child.layers.size(), own.layers.size());
    const graft::NamedTensors a = child.named_weights(), b = own.named_weights();
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GT(a.size(), 0u);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    }
    ++compared;
  }
  EXPECT_GE(compared, 4u);  // the four seeds load
}

// No format that can run code is loaded: nothing in graft calls libtorch's archive or TorchScript
// loaders (torch::load, InputArchive, jit::load, the unpickler), which read pickle and TorchScript code.
// Checkpoints keep the optimiser's state in safetensors (src/train/checkpoint.cpp).
TEST(NoPickle, NoSourceFileCallsLibtorchsArchiveOrTorchScriptLoaders) {
  const std::vector<std::string> loaders = {"torch::load(",  "InputArchive", "jit::load(",       "load_from(",
                                            "jit::unpickle", "pickle_load(", "_load_for_mobile("};
  int files = 0;
  for (const char* folder : {"src", "include"}) {
    for (const auto& entry : fs::recursive_directory_iterator(fs::path(GRAFT_SOURCE_DIR) / folder)) {
      if (!entry.is_regular_file()) continue;
      ++files;
      const std::string text = read_bytes(entry.path());
      for (const auto& loader : loaders)
        EXPECT_EQ(text.find(loader), std::string::npos) << entry.path() << " calls " << loader;
    }
  }
  EXPECT_GT(files, 50);
}

// A folder, or a FIFO, where a weights file is expected is said as what it is (it was "no such file": #15.9).
TEST(WrongKindOfFile, FoldersAndFifosAreSaidAsWhatTheyAre) {
  const fs::path dir = fs::temp_directory_path() / ("graft_kind_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "weights.h5");
  expect_error_mentioning([&] { graft::read_keras_h5((dir / "weights.h5").string()); },
                          {"weights.h5: is a folder, not a Keras .h5 file"});
  expect_error_mentioning([&] { graft::read_tfjs_model((dir / "weights.h5").string()); },
                          {"is a folder, not a TF.js model.json"});
  ASSERT_EQ(::mkfifo((dir / "pipe.h5").c_str(), 0600), 0);
  expect_error_mentioning([&] { graft::read_keras_file((dir / "pipe.h5").string()); },
                          {"pipe.h5: is a FIFO, not a weights file"});
  fs::remove_all(dir);
}
