// Keras .h5 and TF.js importers against real pretrained weights and the reference outputs TF.js 4.22
// computed for them (shared/weights/*/reference/reference.safetensors):
//   tiny_darknet_tfjs          ml5 Tiny Darknet, TF.js layers model, float32 shards
//   tiny_darknet_tfjs_float16  the same weights in a float16-quantized manifest
//   mobilenet_v1_025_keras     Keras applications MobileNet v1 0.25, full-model .h5
// Each golden test feeds the reference `input` (NHWC, permuted to NCHW) and compares the pooled features,
// the logits and the softmax with the reference, and the top-1 class of every image. Tolerances (max
// absolute difference, float32) are derived per model and output in models/tolerance.h (depth, fan-in,
// the output's scale; half the logits' for probabilities). The README of each reference quotes an
// independent PyTorch port at 1e-5 .. 4e-5.
//
// Then the failure paths (truncated shard, bad manifests, wrong architecture, corrupt .h5), the
// weights-only .h5 layout (written here with libhdf5, as old Keras writes it), and the name-map tables.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include "graft/errors.h"
#include "graft/keras.h"
#include "graft/keras_h5.h"
#include "graft/registry.h"
#include "graft/summary.h"
#include "graft/tfjs.h"
#include "graft/transfer.h"
#include "graft/weights.h"
#include "io/keras_convert.h"
#include "io/tfjs.h"
#include "models/darknet.h"
#include "models/inception_v3.h"
#include "models/mobilenet_v1.h"
#include "models/mobilenet_v2.h"
#include "models/tolerance.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string weights_dir(const std::string& name) {
  return std::string(GRAFT_SHARED_DIR) + "/weights/" + name;
}

