// safetensors reader/writer and state-dict loading: round trips, a file built byte by byte (independent of
// our writer), corrupt files that must fail with a FormatError naming file, tensor and numbers, atomic
// writes, and the LoadReport of load_state_dict.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "graft/errors.h"
#include "graft/weights.h"

namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("graft-safetensors-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(path_)) out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The 8-byte little-endian length prefix, written byte by byte so the test does not rely on host order.
std::string le_u64(uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  return out;
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return le_u64(header.size()) + header + data;
}

// Opens `path` and expects a FormatError whose message contains every one of `needles`.
void expect_format_error(const std::string& path, std::initializer_list<std::string> needles) {
  try {
    graft::SafeTensorsReader reader(path);
    ADD_FAILURE() << path << ": opened without error, expected a graft::FormatError";
  } catch (const graft::FormatError& e) {
    const std::string message = e.what();
    EXPECT_EQ(e.file(), path);
    for (const std::string& needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos) << "message lacks \"" << needle << "\": " << message;
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": threw something other than graft::FormatError: " << e.what();
  }
}

torch::Tensor find(const graft::NamedTensors& tensors, const std::string& name) {
  for (const auto& [key, value] : tensors)
    if (key == name) return value;
  ADD_FAILURE() << "no tensor named " << name;
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Round trips and format details

TEST(SafetensorsTest, RoundTripsEveryDtypeEmptyAndScalarTensorsAndMetadata) {
  TempDir dir;
  torch::manual_seed(0);
  const graft::NamedTensors tensors = {
      {"f32", torch::randn({2, 3})},
      {"f64", torch::randn({4}, torch::kDouble)},
      {"f16", torch::randn({3, 1}).to(torch::kHalf)},  // odd byte count: exercises the aligned layout
      {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"i64", torch::arange(-3, 3, torch::kLong).reshape({2, 3})},
      {"i32", torch::tensor({-2147483647 - 1, 0, 2147483647}, torch::kInt)},
      {"i16", torch::tensor({-32768, 1, 32767}, torch::kShort)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kChar)},
      {"u8", torch::tensor({0, 128, 255}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"empty", torch::empty({0, 3})},
      {"scalar", torch::tensor(3.25)},
      {"transposed", torch::arange(6, torch::kFloat).reshape({2, 3}).t()},  // non-contiguous input
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"source", "graft test"}};
  const std::string path = dir.file("all.safetensors");
  graft::write_safetensors(path, tensors, metadata);

  graft::SafeTensorsReader reader(path);
  EXPECT_EQ(reader.metadata(), metadata);
  ASSERT_EQ(reader.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    SCOPED_TRACE(name);
    EXPECT_EQ(reader.tensors()[i].name, name);  // file order is the given order
    const torch::Tensor got = reader.load(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(torch::equal(got, expected)) << got << " vs " << expected;
    // Aligned like the reference writer: every tensor starts at a multiple of its element size.
    EXPECT_EQ(reader.tensors()[i].begin % expected.element_size(), 0u);
  }
  EXPECT_EQ(reader.info("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(reader.info("empty").begin, reader.info("empty").end);
  EXPECT_EQ(reader.info("f16").dtype, "F16");

  // Header length is a multiple of 8, so the data section starts aligned.
  const std::string bytes = read_bytes(path);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(header_size % 8, 0u);

  const graft::NamedTensors all = graft::read_safetensors(path);
  ASSERT_EQ(all.size(), tensors.size());
  EXPECT_TRUE(torch::equal(find(all, "i64"), tensors[4].second));
}

TEST(SafetensorsTest, RoundTripsAnEmptyFile) {
  TempDir dir;
  const std::string path = dir.file("none.safetensors");
  graft::write_safetensors(path, {});
  graft::SafeTensorsReader reader(path);
  EXPECT_TRUE(reader.tensors().empty());
  EXPECT_TRUE(reader.metadata().empty());
}

TEST(SafetensorsTest, ReadsAHandMadeFile) {
  TempDir dir;
  // Header order differs from data order on purpose: "b" is listed first but its bytes come second.
  const std::string header = R"({"b":{"dtype":"I16","shape":[1,2],"data_offsets":[8,12]},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("h":{"dtype":"F16","shape":[],"data_offsets":[12,14]},)"
                             R"("bf":{"dtype":"BF16","shape":[1],"data_offsets":[14,16]},)"
                             R"("flag":{"dtype":"BOOL","shape":[2],"data_offsets":[16,18]},)"
                             R"("__metadata__":{"format":"pt"}}  )";
  const char data[] = {
      '\x00', '\x00', '\xc0', '\x3f',  // a[0] = 1.5f (0x3fc00000)
      '\x00', '\x00', '\x00', '\xc0',  // a[1] = -2.0f (0xc0000000)
      '\x07', '\x00', '\xfd', '\xff',  // b = {7, -3}
      '\x00', '\x3c',                  // h = 1.0 in half (0x3c00)
      '\x80', '\x3f',                  // bf = 1.0 in bfloat16 (0x3f80)
      '\x01', '\x00',                  // flag = {true, false}
  };
  const std::string path = dir.file("hand.safetensors");
  write_bytes(path, safetensors_bytes(header, std::string(data, sizeof data)));

  graft::SafeTensorsReader reader(path);
  ASSERT_EQ(reader.tensors().size(), 5u);
  EXPECT_EQ(reader.tensors()[0].name, "b");
  EXPECT_EQ(reader.tensors()[1].name, "a");
  EXPECT_EQ(reader.metadata().at("format"), "pt");
  EXPECT_TRUE(reader.contains("a"));
  EXPECT_FALSE(reader.contains("c"));

  const torch::Tensor a = reader.load("a");
  EXPECT_EQ(a.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(a, torch::tensor({1.5f, -2.0f})));
  const torch::Tensor b = reader.load("b");
  EXPECT_EQ(b.scalar_type(), torch::kShort);
  EXPECT_TRUE(torch::equal(b, torch::tensor({{7, -3}}, torch::kShort)));
  const torch::Tensor h = reader.load("h");
  EXPECT_EQ(h.dim(), 0);
  EXPECT_EQ(h.scalar_type(), torch::kHalf);
  EXPECT_EQ(h.item<float>(), 1.0f);
  EXPECT_EQ(reader.load("bf").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(reader.load("bf").item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(reader.load("flag"), torch::tensor({true, false})));

  try {
    reader.load("c");
    ADD_FAILURE() << "expected WeightNotFound";
  } catch (const graft::WeightNotFound& e) {
    EXPECT_NE(std::string(e.what()).find("'c'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(SafetensorsTest, ReadsBoolBytesOtherThanOneAsTrue) {
  TempDir dir;
  const std::string path = dir.file("bool.safetensors");
  write_bytes(path, safetensors_bytes(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                                      std::string("\x00\x02\xff", 3)));
  graft::SafeTensorsReader reader(path);
  EXPECT_TRUE(torch::equal(reader.load("m"), torch::tensor({false, true, true})));
}

// ---------------------------------------------------------------------------------------------------------
// Corrupt files: every one a FormatError naming the file, the tensor and the numbers involved

TEST(SafetensorsCorruptTest, TruncatedBelowEightBytes) {
  TempDir dir;
  const std::string path = dir.file("short.safetensors");
  write_bytes(path, std::string("\x10\x00\x00\x00\x00", 5));
  expect_format_error(path, {path, "5 bytes", "8-byte"});
  const std::string empty = dir.file("empty.safetensors");
  write_bytes(empty, "");
  expect_format_error(empty, {empty, "0 bytes"});
}

TEST(SafetensorsCorruptTest, HeaderLengthLargerThanFile) {
  TempDir dir;
  const std::string path = dir.file("cut.safetensors");
  write_bytes(path, le_u64(100) + R"({"a":{"dtype":"F32"})");  // 20 header bytes of a claimed 100
  expect_format_error(path, {path, "100", "20 bytes follow", "truncated"});
}

TEST(SafetensorsCorruptTest, OversizedHeaderClaim) {
  TempDir dir;
  const std::string path = dir.file("huge.safetensors");
  write_bytes(path, le_u64(1ull << 40) + "{}");
  expect_format_error(path, {path, "1099511627776", std::to_string(graft::kMaxSafetensorsHeaderBytes)});
}

TEST(SafetensorsCorruptTest, InvalidJsonAndNonObjectHeaders) {
  TempDir dir;
  const std::string bad = dir.file("bad.safetensors");
  write_bytes(bad, safetensors_bytes(R"({"a": {"dtype": "F32", )", ""));
  expect_format_error(bad, {bad, "not valid JSON"});
  const std::string array = dir.file("array.safetensors");
  write_bytes(array, safetensors_bytes("[1, 2]", ""));
  expect_format_error(array, {array, "must be a JSON object", "array"});
  const std::string deep = dir.file("deep.safetensors");
  write_bytes(deep,
              safetensors_bytes(R"({"a":)" + std::string(10000, '[') + std::string(10000, ']') + "}", ""));
  expect_format_error(deep, {deep, "nests deeper"});
  const std::string twice = dir.file("twice.safetensors");
  write_bytes(twice, safetensors_bytes(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
                                       R"("a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})",
                                       ""));
  expect_format_error(twice, {twice, "two entries named 'a'"});
}

TEST(SafetensorsCorruptTest, MalformedEntries) {
  TempDir dir;
  const std::string not_object = dir.file("not_object.safetensors");
  write_bytes(not_object, safetensors_bytes(R"({"w": 3})", ""));
  expect_format_error(not_object, {not_object, "'w'", "must be an object"});
  const std::string no_offsets = dir.file("no_offsets.safetensors");
  write_bytes(no_offsets, safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1]}})", "abcd"));
  expect_format_error(no_offsets, {no_offsets, "'w'", "data_offsets"});
  const std::string float_dim = dir.file("float_dim.safetensors");
  write_bytes(float_dim,
              safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "a"));
  expect_format_error(float_dim, {float_dim, "'w'", "must be an integer", "1.5"});
  const std::string metadata = dir.file("metadata.safetensors");
  write_bytes(metadata, safetensors_bytes(R"({"__metadata__":{"epochs":3}})", ""));
  expect_format_error(metadata, {metadata, "__metadata__", "'epochs'", "must be a string"});
}

TEST(SafetensorsCorruptTest, UnknownDtype) {
  TempDir dir;
  const std::string path = dir.file("dtype.safetensors");
  write_bytes(path,
              safetensors_bytes(R"({"enc.weight":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}})", "x"));
  expect_format_error(path, {path, "'enc.weight'", "\"F7\"", "BF16"});
}

TEST(SafetensorsCorruptTest, DataOffsetsBeyondEnd) {
  TempDir dir;
  const std::string path = dir.file("beyond.safetensors");
  write_bytes(path, safetensors_bytes(R"({"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})",
                                      std::string(8, '\0')));
  expect_format_error(path, {path, "'w'", "400", "only 8 bytes"});
}

