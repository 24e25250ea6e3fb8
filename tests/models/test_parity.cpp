// Golden parity of the model zoo against torchvision 0.14: images (ResNet-18..152, VGG-16/19 with and without
// BN, MobileNetV2, EfficientNet-B0, InceptionV3) and video (R3D-18, MC3-18, R(2+1)D-18, on (N, 3, T, H, W)
// clips). tests/models/make_golden.py writes random-initialised torchvision weights, an input and its
// logits/features; each graft model loads the weights strictly by their torchvision names and must reproduce
// both outputs within float32 tolerance; where the references include train-mode logits (stochastic depth;
// BatchNorm on batch statistics), the same seed must draw the same masks. A second test checks the transfer
// interface (steps, reset_classifier) on every architecture.
//
// The golden folder is the compiled-in GRAFT_GOLDEN_DIR unless the environment variable GRAFT_GOLDEN_DIR
// names another one (e.g. references made with --size 224).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>

#include "graft/model.h"
#include "graft/weights.h"
#include "models/efficientnet.h"
#include "models/inception_v3.h"
#include "models/mobilenet_v2.h"
#include "models/resnet.h"
#include "models/tolerance.h"
#include "models/vgg.h"
#include "models/video_resnet.h"

namespace graft {
namespace {

// Tolerances: derived per model and output from its depth, fan-in and the output's scale (tolerance.h).

struct ArchCase {
  const char* arch;
  Backbone (*build)(int64_t num_classes);
  const char* last_layer;      // the Linear reset_classifier replaces
  int64_t pre_logits;          // width of forward_head(.., pre_logits=true)
  int64_t input_size = 64;     // of the TransferInterface check (InceptionV3 needs >= 75 px)
  int64_t frames = 0;          // video archs: (N, 3, frames, H, W) clips; 0: images
  int64_t num_classes = 1000;  // of the golden weights (Kinetics-400 for the video archs)
};

void PrintTo(const ArchCase& c, std::ostream* os) {
  *os << c.arch;
}

const ArchCase kArchs[] = {
    {"resnet18", resnet18, "fc", 512},
    {"resnet34", resnet34, "fc", 512},
    {"resnet50", resnet50, "fc", 2048},
    {"resnet101", resnet101, "fc", 2048},
    {"resnet152", resnet152, "fc", 2048},
    {"vgg16", vgg16, "classifier.6", 4096},
    {"vgg16_bn", vgg16_bn, "classifier.6", 4096},
    {"vgg19", vgg19, "classifier.6", 4096},
    {"vgg19_bn", vgg19_bn, "classifier.6", 4096},
    {"mobilenet_v2", mobilenet_v2, "classifier.1", 1280},
    {"resnet50_keras", resnet50_keras, "fc", 2048},  // Keras' v1 build (make_golden.py KerasResNet50)
    {"efficientnet_b0", efficientnet_b0, "classifier.1", 1280},
    {"inception_v3", inception_v3, "fc", 2048, 96},
    {"r3d_18", r3d_18, "fc", 512, 32, 8, 400},
    {"mc3_18", mc3_18, "fc", 512, 32, 8, 400},
    {"r2plus1d_18", r2plus1d_18, "fc", 512, 32, 8, 400},
};

// Mean over every dim after the channels: (N, C, H, W) or (N, C, T, H, W) -> (N, C).
torch::Tensor global_mean(const torch::Tensor& map) {
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < map.dim(); ++d) dims.push_back(d);
  return map.mean(dims);
}

// "64px", or "8x32px" (frames x px) for a clip.
std::string input_label(const torch::Tensor& x) {
  const std::string px = std::to_string(x.size(-1)) + "px";
  return x.dim() == 5 ? std::to_string(x.size(2)) + "x" + px : px;
}

std::string golden_dir() {
  const char* env = std::getenv("GRAFT_GOLDEN_DIR");
  return env && *env ? env : GRAFT_GOLDEN_DIR;
}

// max |a - b| and where it occurs, for the failure message.
struct Diff {
  double max = 0;
  int64_t index = 0;  // flat index of the largest difference
  double got = 0, expected = 0;
};

Diff compare(const torch::Tensor& got, const torch::Tensor& expected) {
  const auto delta = (got.to(torch::kDouble) - expected.to(torch::kDouble)).abs().flatten();
  Diff diff;
  diff.index = delta.argmax().item<int64_t>();
  diff.max = delta[diff.index].item<double>();
  diff.got = got.flatten()[diff.index].item<double>();
  diff.expected = expected.flatten()[diff.index].item<double>();
  return diff;
}

std::string describe(const std::string& arch, const std::string& tensor, const torch::Tensor& got,
                     const Diff& diff, double tolerance) {
  std::ostringstream out;
  out << arch << ": " << tensor << " differs from torchvision by " << diff.max << " (tolerance " << tolerance
      << ") at flat index " << diff.index << " of shape " << got.sizes() << ": got " << diff.got
      << ", expected " << diff.expected;
  return out.str();
}

class ModelZoo : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ModelZoo, MatchesTorchvision) {
  const ArchCase& c = GetParam();
  const std::string dir = golden_dir();
  const std::string weights_path = dir + "/" + c.arch + ".weights.safetensors";
  const std::string io_path = dir + "/" + c.arch + ".io.safetensors";
  for (const auto& path : {weights_path, io_path}) {
    ASSERT_TRUE(std::filesystem::exists(path))
        << c.arch << ": golden file " << path << " is missing; make it with `/usr/bin/python3 "
        << GRAFT_SOURCE_DIR << "/tests/models/make_golden.py --out " << dir << "` (ctest does this itself)";
  }

