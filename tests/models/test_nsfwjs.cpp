// The registry-shipped default backbones: npm nsfwjs@4.4.0's TF.js layers models, as
// scripts/fetch-weights puts them in the weights cache (the package's JavaScript bundles under
// npm/nsfwjs-4.4.0/, and their conversions nsfwjs-4.4.0/<model>.safetensors), against the outputs TF.js
// 4.22 computed from them (shared/weights/nsfwjs_reference/<model>/reference.safetensors).
//
// Both sources, the bundle read directly (JavaScript literal + base64 shards + Keras name map) and the
// converted safetensors (ARCH.TAG from the cache), must reproduce from the stored `input`:
//   features     pooled backbone (the transfer-learning cut)
//   penultimate  input of the last Dense
//   output       softmax
// within tolerances derived per model and output (models/tolerance.h: depth, fan-in, the output's scale;
// the softmax gets half the tolerance of its logits, whose scale is graft's own logits')
// and the top-1 class of every image. Then graft's own preprocessing: from jpeg-js' lossless decode
// (.jsdecoded.png) it must give the stored `input` to float rounding (the same align-corners bilinear
// resize as TF.js); from the JPEGs (libjpeg-turbo, which differs from jpeg-js by a few levels) the
// difference is reported and the top-1 classes must still match.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <random>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/image_task.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/tfjs_graph.h"
#include "graft/transfer.h"
#include "graft/weights.h"
#include "models/tolerance.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

const char* const kClasses[] = {"Drawing", "Hentai", "Neutral", "Porn", "Sexy"};
const char* const kImages[] = {"cat_test.1", "cat_test.2", "dog_test.4", "dog_test.5"};  // reference order

std::string reference_file(const std::string& model) {
  return std::string(GRAFT_SHARED_DIR) + "/weights/nsfwjs_reference/" + model + "/reference.safetensors";
}
std::string bundle_dir(const std::string& model) {
  return (fs::path(cache_dir()) / "npm" / "nsfwjs-4.4.0" / "dist" / "models" / model).string();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

struct Outputs {
  torch::Tensor features, penultimate, logits, output;
};

Outputs run(BackboneImpl& model, const torch::Tensor& nchw) {
  torch::NoGradGuard no_grad;
  model.eval();
  const torch::Tensor map = model.forward_features(nchw);
  const torch::Tensor logits = model.forward_head(map);
  return {model.custom_head()->pool(map), model.forward_head(map, /*pre_logits=*/true), logits,
          torch::softmax(logits, 1)};
}

class NsfwjsGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(NsfwjsGolden, BundleAndConvertedWeightsMatchTfjs) {
  const std::string name = GetParam();
  ASSERT_TRUE(fs::is_directory(bundle_dir(name)))
      << bundle_dir(name) << " is missing: run scripts/fetch-weights nsfwjs (scripts/test does)";
  const SafeTensorsReader reference(reference_file(name));
  const torch::Tensor input = reference.load("input").permute({0, 3, 1, 2}).contiguous();  // NHWC -> NCHW
  const torch::Tensor ref_output = reference.load("output");

  for (const bool from_bundle : {true, false}) {
    const std::string source = from_bundle ? bundle_dir(name) : "the cached " + name + ".nsfwjs";
    Backbone model = create_model(name + ".nsfwjs");
    const LoadReport report = from_bundle ? load_weights(*model, bundle_dir(name)) : load_pretrained(*model);
    ASSERT_TRUE(report.ok()) << source << ": " << report.to_string();
    ASSERT_TRUE(report.skipped.empty()) << source;
    const Outputs got = run(*model, input);
    const double d_features = max_abs_diff(got.features, reference.load("features"));
    const double d_penultimate = max_abs_diff(got.penultimate, reference.load("penultimate"));
    const double d_output = max_abs_diff(got.output, ref_output);
    std::cout << "[ golden   ] " << name << " from " << source << ": max |diff| features " << d_features
              << ", penultimate " << d_penultimate << ", output " << d_output << "\n";
    const testing::ForwardDepth depth = testing::forward_depth(*model);
    EXPECT_LE(d_features, testing::forward_tolerance(depth, reference.load("features")))
        << source << ": pooled features differ from TF.js";
    EXPECT_LE(d_penultimate, testing::forward_tolerance(depth, reference.load("penultimate")))
        << source << ": dense_2 output differs from TF.js";
    EXPECT_LE(d_output, testing::softmax_tolerance(testing::forward_tolerance(depth, got.logits)))
        << source << ": probabilities differ from TF.js";
    for (int64_t i = 0; i < input.size(0); ++i) {
      const int64_t top1 = got.output[i].argmax().item<int64_t>();
      const int64_t expected = ref_output[i].argmax().item<int64_t>();
      EXPECT_EQ(top1, expected) << source << ", " << kImages[i] << ": graft says " << kClasses[top1]
                                << ", TF.js says " << kClasses[expected];
    }
  }
}

TEST_P(NsfwjsGolden, PreprocessingMatchesTfjs) {
  const std::string name = GetParam();
  const SafeTensorsReader reference(reference_file(name));
  const torch::Tensor ref_input = reference.load("input");      // (4, S, S, 3) float
  const torch::Tensor ref_decoded = reference.load("decoded");  // (4, 100, 100, 3) uint8, jpeg-js
  Backbone model = create_model(name + ".nsfwjs");
  const Preprocessing pre = Preprocessing::from_cfg(model->default_cfg());
  EXPECT_EQ(pre.interpolation, "bilinear-align-corners");
  // The pipeline's own eval transform for this tag (what train / eval / predict use).
  const TransformConfig config = transform_for(pre, /*train=*/false);
  EXPECT_TRUE(config.align_corners);
  std::mt19937_64 rng(0);

  const std::string images = std::string(GRAFT_SHARED_DIR) + "/weights/reference_images/";
  std::vector<torch::Tensor> from_jpeg;
  for (int64_t i = 0; i < 4; ++i) {
    // jpeg-js' pixels, losslessly: the resize alone must reproduce TF.js' input.
    const Image js = decode_image(images + kImages[i] + ".jsdecoded.png");
    ASSERT_TRUE(torch::equal(image_to_tensor(js), ref_decoded[i])) << kImages[i] << ".jsdecoded.png";
    const torch::Tensor resized = transform_image(js, config, rng).permute({1, 2, 0});  // (S, S, 3)
    const double d_resize = max_abs_diff(resized, ref_input[i]);
    // Pixels in [0, 1] from four float32 taps: within a few ulp of 1.0 (1.2e-7 each) whatever the order;
    // 1e-6 leaves 8 (a wrong sampling grid moves pixels by 1e-3 and more).
    EXPECT_LE(d_resize, 1e-6) << kImages[i] << ": align-corners resize differs from TF.js resizeBilinear";

    // libjpeg-turbo's pixels: another JPEG decoder, a few levels off.
    const Image turbo = decode_image(images + kImages[i] + ".jpg", decode_min_side(config));
    const torch::Tensor levels =
        (image_to_tensor(turbo).to(torch::kInt) - ref_decoded[i].to(torch::kInt)).abs();
    from_jpeg.push_back(transform_image(turbo, config, rng));
    const double d_input = max_abs_diff(from_jpeg.back().permute({1, 2, 0}), ref_input[i]);
    std::cout << "[ preproc  ] " << name << " " << kImages[i] << ": resize of jpeg-js pixels " << d_resize
              << "; libjpeg-turbo vs jpeg-js decode max " << levels.max().item<int>() << " levels, mean "
              << levels.to(torch::kDouble).mean().item<double>() << ", input max |diff| " << d_input << "\n";
    EXPECT_LE(levels.max().item<int>(), 48) << kImages[i] << ": decoders differ far more than expected";
  }
  // The JPEG path classifies the images as TF.js does.
  const auto file = pretrained_file(model->default_cfg());
  ASSERT_TRUE(fs::is_regular_file(file)) << file << " is missing: run scripts/fetch-weights nsfwjs";
  load_pretrained(*model);
  const Outputs got = run(*model, torch::stack(from_jpeg));
  const torch::Tensor ref_output = reference.load("output");
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(got.output[i].argmax().item<int64_t>(), ref_output[i].argmax().item<int64_t>()) << kImages[i];
  }
}