TEST(SafetensorsCorruptTest, DataOffsetsNotAscendingOrNotIntegers) {
  TempDir dir;
  const std::string backwards = dir.file("backwards.safetensors");
  write_bytes(backwards, safetensors_bytes(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})",
                                           std::string(8, '\0')));
  expect_format_error(backwards, {backwards, "'w'", "begin 4 > end 0"});
  const std::string negative = dir.file("negative_offset.safetensors");
  write_bytes(negative, safetensors_bytes(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-4,0]}})",
                                          std::string(8, '\0')));
  expect_format_error(negative, {negative, "'w'", "[-4,0]"});
  const std::string three = dir.file("three.safetensors");
  write_bytes(three, safetensors_bytes(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,2,4]}})",
                                       std::string(8, '\0')));
  expect_format_error(three, {three, "'w'", "two non-negative integers"});
}

TEST(SafetensorsCorruptTest, OverlappingOffsets) {
  TempDir dir;
  const std::string path = dir.file("overlap.safetensors");
  // Listed out of order, so the check has to sort by begin.
  write_bytes(path, safetensors_bytes(R"({"late":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                                      R"("early":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                      std::string(12, '\0')));
  expect_format_error(path, {path, "'early'", "'late'", "[0, 8)", "[4, 12)", "overlap"});

  // One range lying wholly inside another.
  const std::string nested = dir.file("nested.safetensors");
  write_bytes(nested, safetensors_bytes(R"({"big":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},)"
                                        R"("x":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                                        R"("y":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                                        std::string(10, '\0')));
  expect_format_error(nested, {nested, "'big'", "overlap"});
}

TEST(SafetensorsCorruptTest, ByteLengthNotMatchingShapeTimesDtype) {
  TempDir dir;
  const std::string path = dir.file("length.safetensors");
  write_bytes(path, safetensors_bytes(R"({"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                      std::string(8, '\0')));
  expect_format_error(path, {path, "'fc.bias'", "span 8 bytes", "3 x 4 = 12"});
}

TEST(SafetensorsCorruptTest, NegativeOrOverflowingShape) {
  TempDir dir;
  const std::string negative = dir.file("negative.safetensors");
  write_bytes(negative,
              safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,0]}})", ""));
  expect_format_error(negative, {negative, "'w'", "-2", "dimension 1"});
  // 2^32 * 2^32 wraps to 0 in 64 bits and would match an empty range without the overflow check.
  const std::string overflow = dir.file("overflow.safetensors");
  write_bytes(
      overflow,
      safetensors_bytes(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""));
  expect_format_error(overflow, {overflow, "'w'", "64 bits"});
}