  Backbone model = c.build(c.num_classes);
  LoadReport report;
  try {
    report = load_safetensors(*model, weights_path);  // strict: every name and shape must match
  } catch (const std::exception& e) {
    FAIL() << c.arch << ": strict load of " << weights_path << " failed: " << e.what();
  }
  ASSERT_TRUE(report.ok()) << c.arch << ": " << report.to_string();

  SafeTensorsReader io(io_path);
  const auto meta = io.metadata().find("num_params");
  ASSERT_NE(meta, io.metadata().end()) << io_path << ": no num_params in __metadata__";
  EXPECT_EQ(count_parameters(*model), std::stoll(meta->second))
      << c.arch << ": parameter count differs from torchvision's";

  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = io.load("pixel_values");                         // (2, 3, [T,] N, N)
  const torch::Tensor logits = model->forward(x);                          // (2, num_classes)
  const torch::Tensor features = global_mean(model->forward_features(x));  // (2, num_features)
  const torch::Tensor expected_logits = io.load("logits");
  const torch::Tensor expected_features = io.load("features");
  ASSERT_EQ(logits.sizes(), expected_logits.sizes()) << c.arch << ": logits shape";
  ASSERT_EQ(features.sizes(), expected_features.sizes()) << c.arch << ": features shape";
  ASSERT_EQ(features.size(1), model->num_features()) << c.arch << ": num_features()";

  const Diff logits_diff = compare(logits, expected_logits);
  const Diff features_diff = compare(features, expected_features);
  const testing::ForwardDepth depth = testing::forward_depth(*model);
  const double logits_tolerance = testing::forward_tolerance(depth, expected_logits);
  const double features_tolerance = testing::forward_tolerance(depth, expected_features);
  std::cout << "[parity] " << c.arch << " (" << input_label(x) << ") logits max|diff|=" << logits_diff.max
            << " (tolerance " << logits_tolerance << ") features max|diff|=" << features_diff.max
            << " (tolerance " << features_tolerance << ")" << std::endl;
  EXPECT_LE(logits_diff.max, logits_tolerance)
      << describe(c.arch, "logits", logits, logits_diff, logits_tolerance);
  EXPECT_LE(features_diff.max, features_tolerance)
      << describe(c.arch, "features", features, features_diff, features_tolerance);