// nsfwjs' mobilenet_v2_mid is a TF.js graph model (TF-Hub MobileNetV2 1.4 + Dense, BatchNorm folded into
// _FusedConv2D): graft's graph interpreter runs it from the same bundle.
TEST(NsfwjsGraph, MobileNetV2MidMatchesTfjs) {
  ASSERT_TRUE(fs::is_directory(bundle_dir("mobilenet_v2_mid")))
      << bundle_dir("mobilenet_v2_mid")
      << " is missing: run scripts/fetch-weights nsfwjs (scripts/test does)";
  const TfjsGraphModel graph(bundle_dir("mobilenet_v2_mid"));
  EXPECT_EQ(graph.inputs(), std::vector<std::string>{"input"});
  EXPECT_EQ(graph.outputs(), std::vector<std::string>{"Identity"});
  const std::string features =
      "StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/"
      "StatefulPartitionedCall/StatefulPartitionedCall/predict/feature_vector/SpatialSqueeze";
  const std::string logits = "StatefulPartitionedCall/sequential/dense/BiasAdd";
  const SafeTensorsReader reference(reference_file("mobilenet_v2_mid"));
  auto got = graph.run(reference.load("input"), {"Identity", features, logits});
  const double d_output = max_abs_diff(got["Identity"], reference.load("output"));
  const double d_features = max_abs_diff(got[features], reference.load("features"));
  const double d_logits = max_abs_diff(got[logits], reference.load("logits"));
  std::cout << "[ golden   ] mobilenet_v2_mid (graph model): max |diff| features " << d_features
            << ", logits " << d_logits << ", output " << d_output << "\n";
  // The graph model is TF-Hub's MobileNetV2 1.4 and a Dense: 52 convolutions and 2 dense layers, the
  // widest summing 1792 terms (its last 1x1 convolution and the first Dense).
  const testing::ForwardDepth depth{54, 1792};
  const double logits_tolerance = testing::forward_tolerance(depth, reference.load("logits"));
  EXPECT_LE(d_features, testing::forward_tolerance(depth, reference.load("features")));
  EXPECT_LE(d_logits, logits_tolerance);
  EXPECT_LE(d_output, testing::softmax_tolerance(logits_tolerance));
  const torch::Tensor ref_output = reference.load("output");
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t top1 = got["Identity"][i].argmax().item<int64_t>();
    const int64_t expected = ref_output[i].argmax().item<int64_t>();
    EXPECT_EQ(top1, expected) << kImages[i] << ": graft says " << kClasses[top1] << ", TF.js says "
                              << kClasses[expected];
  }
  EXPECT_THROW(graph.run(reference.load("input"), {"no/such/node"}), Error);
}

INSTANTIATE_TEST_SUITE_P(Nsfwjs, NsfwjsGolden, ::testing::Values("mobilenet_v2", "inception_v3"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace graft