TEST(SafetensorsCorruptTest, MissingFileIsAnErrorNamingThePath) {
  TempDir dir;
  const std::string path = dir.file("absent.safetensors");
  try {
    graft::SafeTensorsReader reader(path);
    ADD_FAILURE() << "expected graft::Error";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Writer: refusals and atomicity

TEST(SafetensorsWriterTest, RefusesDuplicateNamesAndUnsupportedDtypes) {
  TempDir dir;
  const std::string path = dir.file("dup.safetensors");
  try {
    graft::write_safetensors(path, {{"w", torch::zeros({1})}, {"w", torch::ones({1})}});
    ADD_FAILURE() << "expected graft::Error for a duplicate name";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w' appears twice"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_THROW(graft::write_safetensors(path, {{"c", torch::zeros({1}, torch::kComplexFloat)}}),
               graft::Error);
  EXPECT_THROW(graft::write_safetensors(path, {{"__metadata__", torch::zeros({1})}}), graft::Error);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(SafetensorsWriterTest, MissingFolderFailsAndLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("no/such/folder/w.safetensors");
  try {
    graft::write_safetensors(path, {{"w", torch::zeros({2})}});
    ADD_FAILURE() << "expected graft::Error";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(SafetensorsWriterTest, ReplacesAnExistingFileAndLeavesNoTemporaries) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  graft::write_safetensors(path, {{"old", torch::zeros({2})}});
  graft::write_safetensors(path, {{"new", torch::ones({3})}});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"w.safetensors"});
  graft::SafeTensorsReader reader(path);
  ASSERT_EQ(reader.tensors().size(), 1u);
  EXPECT_TRUE(torch::equal(reader.load("new"), torch::ones({3})));
}

// A write that fails midway (here: the file size limit, standing in for a full disk) keeps the old file.
TEST(SafetensorsWriterTest, FailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  graft::write_safetensors(path, {{"old", torch::zeros({2})}});
  const std::string before = read_bytes(path);

  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = ::signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG
  rlimit limited = saved;
  limited.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  std::string message;
  try {
    graft::write_safetensors(path, {{"big", torch::zeros({100000})}});
  } catch (const graft::Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, previous_handler);

  ASSERT_FALSE(message.empty()) << "expected graft::Error from a write over the file size limit";
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"w.safetensors"});
  EXPECT_EQ(read_bytes(path), before);
}