#define REQUIRE_FILE(path)                                                    \
  do {                                                                        \
    if (!fs::exists(path)) GTEST_SKIP() << "reference file absent: " << path; \
  } while (0)

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A fresh temporary folder, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("graft_keras_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

void write_bytes(const std::string& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// ---- golden parity ---------------------------------------------------------------------------------

struct GoldenCase {
  const char* name;
  const char* model;       // registry name
  const char* weights;     // file under shared/weights
  const char* reference;   // reference folder under shared/weights
  const char* labels;      // labels.txt under shared/weights
  bool output_is_softmax;  // `output` holds probabilities (Keras predictions) rather than logits
};

void PrintTo(const GoldenCase& c, std::ostream* os) {
  *os << c.name;
}

class KerasGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(KerasGolden, MatchesTfjsReference) {
  const GoldenCase& c = GetParam();
  const std::string weights = weights_dir(c.weights);
  const std::string reference_path = weights_dir(c.reference) + "/reference.safetensors";
  REQUIRE_FILE(weights);
  REQUIRE_FILE(reference_path);

  Backbone model = create_model(c.model);
  const LoadReport report = std::string(c.weights).find(".json") != std::string::npos
                                ? load_tfjs_weights(*model, weights)
                                : load_keras_h5_weights(*model, weights);
  ASSERT_TRUE(report.ok()) << report.to_string();
  EXPECT_TRUE(report.skipped.empty());
  model->eval();

  const SafeTensorsReader reference(reference_path);
  const torch::Tensor input = reference.load("input").permute({0, 3, 1, 2}).contiguous();  // NHWC -> NCHW
  torch::NoGradGuard no_grad;
  const torch::Tensor feature_map = model->forward_features(input);
  const torch::Tensor features = model->forward_head(feature_map, /*pre_logits=*/true);
  const torch::Tensor logits = model->forward_head(feature_map);
  const torch::Tensor probabilities = torch::softmax(logits, 1);

  const torch::Tensor ref_features = reference.load("features");
  const torch::Tensor ref_logits = reference.load(c.output_is_softmax ? "logits" : "output");
  const torch::Tensor ref_probabilities = reference.load(c.output_is_softmax ? "output" : "probabilities");
  ASSERT_EQ(features.sizes(), ref_features.sizes());
  ASSERT_EQ(logits.sizes(), ref_logits.sizes());

  const double d_features = max_abs_diff(features, ref_features);
  const double d_logits = max_abs_diff(logits, ref_logits);
  const double d_probabilities = max_abs_diff(probabilities, ref_probabilities);
  std::cout << "[ golden   ] " << c.name << ": max |diff| features " << d_features << ", logits " << d_logits
            << ", probabilities " << d_probabilities << " (max |logit| "
            << ref_logits.abs().max().item<double>() << ")\n";
  const testing::ForwardDepth depth = testing::forward_depth(*model);
  const double logits_tolerance = testing::forward_tolerance(depth, ref_logits);
  EXPECT_LE(d_features, testing::forward_tolerance(depth, ref_features))
      << c.name << ": pooled features differ from TF.js";
  EXPECT_LE(d_logits, logits_tolerance) << c.name << ": logits differ from TF.js";
  EXPECT_LE(d_probabilities, testing::softmax_tolerance(logits_tolerance))
      << c.name << ": probabilities differ from TF.js";

  const auto labels = read_lines(weights_dir(c.labels));
  ASSERT_EQ(labels.size(), 1000u);
  const torch::Tensor top1 = probabilities.argmax(1);
  const torch::Tensor ref_top1 = ref_probabilities.argmax(1);
  for (int64_t i = 0; i < input.size(0); ++i) {
    const int64_t got = top1[i].item<int64_t>(), expected = ref_top1[i].item<int64_t>();
    std::cout << "[ golden   ]   image " << i << ": " << labels[static_cast<size_t>(got)] << " "
              << probabilities[i][got].item<float>() << "\n";
    EXPECT_EQ(got, expected) << c.name << " image " << i << ": graft says '"
                             << labels[static_cast<size_t>(got)] << "', TF.js says '"
                             << labels[static_cast<size_t>(expected)] << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, KerasGolden,
    ::testing::Values(
        GoldenCase{"tiny_darknet_tfjs", "darknet_tiny.ml5", "tiny_darknet_tfjs/model.json",
                   "tiny_darknet_tfjs/reference", "tiny_darknet_tfjs/labels.txt", false},
        GoldenCase{"tiny_darknet_tfjs_float16", "darknet_tiny.ml5", "tiny_darknet_tfjs_float16/model.json",
                   "tiny_darknet_tfjs_float16/reference", "tiny_darknet_tfjs/labels.txt", false},
        GoldenCase{"mobilenet_v1_025_keras", "mobilenet_v1_025.keras",
                   "mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5", "mobilenet_v1_025_keras/reference",
                   "mobilenet_v1_025_keras/labels.txt", true}),
    [](const ::testing::TestParamInfo<GoldenCase>& info) { return std::string(info.param.name); });

// ---- TF.js reader -----------------------------------------------------------------------------------

TEST(Tfjs, ReadsTinyDarknetManifest) {
  const std::string path = weights_dir("tiny_darknet_tfjs/model.json");
  REQUIRE_FILE(path);
  const KerasModel model = read_tfjs_model(path);
  EXPECT_EQ(model.format, "tfjs-layers");
  EXPECT_EQ(model.keras_version, "2.1.6");
  const NamedTensors weights = model.named_weights();
  EXPECT_EQ(weights.size(), 77u);
  int64_t values = 0;
  for (const auto& [name, tensor] : weights) {
    values += tensor.numel();
    EXPECT_EQ(tensor.scalar_type(), torch::kFloat32) << name;
  }
  EXPECT_EQ(values, 1046488);  // README: 1,046,488 values
  const KerasLayer* conv = model.find_layer("conv2d_16");
  ASSERT_NE(conv, nullptr);
  EXPECT_EQ(conv->class_name, "Conv2D");
  EXPECT_EQ(conv->config["filters"], 1000);
  ASSERT_EQ(conv->inbound.size(), 1u);
  EXPECT_EQ(conv->inbound[0], "leaky_re_lu_15");
  EXPECT_EQ(model.layers.front().name, "input_1");
  // The float16 manifest decodes to the same weights up to half rounding.
  const std::string half_path = weights_dir("tiny_darknet_tfjs_float16/model.json");
  REQUIRE_FILE(half_path);
  const NamedTensors half = read_tfjs_model(half_path).named_weights();
  std::map<std::string, torch::Tensor> by_name(half.begin(), half.end());
  ASSERT_EQ(by_name.size(), weights.size());
  for (const auto& [name, tensor] : weights) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_TRUE(torch::equal(by_name[name], tensor.to(torch::kHalf).to(torch::kFloat32))) << name;
  }
}

TEST(Tfjs, HalfToFloatIsExact) {
  EXPECT_EQ(tfjs::half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(tfjs::half_to_float(0xC000), -2.0f);
  EXPECT_EQ(tfjs::half_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(tfjs::half_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(tfjs::half_to_float(0x0001), 5.9604644775390625e-8f);  // smallest subnormal, 2^-24
  EXPECT_EQ(tfjs::half_to_float(0x03FF), 6.097555160522461e-5f);   // largest subnormal
  EXPECT_TRUE(std::isinf(tfjs::half_to_float(0x7C00)));
  EXPECT_TRUE(std::isnan(tfjs::half_to_float(0x7E00)));
  EXPECT_TRUE(std::signbit(tfjs::half_to_float(0x8000)));
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {  // agrees with torch's conversion everywhere but NaN
    const uint16_t h = static_cast<uint16_t>(bits);
    const float expected =
        torch::from_blob(const_cast<uint16_t*>(&h), {1}, torch::kHalf).to(torch::kFloat32).item<float>();
    const float got = tfjs::half_to_float(h);
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
    } else {
      ASSERT_EQ(got, expected) << "half bits " << bits;
    }
  }
}

// A one-layer TF.js model folder: model.json with the given manifest entries, shards written by caller.
void write_model_json(const std::string& path, const json& weights_entries,
                      const std::vector<std::string>& paths = {"group1-shard1of1"}) {
  json model = {
      {"format", "layers-model"},
      {"modelTopology",
       {{"class_name", "Sequential"},
        {"config",
         {{"name", "tiny"},
          {"layers",
           {{{"class_name", "Conv2D"},
             {"config",
              {{"name", "conv2d_1"}, {"filters", 8}, {"kernel_size", {3, 3}}, {"use_bias", false}}}}}}}},
        {"keras_version", "2.15.0"}}},
      {"weightsManifest", {{{"paths", paths}, {"weights", weights_entries}}}},
  };
  write_text(path, model.dump(2));
}

TEST(Tfjs, DequantizesUint8Uint16AndFloat16) {
  TempDir dir;
  const json entries = {
      {{"name", "a/kernel"},
       {"shape", {2, 2}},
       {"dtype", "float32"},
       {"quantization", {{"dtype", "uint8"}, {"min", -1.0}, {"scale", 0.5}}}},
      {{"name", "a/bias"},
       {"shape", {2}},
       {"dtype", "float32"},
       {"quantization",
        {{"dtype", "uint16"}, {"min", 0.25}, {"scale", 0.001}, {"original_dtype", "float32"}}}},
      {{"name", "b/gamma"}, {"shape", {3}}, {"dtype", "float32"}, {"quantization", {{"dtype", "float16"}}}},
      {{"name", "b/beta"}, {"shape", {1}}, {"dtype", "float32"}},
  };
  write_model_json(dir.file("model.json"), entries);
  std::vector<uint8_t> shard{0, 1, 2, 255};            // uint8: v * 0.5 - 1
  for (uint16_t v : {uint16_t{0}, uint16_t{60000}}) {  // uint16: v * 0.001 + 0.25
    shard.push_back(static_cast<uint8_t>(v & 0xff));
    shard.push_back(static_cast<uint8_t>(v >> 8));
  }
  for (uint16_t h : {uint16_t{0x3C00}, uint16_t{0xC000}, uint16_t{0x3555}}) {  // float16: 1, -2, 0.33325
    shard.push_back(static_cast<uint8_t>(h & 0xff));
    shard.push_back(static_cast<uint8_t>(h >> 8));
  }
  const float beta = 3.5f;
  const auto* beta_bytes = reinterpret_cast<const uint8_t*>(&beta);
  shard.insert(shard.end(), beta_bytes, beta_bytes + 4);
  write_bytes(dir.file("group1-shard1of1"), shard.data(), shard.size());

  const KerasModel model = read_tfjs_model(dir.file("model.json"));
  ASSERT_EQ(model.weights.size(), 2u);  // grouped by layer: a, b
  EXPECT_EQ(model.weights[0].layer, "a");
  EXPECT_EQ(model.weights[1].layer, "b");
  const NamedTensors w = model.named_weights();
  EXPECT_TRUE(torch::equal(w[0].second, torch::tensor({-1.0f, -0.5f, 0.0f, 126.5f}).view({2, 2})));
  EXPECT_FLOAT_EQ(w[1].second[0].item<float>(), 0.25f);
  EXPECT_EQ(w[1].second[1].item<float>(),
            static_cast<float>(60000 * 0.001 + 0.25));  // double math, then float
  EXPECT_TRUE(torch::equal(w[2].second, torch::tensor({1.0f, -2.0f, 0.333251953125f})));
  EXPECT_EQ(w[3].second.item<float>(), 3.5f);
  // Sequential: each layer is fed by the one before (here the only one, by none).
  ASSERT_EQ(model.layers.size(), 1u);
  EXPECT_TRUE(model.layers[0].inbound.empty());
}

TEST(Tfjs, TruncatedShardNamesFileAndWeight) {
  TempDir dir;
  write_model_json(dir.file("model.json"),
                   {{{"name", "conv2d_1/kernel"}, {"shape", {3, 3, 16, 8}}, {"dtype", "float32"}}});
  const std::vector<uint8_t> short_shard(1000, 0);
  write_bytes(dir.file("group1-shard1of1"), short_shard.data(), short_shard.size());
  const std::string message = error_of([&] { read_tfjs_model(dir.file("model.json")); });
  EXPECT_NE(message.find("group1-shard1of1: expected 4608 bytes for 'conv2d_1/kernel', file has 1000"),
            std::string::npos)
      << message;
  EXPECT_THROW(read_tfjs_model(dir.file("model.json")), FormatError);

  // Too many bytes: the manifest does not belong to the shard.
  const std::vector<uint8_t> long_shard(4612, 0);
  write_bytes(dir.file("group1-shard1of1"), long_shard.data(), long_shard.size());
  const std::string extra = error_of([&] { read_tfjs_model(dir.file("model.json")); });
  EXPECT_NE(extra.find("has 4 bytes more than weight group 1"), std::string::npos) << extra;
}

TEST(Tfjs, TruncatedRealShardNamesFirstWeightThatDoesNotFit) {
  const std::string source = weights_dir("tiny_darknet_tfjs");
  REQUIRE_FILE(source + "/model.json");
  TempDir dir;
  for (const auto& entry : fs::directory_iterator(source)) {
    if (entry.is_regular_file()) fs::copy_file(entry.path(), dir.file(entry.path().filename().string()));
  }
  // group3 holds batch_normalization_11: gamma, beta, moving_mean, moving_variance, 64 floats each.
  fs::permissions(dir.file("group3-shard1of1"), fs::perms::owner_all, fs::perm_options::add);
  fs::resize_file(dir.file("group3-shard1of1"), 600);
  const std::string message = error_of([&] { read_tfjs_model(dir.file("model.json")); });
  EXPECT_NE(
      message.find("group3-shard1of1: expected 1024 bytes for 'batch_normalization_11/moving_mean' and the "
                   "weights after it, file has 600"),
      std::string::npos)
      << message;
  fs::remove(dir.file("group7-shard1of1"));
  fs::resize_file(dir.file("group3-shard1of1"), 1024);
  const std::string missing = error_of([&] { read_tfjs_model(dir.file("model.json")); });
  EXPECT_NE(missing.find("group7-shard1of1: missing"), std::string::npos) << missing;
}

TEST(Tfjs, BadManifestsNameTheFileAndWeight) {
  TempDir dir;
  const std::string path = dir.file("model.json");
  const auto message = [&] { return error_of([&] { read_tfjs_model(path); }); };

  write_text(path, "{\"modelTopology\": ");
  EXPECT_NE(message().find("model.json: is not valid JSON"), std::string::npos) << message();

  write_text(path, R"({"modelTopology": {"class_name": "Sequential", "config": {"layers": []}}})");
  EXPECT_NE(message().find("model.json: no \"weightsManifest\""), std::string::npos) << message();

  write_text(path, R"({"format": "graph-model", "modelTopology": {"node": []}, "weightsManifest": []})");
  EXPECT_NE(message().find("graph model"), std::string::npos) << message();

  write_text(path, R"({"weightsManifest": []})");
  EXPECT_NE(message().find("no \"modelTopology\""), std::string::npos) << message();

  write_model_json(path, {{{"name", "conv2d_1/kernel"},
                           {"shape", {3, 3}},
                           {"dtype", "float32"},
                           {"quantization", {{"dtype", "int4"}}}}});
  EXPECT_NE(message().find("weight 'conv2d_1/kernel': unknown quantization dtype 'int4'"), std::string::npos)
      << message();

  write_model_json(path, {{{"name", "conv2d_1/kernel"}, {"shape", {3, 3}}, {"dtype", "complex64"}}});
  EXPECT_NE(message().find("weight 'conv2d_1/kernel': dtype 'complex64' is not supported"), std::string::npos)
      << message();

  write_model_json(path, {{{"name", "conv2d_1/kernel"}, {"shape", {3, -3}}, {"dtype", "float32"}}});
  EXPECT_NE(message().find("weight 'conv2d_1/kernel': shape [3,-3] must hold non-negative integers"),
            std::string::npos)
      << message();

  write_model_json(path, {{{"name", "conv2d_1/kernel"},
                           {"shape", {2}},
                           {"dtype", "float32"},
                           {"quantization", {{"dtype", "uint8"}, {"scale", 0.1}}}}});
  EXPECT_NE(message().find("weight 'conv2d_1/kernel': quantization needs a number 'min'"), std::string::npos)
      << message();

  write_model_json(path, {{{"name", "w"}, {"shape", {1}}, {"dtype", "float32"}},
                          {{"name", "w"}, {"shape", {1}}, {"dtype", "float32"}}});
  EXPECT_NE(message().find("weight 'w' appears twice"), std::string::npos) << message();

  write_model_json(path, {{{"name", "w"}, {"shape", {1}}, {"dtype", "float32"}}}, {"/etc/passwd"});
  EXPECT_NE(message().find("is not relative"), std::string::npos) << message();

  // A missing file is said as such, by the file check every reader shares (a graft::Error naming the file).
  try {
    read_tfjs_model(dir.file("absent.json"));
    ADD_FAILURE() << "a missing model.json was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.json: no such TF.js model.json"), std::string::npos)
        << e.what();
  }
}

TEST(Keras, ParsesKeras3InboundNodes) {
  const json config = {
      {"class_name", "Functional"},
      {"config",
       {{"layers",
         {{{"class_name", "InputLayer"},
           {"name", "input"},
           {"config", {{"name", "input"}}},
           {"inbound_nodes", json::array()}},
          {{"class_name", "Add"},
           {"name", "add"},
           {"config", {{"name", "add"}}},
           {"inbound_nodes",
            {{{"args",
               {{{{"class_name", "__keras_tensor__"}, {"config", {{"keras_history", {"input", 0, 0}}}}},
                 {{"class_name", "__keras_tensor__"}, {"config", {{"keras_history", {"conv", 0, 0}}}}}}}},
              {"kwargs", json::object()}}}}}}}}},
  };
  const auto layers = parse_keras_layers(config, "x.json");
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[1].inbound, (std::vector<std::string>{"input", "conv"}));
  EXPECT_THROW(parse_keras_layers(json{{"class_name", "Functional"}, {"config", 3}}, "x.json"), FormatError);
}

// ---- Keras .h5 --------------------------------------------------------------------------------------

TEST(KerasH5, ReadsFullModelFile) {
  const std::string path = weights_dir("mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5");
  REQUIRE_FILE(path);
  const KerasModel model = read_keras_h5(path);
  EXPECT_EQ(model.format, "keras-h5");
  EXPECT_EQ(model.keras_version, "2.8.0");
  EXPECT_EQ(model.layers.size(), 91u);
  size_t datasets = 0;
  int64_t values = 0;
  for (const auto& layer : model.weights) {
    datasets += layer.tensors.size();
    for (const auto& item : layer.tensors) values += item.second.numel();
  }
  EXPECT_EQ(datasets, 137u);
  EXPECT_EQ(values, 475544);
  // weight_names order, not HDF5's alphabetical order.
  const auto& bn = model.weights[1];
  ASSERT_EQ(bn.layer, "conv1_bn");
  ASSERT_EQ(bn.tensors.size(), 4u);
  EXPECT_EQ(bn.tensors[0].first, "conv1_bn/gamma:0");
  EXPECT_EQ(bn.tensors[3].first, "conv1_bn/moving_variance:0");
  EXPECT_EQ(model.weights[0].tensors[0].second.sizes(), torch::IntArrayRef({3, 3, 3, 8}));
  const KerasLayer* gap = model.find_layer("global_average_pooling2d_1");
  ASSERT_NE(gap, nullptr);
  EXPECT_EQ(gap->config["keepdims"], true);
}

// Writes a Keras weights-only .h5 the way Keras 2.2 / h5py 2 did: fixed-length byte-string attributes,
// layer groups at the root, empty float arrays for weightless layers.
void write_string_list(hid_t object, const char* name, const std::vector<std::string>& values) {
  if (values.empty()) {
    const hsize_t zero = 0;
    const hid_t space = H5Screate_simple(1, &zero, nullptr);
    const hid_t attribute = H5Acreate2(object, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Aclose(attribute);
    H5Sclose(space);
    return;
  }
  size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size());
  std::vector<char> buffer(width * values.size(), '\0');
  for (size_t i = 0; i < values.size(); ++i)
    std::memcpy(buffer.data() + i * width, values[i].data(), values[i].size());
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, width);
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  const hsize_t count = values.size();
  const hid_t space = H5Screate_simple(1, &count, nullptr);
  const hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attribute, type, buffer.data());
  H5Aclose(attribute);
  H5Sclose(space);
  H5Tclose(type);
}