  // Train mode draws stochastic depth and dropout masks from torch's generator in torchvision's order, so
  // the same seed gives the same logits (BatchNorm on batch statistics; the video ResNets have no masks,
  // only that). Last: it moves the running stats.
  if (!io.contains("train_logits")) return;
  const auto seed = io.metadata().find("train_seed");
  ASSERT_NE(seed, io.metadata().end()) << io_path << ": train_logits without train_seed in __metadata__";
  model->train();
  torch::manual_seed(std::stoull(seed->second));
  const torch::Tensor train_logits = model->forward(x);
  const torch::Tensor expected_train = io.load("train_logits");
  const Diff train_diff = compare(train_logits, expected_train);
  const double train_tolerance = testing::forward_tolerance(depth, expected_train);
  std::cout << "[parity] " << c.arch << " (" << input_label(x)
            << ") train-mode logits max|diff|=" << train_diff.max << " (tolerance " << train_tolerance << ")"
            << std::endl;
  EXPECT_LE(train_diff.max, train_tolerance)
      << describe(c.arch, "train-mode logits", train_logits, train_diff, train_tolerance);
}

// Steps name real modules, the head can be cut (pre-logits) and replaced, and replacing it keeps
// the reference names and every other weight.
TEST_P(ModelZoo, TransferInterface) {
  const ArchCase& c = GetParam();
  Backbone model = c.build(10);
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = c.frames > 0 ? torch::randn({1, 3, c.frames, c.input_size, c.input_size})
                                       : torch::randn({1, 3, c.input_size, c.input_size});

  std::set<std::string> module_names;
  for (const auto& item : model->named_modules()) module_names.insert(item.key());
  for (const auto& step : model->all_steps()) {
    const bool label = step.name == "flatten" || step.name == "avgpool" || step.name == "bgr";
    EXPECT_TRUE(label || module_names.count(step.name))
        << c.arch << ": step '" << step.name << "' (" << step.type << ") names no module";
  }

  const torch::Tensor map = model->forward_features(x);
  EXPECT_EQ(map.size(1), model->num_features()) << c.arch;
  EXPECT_EQ(model->forward_head(map, /*pre_logits=*/true).sizes(), torch::IntArrayRef({1, c.pre_logits}))
      << c.arch;
  EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({1, 10})) << c.arch;
  EXPECT_EQ(model->num_classes(), 10) << c.arch;
  EXPECT_EQ(model->classifier_name(),
            std::string(c.last_layer).substr(0, std::string(c.last_layer).find('.')));

  const auto params_before = model->named_parameters();
  model->reset_classifier(5);
  const auto params_after = model->named_parameters();
  EXPECT_EQ(params_after.size(), params_before.size()) << c.arch;
  const std::string weight = std::string(c.last_layer) + ".weight";
  ASSERT_TRUE(params_after.contains(weight)) << c.arch << ": " << weight << " gone after reset_classifier";
  EXPECT_EQ(params_after[weight].sizes(), torch::IntArrayRef({5, c.pre_logits})) << c.arch;
  for (const auto& item : params_before) {
    if (item.key().rfind(c.last_layer, 0) == 0) continue;
    ASSERT_TRUE(params_after.contains(item.key())) << c.arch << ": " << item.key() << " lost";
    EXPECT_TRUE(params_after[item.key()].is_same(item.value()))
        << c.arch << ": " << item.key() << " replaced";
  }
  EXPECT_EQ(model->forward(x).sizes(), torch::IntArrayRef({1, 5})) << c.arch;
  EXPECT_EQ(model->num_classes(), 5) << c.arch;

  model->reset_classifier(0);  // no classifier: forward returns the pre-logits
  EXPECT_FALSE(model->named_parameters().contains(weight)) << c.arch;
  const torch::Tensor pooled = model->forward(x);
  EXPECT_EQ(pooled.sizes(), torch::IntArrayRef({1, c.pre_logits})) << c.arch;
  EXPECT_EQ(model->num_classes(), c.pre_logits) << c.arch;
  EXPECT_TRUE(torch::equal(pooled, model->forward_head(map, /*pre_logits=*/true))) << c.arch;

  EXPECT_THROW(model->reset_classifier(-1), std::exception) << c.arch;
}

INSTANTIATE_TEST_SUITE_P(Torchvision, ModelZoo, ::testing::ValuesIn(kArchs),
                         [](const ::testing::TestParamInfo<ArchCase>& info) {
                           return std::string(info.param.arch);
                         });

}  // namespace
}  // namespace graft