// ---------------------------------------------------------------------------------------------------------
// state_dict / load_state_dict / load_safetensors

namespace {

torch::nn::Sequential small_model() {
  return torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4));
}

graft::NamedTensors cloned_state(const torch::nn::Module& module) {
  graft::NamedTensors out;
  for (const auto& [name, tensor] : graft::state_dict(module)) out.emplace_back(name, tensor.clone());
  return out;
}

void erase(graft::NamedTensors& tensors, const std::string& name) {
  tensors.erase(
      std::remove_if(tensors.begin(), tensors.end(), [&](const auto& item) { return item.first == name; }),
      tensors.end());
}

void replace(graft::NamedTensors& tensors, const std::string& name, torch::Tensor value) {
  for (auto& item : tensors)
    if (item.first == name) item.second = value;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

}  // namespace

TEST(StateDictTest, NamesParametersAndBuffers) {
  auto model = small_model();
  std::vector<std::string> names;
  for (const auto& item : graft::state_dict(*model)) names.push_back(item.first);
  const std::vector<std::string> expected = {
      "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"};
  EXPECT_EQ(names, expected);
}

TEST(StateDictTest, RoundTripsThroughASafetensorsFile) {
  TempDir dir;
  torch::manual_seed(1);
  auto source = small_model();
  {
    torch::NoGradGuard no_grad;
    source[1]->named_buffers()["running_mean"].uniform_();
    source[1]->named_buffers()["num_batches_tracked"].fill_(42);
  }
  const std::string path = dir.file("model.safetensors");
  graft::write_safetensors(path, graft::state_dict(*source));

  auto target = small_model();
  const graft::LoadReport report = graft::load_safetensors(*target, path);
  EXPECT_TRUE(report.ok()) << report.to_string();
  EXPECT_EQ(report.loaded.size(), 7u);
  const auto want = graft::state_dict(*source);
  const auto got = graft::state_dict(*target);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].second.scalar_type(), want[i].second.scalar_type()) << want[i].first;
    EXPECT_TRUE(torch::equal(got[i].second, want[i].second)) << want[i].first;
  }
  EXPECT_EQ(got[6].second.scalar_type(), torch::kLong);
  EXPECT_EQ(got[6].second.item<int64_t>(), 42);
  EXPECT_TRUE(target[0]->named_parameters()["weight"].requires_grad());
}