void write_weights_only_h5(const std::string& path, const KerasModel& model,
                           const std::string& extra_layer = "", hid_t dataset_type = H5T_IEEE_F32LE) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  std::vector<std::string> layer_names;
  for (const auto& layer : model.weights) layer_names.push_back(layer.layer);
  if (!extra_layer.empty()) layer_names.push_back(extra_layer);
  layer_names.push_back("conv1_relu");  // weightless: an empty weight_names
  write_string_list(file, "layer_names", layer_names);
  const hid_t link_plist = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(link_plist, 1);
  for (const auto& layer : model.weights) {
    const hid_t group = H5Gcreate2(file, layer.layer.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    std::vector<std::string> names;
    for (const auto& [name, tensor] : layer.tensors) {
      names.push_back(name);
      std::vector<hsize_t> dims(tensor.sizes().begin(), tensor.sizes().end());
      const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
      const hid_t dataset =
          H5Dcreate2(group, name.c_str(), dataset_type, space, link_plist, H5P_DEFAULT, H5P_DEFAULT);
      const torch::Tensor data =
          dataset_type == H5T_IEEE_F32LE ? tensor.contiguous() : tensor.to(torch::kInt32).contiguous();
      H5Dwrite(dataset, dataset_type == H5T_IEEE_F32LE ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT, H5S_ALL, H5S_ALL,
               H5P_DEFAULT, data.data_ptr());
      H5Dclose(dataset);
      H5Sclose(space);
    }
    write_string_list(group, "weight_names", names);
    H5Gclose(group);
  }
  if (!extra_layer.empty()) {  // a layer that lists a weight with no dataset
    const hid_t group = H5Gcreate2(file, extra_layer.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    write_string_list(group, "weight_names", {extra_layer + "/kernel:0"});
    H5Gclose(group);
  }
  const hid_t relu = H5Gcreate2(file, "conv1_relu", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  write_string_list(relu, "weight_names", {});
  H5Gclose(relu);
  H5Pclose(link_plist);
  H5Fclose(file);
}

TEST(KerasH5, WeightsOnlyFileLoadsLikeTheFullModel) {
  const std::string full = weights_dir("mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5");
  REQUIRE_FILE(full);
  const KerasModel reference = read_keras_h5(full);
  TempDir dir;
  const std::string path = dir.file("mobilenet_2_5_224_tf.h5");
  write_weights_only_h5(path, reference);

  const KerasModel weights_only = read_keras_h5(path);
  EXPECT_EQ(weights_only.format, "keras-h5-weights");
  EXPECT_TRUE(weights_only.layers.empty());
  const NamedTensors a = reference.named_weights(), b = weights_only.named_weights();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  // Same model either way.
  Backbone from_full = create_model("mobilenet_v1_025.keras");
  Backbone from_weights = create_model("mobilenet_v1_025.keras");
  load_keras_h5_weights(*from_full, full);
  EXPECT_TRUE(load_keras_h5_weights(*from_weights, path).ok());
  from_full->eval();
  from_weights->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({1, 3, 224, 224});
  EXPECT_TRUE(torch::equal(from_full->forward(x), from_weights->forward(x)));
}

// Keras ResNet50 (TF 2 layer names) through the name map: the golden Keras-v1 build's weights
// (make_golden.py KerasResNet50, torchvision names) are written back in Keras' names and layouts as a
// weights-only .h5, as keras-applications ships resnet50_weights_tf_dim_ordering_tf_kernels.h5; loading it
// into resnet50.keras must give the golden logits. (The layouts themselves are checked against TF.js on real
// weights above; this checks the table.)
TEST(KerasH5, ResNet50KerasNamesLoadIntoTheV1Build) {
  const std::string golden = std::string(GRAFT_GOLDEN_DIR) + "/resnet50_keras.weights.safetensors";
  const std::string io = std::string(GRAFT_GOLDEN_DIR) + "/resnet50_keras.io.safetensors";
  ASSERT_TRUE(fs::exists(golden)) << golden << " is missing (ctest's golden_references fixture writes it)";
  const SafeTensorsReader weights(golden);
  KerasModel keras;
  for (const auto& [layer, target] : keras::expand(*keras::find_name_map("resnet50"))) {
    KerasLayerWeights entry{layer, {}};
    const auto get = [&](const char* name) { return weights.load(target.module + "." + name); };
    switch (target.kind) {
      case keras::LayerKind::kConv2D:
        entry.tensors = {{layer + "/kernel:0", get("weight").permute({2, 3, 1, 0}).contiguous()},
                         {layer + "/bias:0", get("bias")}};
        break;
      case keras::LayerKind::kDense:
        entry.tensors = {{layer + "/kernel:0", get("weight").t().contiguous()},
                         {layer + "/bias:0", get("bias")}};
        break;
      case keras::LayerKind::kBatchNorm:
        entry.tensors = {{layer + "/gamma:0", get("weight")},
                         {layer + "/beta:0", get("bias")},
                         {layer + "/moving_mean:0", get("running_mean")},
                         {layer + "/moving_variance:0", get("running_var")}};
        break;
      default:
        FAIL() << layer << ": unexpected kind in the ResNet50 map";
    }
    keras.weights.push_back(std::move(entry));
  }
  EXPECT_EQ(keras.weights.size(), 107u);  // 53 conv, 53 BN, predictions
  TempDir dir;
  const std::string path = dir.file("resnet50_weights_tf_dim_ordering_tf_kernels.h5");
  write_weights_only_h5(path, keras);

  Backbone model = create_model("resnet50.keras");
  const LoadReport report = load_keras_h5_weights(*model, path);
  ASSERT_TRUE(report.ok()) << report.to_string();
  model->eval();
  const SafeTensorsReader reference(io);
  torch::NoGradGuard no_grad;
  const torch::Tensor expected = reference.load("logits");
  const double diff = max_abs_diff(model->forward(reference.load("pixel_values")), expected);
  const double tolerance = testing::forward_tolerance(testing::forward_depth(*model), expected);
  std::cout << "[ golden   ] resnet50.keras from Keras names: logits max |diff| " << diff << " (tolerance "
            << tolerance << ")\n";
  EXPECT_LE(diff, tolerance);
  // The torchvision (v1.5) build refuses the file: its convolutions have no bias.
  Backbone v15 = create_model("resnet50");
  EXPECT_THROW(load_keras_h5_weights(*v15, path), Error);
}

TEST(KerasH5, DamagedFilesNameFileAndDataset) {
  const std::string full = weights_dir("mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5");
  REQUIRE_FILE(full);
  KerasModel small = read_keras_h5(full);
  small.weights.resize(2);  // conv1, conv1_bn
  TempDir dir;

  write_weights_only_h5(dir.file("missing.h5"), small, "conv_ghost");
  const std::string missing = error_of([&] { read_keras_h5(dir.file("missing.h5")); });
  EXPECT_NE(missing.find("missing.h5: dataset '/conv_ghost/conv_ghost/kernel:0' is missing"),
            std::string::npos)
      << missing;

  write_weights_only_h5(dir.file("ints.h5"), small, "", H5T_STD_I32LE);
  const std::string ints = error_of([&] { read_keras_h5(dir.file("ints.h5")); });
  EXPECT_NE(ints.find("dataset '/conv1/conv1/kernel:0' is not floating point"), std::string::npos) << ints;

  write_text(dir.file("text.h5"), "this is not HDF5");
  const std::string text = error_of([&] { read_keras_h5(dir.file("text.h5")); });
  EXPECT_NE(text.find("text.h5: not an HDF5 file"), std::string::npos) << text;

  // A truncated copy of the real file.
  fs::copy_file(full, dir.file("cut.h5"));
  fs::permissions(dir.file("cut.h5"), fs::perms::owner_all, fs::perm_options::add);
  fs::resize_file(dir.file("cut.h5"), 1000000);
  EXPECT_THROW(read_keras_h5(dir.file("cut.h5")), FormatError);

  // An HDF5 file that is not a Keras one.
  const hid_t file = H5Fcreate(dir.file("plain.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(file);
  const std::string plain = error_of([&] { read_keras_h5(dir.file("plain.h5")); });
  EXPECT_NE(plain.find("neither a Keras model file"), std::string::npos) << plain;
}

// ---- conversion and loading ------------------------------------------------------------------------

TEST(KerasNameMap, TablesCoverEveryModelTensor) {
  struct Case {
    const char* model;  // registry name
    std::function<Backbone()> build;
    size_t layers;  // Keras layers with weights the map names
  };
  auto registry = [](const char* name) { return [name] { return create_model(name); }; };
  const Case cases[] = {
      {"darknet_tiny", registry("darknet_tiny"), 31},
      {"mobilenet_v1_025", registry("mobilenet_v1_025"), 55},
      {"mobilenet_v1_100", registry("mobilenet_v1_100"), 55},
      {"resnet50.keras", registry("resnet50.keras"), 107},
      // Keras applications' builds (classifier "Logits" / "predictions"), then the nsfwjs tags, whose
      // custom head replaces it: 2 + 4 + 16 * 6 + 2 + 1 + 3 nsfwjs Dense and 94 * 2 + 1 + 3.
      {"mobilenet_v2 (Keras build)", [] { return mobilenet_v2_keras(1000); }, 108},
      {"mobilenet_v2.nsfwjs", registry("mobilenet_v2.nsfwjs"), 108},
      {"mobilenet_v2.keras", registry("mobilenet_v2.keras"), 108},
      {"inception_v3 (Keras build)", [] { return inception_v3_keras(1000); }, 192},
      {"inception_v3.nsfwjs", registry("inception_v3.nsfwjs"), 192},
  };
  for (const Case& c : cases) {
    Backbone model = c.build();
    const keras::NameMap* map = keras::find_name_map(model->arch());
    ASSERT_NE(map, nullptr) << c.model;
    const auto expanded = keras::expand(*map);
    EXPECT_EQ(expanded.size(), c.layers) << c.model;
    // Every module the map names exists, and every model tensor is some map entry's. A tag's own head
    // (custom_head rows) exists only in that tag's build.
    auto modules = model->named_modules("", /*include_self=*/false);
    std::set<std::string> covered;
    for (const auto& [keras_name, target] : expanded) {
      if (target.custom_head && !model->has_custom_head() && modules.find(target.module) == nullptr) continue;
      ASSERT_NE(modules.find(target.module), nullptr)
          << c.model << ": map names missing module " << target.module << " (Keras '" << keras_name << "')";
      for (const auto& item : modules[target.module]->named_parameters())
        covered.insert(target.module + "." + item.key());
      for (const auto& item : modules[target.module]->named_buffers())
        covered.insert(target.module + "." + item.key());
    }
    for (const auto& [name, tensor] : state_dict(*model)) {
      EXPECT_TRUE(covered.count(name)) << c.model << ": '" << name << "' has no Keras name";
    }
  }
  EXPECT_EQ(keras::find_name_map("resnet18"), nullptr);
  EXPECT_EQ(keras::expand(*keras::find_name_map("resnet50")).at("conv4_block6_3_bn").module, "layer3.5.bn3");
  EXPECT_EQ(keras::find_name_map("mobilenet_v1_050")->arch, "mobilenet_v1");
  const auto darknet = keras::expand(*keras::find_name_map("darknet_tiny"));
  EXPECT_EQ(darknet.at("conv2d_16").module, "conv2d_16");
  EXPECT_EQ(darknet.at("conv2d_16").kind, keras::LayerKind::kConv2D);
  EXPECT_EQ(darknet.at("batch_normalization_15").kind, keras::LayerKind::kBatchNorm);
  EXPECT_EQ(darknet.count("batch_normalization_16"), 0u);
  const auto mobilenet = keras::expand(*keras::find_name_map("mobilenet_v1_025"));
  EXPECT_EQ(mobilenet.at("conv_dw_13").kind, keras::LayerKind::kDepthwiseConv2D);
  EXPECT_EQ(mobilenet.at("conv_pw_7_bn").module, "conv_pw_7_bn");
}

TEST(KerasNameMap, InceptionV3RowsFollowKerasCreationOrder) {
  const auto inception = keras::expand(*keras::find_name_map("inception_v3"));
  EXPECT_EQ(inception.at("conv2d_1").module, "Conv2d_1a_3x3.conv");
  EXPECT_EQ(inception.at("batch_normalization_5").module, "Conv2d_4a_3x3.bn");
  EXPECT_EQ(inception.at("conv2d_12").module, "Mixed_5b.branch_pool.conv");  // mixed0's average-pool branch
  EXPECT_EQ(inception.at("conv2d_27").module, "Mixed_6a.branch3x3.conv");
  EXPECT_EQ(inception.at("conv2d_34").module, "Mixed_6b.branch7x7_3.conv");
  EXPECT_EQ(inception.at("conv2d_76").module, "Mixed_7a.branch7x7x3_4.conv");
  EXPECT_EQ(inception.at("conv2d_80").module, "Mixed_7b.branch3x3_2b.conv");
  EXPECT_EQ(inception.at("batch_normalization_94").module, "Mixed_7c.branch_pool.bn");
  EXPECT_EQ(inception.at("batch_normalization_94").kind, keras::LayerKind::kBatchNorm);
  EXPECT_EQ(inception.count("conv2d_95"), 0u);
  EXPECT_EQ(inception.at("predictions").module, "fc");
  EXPECT_TRUE(inception.at("dense_2").custom_head);
  EXPECT_EQ(inception.at("dense_2").module, "fc.2");
}

// Keras' InceptionV3 BatchNormalization has scale=False: no gamma in the file, and graft's BN weight is 1.
TEST(KerasNameMap, BatchNormWithoutGammaOrBetaIsTheIdentity) {
  const keras::NameMap& map = *keras::find_name_map("inception_v3");
  auto make = [](bool with_beta) {
    KerasModel keras;
    keras.source = "test.h5";
    KerasLayerWeights bn{"batch_normalization_1", {}};
    if (with_beta) bn.tensors.emplace_back("batch_normalization_1/beta:0", torch::full({32}, 0.5));
    bn.tensors.emplace_back("batch_normalization_1/moving_mean:0", torch::full({32}, 0.25));
    bn.tensors.emplace_back("batch_normalization_1/moving_variance:0", torch::full({32}, 2.0));
    keras.weights.push_back(bn);
    return keras;
  };
  auto find = [](const keras::Converted& converted, const std::string& name) {
    for (const auto& [n, t] : converted.tensors)
      if (n == name) return t;
    return torch::Tensor();
  };
  // Weights only (no topology): the saved weights are the declaration.
  const keras::Converted weights_only = keras::convert(make(true), map);
  const torch::Tensor gamma = find(weights_only, "Conv2d_1a_3x3.bn.weight");
  ASSERT_TRUE(gamma.defined()) << "gamma not filled in";
  EXPECT_TRUE(torch::equal(gamma, torch::ones({32})));
  EXPECT_TRUE(torch::equal(find(weights_only, "Conv2d_1a_3x3.bn.bias"), torch::full({32}, 0.5)));
  // center=False as well: beta is 0.
  const keras::Converted no_beta = keras::convert(make(false), map);
  EXPECT_TRUE(torch::equal(find(no_beta, "Conv2d_1a_3x3.bn.bias"), torch::zeros({32})));

  // A topology that says scale=False agrees; one that keeps scale (Keras' default) makes the file
  // incomplete: nothing is filled in, and strict loading reports the missing weight.
  KerasModel scale_false = make(true);
  scale_false.layers.push_back({"batch_normalization_1",
                                "BatchNormalization",
                                json{{"name", "batch_normalization_1"}, {"scale", false}, {"epsilon", 0.001}},
                                {"conv2d_1"}});
  EXPECT_TRUE(
      torch::equal(find(keras::convert(scale_false, map), "Conv2d_1a_3x3.bn.weight"), torch::ones({32})));
  KerasModel scale_default = scale_false;
  scale_default.layers.front().config.erase("scale");
  const keras::Converted incomplete = keras::convert(scale_default, map);
  EXPECT_FALSE(find(incomplete, "Conv2d_1a_3x3.bn.weight").defined());
  EXPECT_TRUE(find(incomplete, "Conv2d_1a_3x3.bn.running_var").defined());
}

// The Keras build keeps every BatchNorm weight at 1, untrainable, whatever a freeze spec says.
TEST(KerasNameMap, InceptionV3KerasBatchNormWeightIsFixed) {
  Backbone model = inception_v3_keras(5);
  const std::string gamma = "Mixed_5b.branch1x1.bn.weight";
  EXPECT_TRUE(model->is_fixed_parameter(gamma));
  EXPECT_FALSE(model->is_fixed_parameter("Mixed_5b.branch1x1.bn.bias"));
  const FreezeReport report = apply_freeze(*model, "none");
  EXPECT_EQ(report.fixed_parameters, 94);
  EXPECT_EQ(report.frozen_parameters, 0);
  auto params = model->named_parameters();
  EXPECT_FALSE(params[gamma].requires_grad());
  EXPECT_TRUE(params["Mixed_5b.branch1x1.bn.bias"].requires_grad());
  EXPECT_TRUE(torch::equal(params[gamma], torch::ones({64})));
  // The summary counts a block whose only untrainable weights are fixed ones as trainable, and says why
  // the non-trainable count is not 0.
  const ModelSummary summary = summarize(*model, {96, 96});
  for (const SummaryRow& row : summary.rows) {
    if (row.name == "Mixed_5b") {
      EXPECT_EQ(row.fixed_params, 64 + 48 + 64 + 64 + 96 + 96 + 32);
    }
    EXPECT_EQ(row.trainable_params, row.params - row.fixed_params) << row.name;
  }
  EXPECT_EQ(summary.total_params - summary.trainable_params, 17216);  // the 94 BatchNorms' widths
  ASSERT_FALSE(summary.notes.empty());
  EXPECT_NE(summary.notes.front().find("17,216 of the non-trainable params are BatchNorm weights held fixed"),
            std::string::npos)
      << summary.notes.front();
  EXPECT_EQ(summary.to_string().find("partial"), std::string::npos);
  // The torchvision build trains its gammas.
  Backbone torchvision = inception_v3(5);
  EXPECT_FALSE(torchvision->is_fixed_parameter(gamma));
  EXPECT_TRUE(torchvision->named_parameters()[gamma].requires_grad());
}

TEST(KerasNameMap, WeightNamesAndLayouts) {
  using keras::LayerKind;
  EXPECT_EQ(keras::short_weight_name("conv1_bn/gamma:0"), "gamma");
  EXPECT_EQ(keras::short_weight_name("model/conv2d_1/kernel"), "kernel");
  EXPECT_EQ(keras::short_weight_name("bias"), "bias");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kBatchNorm, "gamma"), "weight");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kBatchNorm, "beta"), "bias");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kBatchNorm, "moving_mean"), "running_mean");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kBatchNorm, "moving_variance"), "running_var");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kDepthwiseConv2D, "depthwise_kernel"), "weight");
  EXPECT_EQ(keras::graft_weight_name(LayerKind::kConv2D, "gamma"), "");

  // Conv2D: k[h][w][i][o] lands at weight[o][i][h][w].
  const auto hwio = torch::arange(2 * 3 * 4 * 5, torch::kFloat32).view({2, 3, 4, 5});
  const auto oihw = keras::to_graft_layout(LayerKind::kConv2D, "kernel", hwio, "test");
  ASSERT_EQ(oihw.sizes(), torch::IntArrayRef({5, 4, 2, 3}));
  EXPECT_EQ(oihw[4][3][1][2].item<float>(), hwio[1][2][3][4].item<float>());
  EXPECT_EQ(oihw[0][1][1][0].item<float>(), hwio[1][0][1][0].item<float>());
  EXPECT_EQ(keras::to_keras_shape(LayerKind::kConv2D, "kernel", {5, 4, 2, 3}),
            (std::vector<int64_t>{2, 3, 4, 5}));
  // DepthwiseConv2D, multiplier 2: k[h][w][c][m] is output channel c * 2 + m.
  const auto hwcm = torch::arange(3 * 3 * 4 * 2, torch::kFloat32).view({3, 3, 4, 2});
  const auto dw = keras::to_graft_layout(LayerKind::kDepthwiseConv2D, "depthwise_kernel", hwcm, "test");
  ASSERT_EQ(dw.sizes(), torch::IntArrayRef({8, 1, 3, 3}));
  EXPECT_EQ(dw[3 * 2 + 1][0][2][0].item<float>(), hwcm[2][0][3][1].item<float>());
  // ... which is what a grouped conv computes: compare with a per-channel loop.
  const auto x = torch::randn({1, 4, 5, 5});
  const auto grouped = torch::conv2d(x, dw, {}, 1, 1, 1, /*groups=*/4);
  for (int64_t c = 0; c < 4; ++c) {
    for (int64_t m = 0; m < 2; ++m) {
      const auto kernel = hwcm.select(2, c).select(2, m).view({1, 1, 3, 3});
      const auto one = torch::conv2d(x.slice(1, c, c + 1), kernel, {}, 1, 1);
      // The same 9-term sums through two convolution kernels: sqrt(9) ulp of values ~1, well under 1e-5.
      EXPECT_TRUE(torch::allclose(grouped.slice(1, c * 2 + m, c * 2 + m + 1), one, 1e-5, 1e-5));
    }
  }
  // Dense: (in, out) -> (out, in).
  const auto dense =
      keras::to_graft_layout(LayerKind::kDense, "kernel", torch::arange(6.0).view({2, 3}), "test");
  EXPECT_TRUE(torch::equal(dense, torch::arange(6.0).view({2, 3}).t()));
  // Wrong ranks are refused with the layer named.
  const std::string message = error_of([] {
    keras::to_graft_layout(LayerKind::kConv2D, "kernel", torch::zeros({3, 3}), "file: layer 'x'");
  });
  EXPECT_NE(message.find("file: layer 'x': a Conv2D kernel is (H, W, in, out), got shape [3, 3]"),
            std::string::npos)
      << message;
}

