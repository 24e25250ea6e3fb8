// EfficientNet's pieces without golden files: stochastic depth (src/layers/stochastic_depth) against masks
// drawn by hand from the same generator, the per-block drop rates torchvision assigns, and the B0..B7
// presets against the parameter counts torchvision 0.14 publishes (EfficientNet_BN_Weights meta).
#include <gtest/gtest.h>

#include <cmath>

#include "graft/errors.h"
#include "layers/stochastic_depth.h"
#include "models/efficientnet.h"

namespace graft {
namespace {

namespace nn = torch::nn;

TEST(StochasticDepth, IdentityInEvalAndAtZero) {
  const auto x = torch::randn({4, 3, 2, 2});
  EXPECT_TRUE(stochastic_depth(x, 0.5, StochasticDepthMode::kRow, /*training=*/false).is_same(x));
  EXPECT_TRUE(stochastic_depth(x, 0.0, StochasticDepthMode::kRow, /*training=*/true).is_same(x));
  StochasticDepth module(0.3, StochasticDepthMode::kRow);
  module->eval();
  EXPECT_TRUE(module->forward(x).is_same(x));
}

TEST(StochasticDepth, RowModeKeepsOrDropsWholeSamplesFromTorchsGenerator) {
  const auto x = torch::randn({64, 3, 2, 2});
  torch::manual_seed(7);
  // torchvision's draw: one Bernoulli(1 - p) per sample, survivors scaled by 1 / (1 - p).
  const auto keep = torch::empty({64, 1, 1, 1}).bernoulli_(0.75);
  torch::manual_seed(7);
  const auto y = stochastic_depth(x, 0.25, StochasticDepthMode::kRow, /*training=*/true);
  EXPECT_TRUE(torch::allclose(y, x * keep / 0.75));
  const int64_t dropped = (keep == 0).sum().item<int64_t>();
  EXPECT_GT(dropped, 0);  // with 64 samples at p = 0.25, P(no drop) = 1e-8
  EXPECT_LT(dropped, 64);

  torch::manual_seed(7);  // seeded runs repeat
  EXPECT_TRUE(torch::equal(stochastic_depth(x, 0.25, StochasticDepthMode::kRow, true), y));
}

TEST(StochasticDepth, BatchModeAndEdges) {
  const auto x = torch::ones({8, 2});
  for (int seed = 0; seed < 4; ++seed) {
    torch::manual_seed(seed);
    const auto y = stochastic_depth(x, 0.5, StochasticDepthMode::kBatch, true);
    // One draw for all: every element is 0 or every element is 2.
    EXPECT_TRUE(torch::equal(y, torch::zeros_like(x)) || torch::equal(y, torch::full_like(x, 2.0))) << y;
  }
  EXPECT_TRUE(torch::equal(stochastic_depth(x, 1.0, StochasticDepthMode::kRow, true), torch::zeros_like(x)));
  EXPECT_THROW(stochastic_depth(x, 1.5, StochasticDepthMode::kRow, true), Error);
  EXPECT_THROW(stochastic_depth(x, -0.1, StochasticDepthMode::kRow, false), Error);
  EXPECT_THROW(StochasticDepth(-0.1, StochasticDepthMode::kRow), Error);
}

TEST(EfficientNet, B0BlocksAsTorchvisionBuildsThem) {
  EfficientNet model(EfficientNetConfig::efficientnet_b0(), 1000);
  ASSERT_EQ(model->features->size(), 9u);  // stem, 7 stages, head conv
  const int64_t blocks_per_stage[] = {1, 2, 2, 3, 3, 4, 1};
  int64_t block_id = 0;
  for (size_t stage = 1; stage <= 7; ++stage) {
    auto blocks = model->features->ptr(stage)->as<nn::Sequential>();
    ASSERT_NE(blocks, nullptr);
    ASSERT_EQ(blocks->size(), size_t(blocks_per_stage[stage - 1])) << "features." << stage;
    for (size_t i = 0; i < blocks->size(); ++i, ++block_id) {
      auto block = blocks->ptr(i)->as<efficientnet::MBConv>();
      ASSERT_NE(block, nullptr);
      // torchvision: stochastic_depth_prob * block_id / total_blocks, 16 blocks in B0.
      EXPECT_DOUBLE_EQ(block->stochastic_depth->p, 0.2 * block_id / 16.0) << "features." << stage << "." << i;
      // Stage 1 has expand ratio 1: no expand conv, so depthwise, SE, project.
      EXPECT_EQ(block->block->size(), stage == 1 ? 3u : 4u) << "features." << stage << "." << i;
    }
  }
  EXPECT_EQ(block_id, 16);

  const auto params = model->named_parameters();
  // SE squeezes to a quarter of the block's input width: features.2.0 has input 16, expanded 96.
  EXPECT_EQ(params["features.2.0.block.2.fc1.weight"].sizes(), torch::IntArrayRef({4, 96, 1, 1}));
  EXPECT_EQ(params["features.2.0.block.1.0.weight"].sizes(), torch::IntArrayRef({96, 1, 3, 3}));  // depthwise
  EXPECT_EQ(params["features.3.0.block.1.0.weight"].sizes(), torch::IntArrayRef({144, 1, 5, 5}));
  EXPECT_EQ(params["features.8.0.weight"].sizes(), torch::IntArrayRef({1280, 320, 1, 1}));
  EXPECT_EQ(params["classifier.1.weight"].sizes(), torch::IntArrayRef({1000, 1280}));
  // Linear init: uniform within 1/sqrt(out_features).
  EXPECT_LE(params["classifier.1.weight"].abs().max().item<double>(), 1.0 / std::sqrt(1000.0));
  auto bn = model->features->ptr(0)->as<nn::Sequential>()->ptr(1)->as<nn::BatchNorm2d>();
  ASSERT_NE(bn, nullptr);
  EXPECT_DOUBLE_EQ(bn->options.eps(), 1e-5);
  EXPECT_DOUBLE_EQ(bn->options.momentum().value(), 0.1);
}

int64_t total_parameters(const EfficientNetConfig& config) {
  int64_t total = 0;
  for (const auto& p : EfficientNet(config, 1000)->parameters()) total += p.numel();
  return total;
}

// Width and depth rounding (make_divisible, ceil) decide every count: a wrong rounding misses by thousands.
TEST(EfficientNet, PresetsHaveTorchvisionsParameterCounts) {
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b0()), 5288548);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b1()), 7794184);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b2()), 9109994);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b3()), 12233232);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b4()), 19341616);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b5()), 30389784);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b6()), 43040704);
  EXPECT_EQ(total_parameters(EfficientNetConfig::efficientnet_b7()), 66347960);
  const auto b7 = EfficientNetConfig::efficientnet_b7();
  EXPECT_DOUBLE_EQ(b7.bn_eps, 1e-3);  // torchvision's B5..B7 norm_layer
  EXPECT_DOUBLE_EQ(b7.bn_momentum, 0.01);
}

}  // namespace
}  // namespace graft