TEST(StateDictTest, ReportsMissingUnexpectedAndMismatchedWhenNotStrict) {
  auto model = small_model();
  const torch::Tensor before = model[0]->named_parameters()["weight"].clone();
  graft::NamedTensors source = cloned_state(*model);
  erase(source, "0.bias");
  replace(source, "0.weight", torch::zeros({5, 3}));
  source.emplace_back("extra.weight", torch::zeros({2, 2}));

  graft::LoadOptions options;
  options.strict = false;
  const graft::LoadReport report = graft::load_state_dict(*model, source, options);
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.missing, std::vector<std::string>{"0.bias"});
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra.weight"});
  ASSERT_EQ(report.mismatched.size(), 1u);
  EXPECT_EQ(report.mismatched[0].name, "0.weight");
  EXPECT_EQ(report.mismatched[0].expected, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(report.mismatched[0].got, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(report.loaded.size(), 5u);
  EXPECT_TRUE(torch::equal(model[0]->named_parameters()["weight"], before))
      << "a mismatched tensor was touched";
}

TEST(StateDictTest, StrictThrowsTheReportAndLoadsNothing) {
  auto model = small_model();
  graft::NamedTensors source = cloned_state(*model);
  replace(source, "0.weight", torch::zeros({5, 3}));
  replace(source, "1.bias", torch::full({4}, 7.0f));
  graft::LoadOptions options;
  options.source_name = "ckpt.safetensors";
  try {
    graft::load_state_dict(*model, source, options);
    ADD_FAILURE() << "expected graft::Error";
  } catch (const graft::Error& e) {
    const std::string message = e.what();
    for (const std::string needle :
         {"ckpt.safetensors", "0.weight", "[4, 3]", "[5, 3]", "set strict to false"})
      EXPECT_NE(message.find(needle), std::string::npos) << "lacks " << needle << ": " << message;
  }
  EXPECT_FALSE(torch::equal(model[1]->named_parameters()["bias"], torch::full({4}, 7.0f)))
      << "strict failure must not load the tensors that fit";
}

TEST(StateDictTest, SkipPrefixesIgnoreAReplacedHead) {
  auto model = small_model();
  graft::NamedTensors source = cloned_state(*model);
  replace(source, "0.weight", torch::zeros({1000, 3}));     // the old head: wrong shape, skipped
  erase(source, "0.bias");                                  // absent: skipped, not missing
  source.emplace_back("0.1.weight", torch::zeros({2}));     // source-only under the prefix: skipped
  source.emplace_back("0extra.weight", torch::zeros({2}));  // shares the letters, not the module

  graft::LoadOptions options;
  options.strict = false;
  options.skip_prefixes = {"0"};
  const graft::LoadReport report = graft::load_state_dict(*model, source, options);
  EXPECT_TRUE(report.missing.empty()) << report.to_string();
  EXPECT_TRUE(report.mismatched.empty()) << report.to_string();
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"0extra.weight"});
  EXPECT_TRUE(contains(report.skipped, "0.weight"));
  EXPECT_TRUE(contains(report.skipped, "0.bias"));
  EXPECT_TRUE(contains(report.skipped, "0.1.weight"));
  EXPECT_EQ(report.loaded.size(), 5u);

  erase(source, "0extra.weight");
  options.strict = true;
  EXPECT_NO_THROW(graft::load_state_dict(*model, source, options));
}