TEST(KerasLoad, WrongWidthNamesLayerAndBothShapes) {
  const std::string path = weights_dir("mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5");
  REQUIRE_FILE(path);
  Backbone model = create_model("mobilenet_v1_050");
  const auto before = state_dict(*model).front().second.clone();
  const std::string message = error_of([&] { load_keras_h5_weights(*model, path); });
  EXPECT_NE(message.find("the weights do not fit mobilenet_v1_050 (nothing was loaded)"), std::string::npos)
      << message;
  EXPECT_NE(message.find("layer 'conv1' (Conv2D): weight 'conv1/kernel:0' has shape [3, 3, 3, 8], the model "
                         "expects [3, 3, 3, 16] (graft 'conv1.weight' [16, 3, 3, 3])"),
            std::string::npos)
      << message;
  EXPECT_NE(
      message.find("layer 'conv_dw_2' (DepthwiseConv2D): weight 'conv_dw_2/depthwise_kernel:0' has shape "
                   "[3, 3, 16, 1], the model expects [3, 3, 32, 1]"),
      std::string::npos)
      << message;
  EXPECT_TRUE(torch::equal(state_dict(*model).front().second, before)) << "strict failure must not copy";

  // Not strict: what fits loads, the rest is reported.
  WeightsOptions relaxed;
  relaxed.strict = false;
  const LoadReport report = load_keras_h5_weights(*model, path, relaxed);
  EXPECT_FALSE(report.ok());
  EXPECT_FALSE(report.mismatched.empty());
}