TEST(StateDictTest, CastsHalfSourceToFloatParameter) {
  auto model = small_model();
  graft::NamedTensors source = cloned_state(*model);
  const torch::Tensor half = torch::tensor({0.5, -1.25, 3.0, 1024.0}).to(torch::kHalf);
  replace(source, "0.bias", half);
  const graft::LoadReport report = graft::load_state_dict(*model, source);
  EXPECT_TRUE(report.ok());
  const torch::Tensor bias = model[0]->named_parameters()["bias"];
  EXPECT_EQ(bias.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(bias, half.to(torch::kFloat)));
}

TEST(StateDictTest, LoadsIntegerBufferAndRefusesIntegerIntoFloat) {
  auto model = small_model();
  graft::NamedTensors source = cloned_state(*model);
  replace(source, "1.num_batches_tracked", torch::tensor(int64_t{123}));
  graft::load_state_dict(*model, source);
  const torch::Tensor count = model[1]->named_buffers()["num_batches_tracked"];
  EXPECT_EQ(count.scalar_type(), torch::kLong);
  EXPECT_EQ(count.item<int64_t>(), 123);

  replace(source, "1.running_var", torch::ones({4}, torch::kLong));
  try {
    graft::load_state_dict(*model, source);
    ADD_FAILURE() << "expected graft::Error";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("1.running_var"), std::string::npos) << e.what();
  }
}

TEST(StateDictTest, LoadSafetensorsNamesTheFileAndLoadsF16) {
  TempDir dir;
  auto model = small_model();
  graft::NamedTensors source;
  for (const auto& [name, tensor] : cloned_state(*model))
    source.emplace_back(name, tensor.is_floating_point() ? tensor.to(torch::kHalf) : tensor);
  erase(source, "1.running_var");
  const std::string path = dir.file("half.safetensors");
  graft::write_safetensors(path, source);

  try {
    graft::load_safetensors(*model, path);
    ADD_FAILURE() << "expected graft::Error for a missing tensor";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1.running_var [4]"), std::string::npos) << e.what();
  }
  graft::LoadOptions options;
  options.strict = false;
  const graft::LoadReport report = graft::load_safetensors(*model, path, options);
  EXPECT_EQ(report.missing, std::vector<std::string>{"1.running_var"});
  EXPECT_EQ(model[0]->named_parameters()["weight"].scalar_type(), torch::kFloat);
  EXPECT_TRUE(
      torch::equal(model[0]->named_parameters()["weight"], find(source, "0.weight").to(torch::kFloat)));
}

TEST(LoadReportTest, ToStringListsEveryNameWithShapesAndAPrefixHint) {
  graft::LoadReport report;
  report.loaded = {"a.weight"};
  report.missing = {"fc.weight", "fc.bias"};
  report.shapes["fc.weight"] = {10, 512};
  report.shapes["fc.bias"] = {10};
  report.unexpected = {"module.fc.weight"};
  report.shapes["module.fc.weight"] = {10, 512};
  report.mismatched = {{"conv.weight", {64, 3, 7, 7}, {64, 1, 7, 7}}};
  report.skipped = {"head.weight"};
  const std::string text = report.to_string();
  for (const std::string needle : {"fc.weight [10, 512]", "fc.bias [10]", "module.fc.weight [10, 512]",
                                   "conv.weight: model expects [64, 3, 7, 7], source has [64, 1, 7, 7]",
                                   "head.weight", "start with 'module.'"})
    EXPECT_NE(text.find(needle), std::string::npos) << "lacks " << needle << ":\n" << text;
  EXPECT_FALSE(report.ok());
  EXPECT_TRUE(graft::LoadReport{}.ok());
}