TEST(KerasLoad, OtherArchitectureFileIsRefused) {
  const std::string path = weights_dir("tiny_darknet_tfjs/model.json");
  REQUIRE_FILE(path);
  Backbone model = create_model("mobilenet_v1_025");
  const std::string message = error_of([&] { load_tfjs_weights(*model, path); });
  EXPECT_NE(message.find(
                "none of the file's 31 layers with weights is in the mobilenet_v1 name map "
                "(batch_normalization_1, batch_normalization_10, ...): the file holds another architecture"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("more model tensors missing from the file"), std::string::npos) << message;
  EXPECT_NE(message.find("'conv1.weight' [8, 3, 3, 3] of the model is not in the file"), std::string::npos)
      << message;
  Backbone resnet = create_model("resnet18");
  const std::string no_map = error_of([&] { load_tfjs_weights(*resnet, path); });
  EXPECT_NE(no_map.find("no Keras / TF.js name map for architecture 'resnet18'"), std::string::npos)
      << no_map;
}

TEST(KerasLoad, TopologyKindMustMatchTheMap) {
  // A file whose "conv1" is a Dense layer is not a MobileNet, whatever its tensor shapes.
  TempDir dir;
  const json model = json::parse(R"({
    "modelTopology": {"class_name": "Sequential",
                      "config": {"layers": [{"class_name": "Dense", "config": {"name": "conv1", "units": 8}}]}},
    "weightsManifest": [{"paths": ["group1-shard1of1"],
                         "weights": [{"name": "conv1/kernel", "shape": [3, 8], "dtype": "float32"}]}]})");
  write_text(dir.file("model.json"), model.dump());
  const std::vector<float> zeros(24, 0.0f);
  write_bytes(dir.file("group1-shard1of1"), zeros.data(), zeros.size() * sizeof(float));
  Backbone net = create_model("mobilenet_v1_025");
  const std::string message = error_of([&] { load_tfjs_weights(*net, dir.file("model.json")); });
  EXPECT_NE(
      message.find("layer 'conv1' is a Dense in the file, but the mobilenet_v1 name map makes it a Conv2D"),
      std::string::npos)
      << message;
}

TEST(KerasLoad, BatchNormEpsilonComesFromTheConfig) {
  const std::string path = weights_dir("tiny_darknet_tfjs/model.json");
  REQUIRE_FILE(path);
  Backbone model = create_model("darknet_tiny.ml5");
  load_tfjs_weights(*model, path);
  for (const auto& module : model->modules(/*include_self=*/false)) {
    if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
      EXPECT_DOUBLE_EQ(bn->options.eps(), 1e-3);
      EXPECT_NEAR(bn->options.momentum().value(), 0.01, 1e-12);
    }
  }
}

TEST(KerasLoad, ClassifierCountFollowsTheFileOrIsSkipped) {
  const std::string path = weights_dir("tiny_darknet_tfjs/model.json");
  REQUIRE_FILE(path);
  // A 10-class build loads the 1000-class file by resetting its classifier to the file's count.
  Backbone model = create_model("darknet_tiny.ml5", 10);
  EXPECT_TRUE(load_tfjs_weights(*model, path).ok());
  EXPECT_EQ(model->num_classes(), 1000);
  // Skipping the classifier keeps the 10-class head as initialised.
  Backbone fresh = create_model("darknet_tiny.ml5", 10);
  WeightsOptions skip;
  skip.skip_classifier = true;
  const LoadReport report = load_tfjs_weights(*fresh, path, skip);
  EXPECT_TRUE(report.ok()) << report.to_string();
  EXPECT_EQ(fresh->num_classes(), 10);
  EXPECT_EQ(report.skipped, (std::vector<std::string>{"conv2d_16.weight", "conv2d_16.bias"}));
}

// ---- the transfer interface ---------------------------------------------------------------------

TEST(KerasModels, TransferInterface) {
  struct Case {
    const char* name;
    const char* classifier;
    int64_t features;
    int64_t feature_hw;  // at 224
  };
  for (const Case& c :
       {Case{"darknet_tiny", "conv2d_16", 128, 14}, Case{"mobilenet_v1_025", "conv_preds", 256, 7},
        Case{"mobilenet_v1_075", "conv_preds", 768, 7}}) {
    Backbone model = create_model(c.name);
    model->eval();
    torch::NoGradGuard no_grad;
    const auto x = torch::randn({2, 3, 224, 224});
    const auto features = model->forward_features(x);
    EXPECT_EQ(features.sizes(), torch::IntArrayRef({2, c.features, c.feature_hw, c.feature_hw})) << c.name;
    EXPECT_EQ(model->num_features(), c.features);
    EXPECT_EQ(model->forward_head(features, true).sizes(), torch::IntArrayRef({2, c.features}));
    EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({2, 1000}));
    EXPECT_EQ(model->classifier_name(), c.classifier);
    EXPECT_EQ(head_module_name(*model), c.classifier);
    model->reset_classifier(7);
    EXPECT_EQ(model->num_classes(), 7);
    EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({2, 7}));
    model->reset_classifier(0);
    EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({2, c.features}));
    model->set_head(HeadSpec::parse("avg,dropout:0.2,dense:3"));
    EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({2, 3}));
  }
  // Odd input sizes run too (TF "same" padding on conv1, ceil pooling).
  Backbone darknet = create_model("darknet_tiny");
  darknet->eval();
  torch::NoGradGuard no_grad;
  EXPECT_EQ(darknet->forward_features(torch::randn({1, 3, 101, 99})).sizes(),
            torch::IntArrayRef({1, 128, 7, 7}));
  EXPECT_THROW(MobileNetV1Config::mobilenet_v1(0.3), Error);
}

// ---- graft convert ------------------------------------------------------------------------------

// The CLI converts a .h5 to safetensors with graft names; that file then loads by name, no map needed.
TEST(KerasConvertCli, H5ToSafetensorsLoadsByName) {
  const std::string path = weights_dir("mobilenet_v1_025_keras/mobilenet_v1_0.25_224.h5");
  REQUIRE_FILE(path);
  if (!fs::exists(GRAFT_BINARY)) GTEST_SKIP() << "the graft binary is not built: " << GRAFT_BINARY;
  TempDir dir;
  const std::string out = dir.file("mobilenet_v1_025.safetensors");
  const std::string command = std::string(GRAFT_BINARY) + " convert '" + path + "' --to '" + out +
                              "' --model mobilenet_v1_025.keras > '" + dir.file("log.txt") + "' 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_lines(dir.file("log.txt")).front();
  EXPECT_NE(read_lines(dir.file("log.txt")).front().find("(keras-h5, Keras 2.8.0)"), std::string::npos);

  Backbone via_file = create_model("mobilenet_v1_025.keras");
  Backbone via_h5 = create_model("mobilenet_v1_025.keras");
  EXPECT_TRUE(load_weights(*via_file, out).ok());
  load_keras_h5_weights(*via_h5, path);
  via_file->eval();
  via_h5->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({1, 3, 224, 224});
  EXPECT_TRUE(torch::equal(via_file->forward(x), via_h5->forward(x)));

  // Another architecture's file is refused, naming a layer.
  const std::string bad = std::string(GRAFT_BINARY) + " convert '" + path + "' --to '" + out +
                          "' --model mobilenet_v1_050 > '" + dir.file("bad.txt") + "' 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  std::string log;
  for (const auto& line : read_lines(dir.file("bad.txt"))) log += line + "\n";
  EXPECT_NE(log.find("layer 'conv1' (Conv2D)"), std::string::npos) << log;
}

// A .h5 that makes libhdf5 segfault (tests/fuzz/known-libhdf5/) ends graft convert with exit 1 and a
// message naming the file; the child process took the crash, and the output from before is untouched.
TEST(KerasConvertCli, Libhdf5CrashIsAnErrorNotACrash) {
  if (!fs::exists(GRAFT_BINARY)) GTEST_SKIP() << "the graft binary is not built: " << GRAFT_BINARY;
  const std::string hostile = std::string(GRAFT_SOURCE_DIR) + "/tests/fuzz/known-libhdf5/h5hg-read-segv";
  TempDir dir;
  const std::string out = dir.file("out.safetensors");
  { std::ofstream(out) << "kept"; }
  const std::string command = std::string(GRAFT_BINARY) + " convert '" + hostile + "' --to '" + out +
                              "' --model mobilenet_v2.keras > '" + dir.file("log.txt") + "' 2>&1";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string line = read_lines(dir.file("log.txt")).front();
  EXPECT_NE(line.find(hostile + ": libhdf5 crashed with signal 11"), std::string::npos) << line;
  EXPECT_EQ(read_lines(out).front(), "kept");
}

}  // namespace
}  // namespace graft
