// TF "same" padding (src/layers/conv2d_same): padding amounts, convolution and pooling against values
// computed by hand from TensorFlow's rule (out = ceil(in / s), extra padding at the bottom / right).
#include <gtest/gtest.h>

#include "graft/errors.h"
#include "layers/conv2d_same.h"

namespace graft {
namespace {

using Pads = std::pair<int64_t, int64_t>;

TEST(Conv2dSame, PaddingAmounts) {
  // (in, kernel, stride, dilation) -> (before, after)
  EXPECT_EQ(same_padding(224, 3, 2), Pads(0, 1));  // total = 111*2 + 3 - 224 = 1: TF pads bottom/right only
  EXPECT_EQ(same_padding(224, 3, 1), Pads(1, 1));
  EXPECT_EQ(same_padding(225, 3, 2), Pads(1, 1));    // total = 112*2 + 3 - 225 = 2
  EXPECT_EQ(same_padding(5, 2, 2), Pads(0, 1));      // total = 2*2 + 2 - 5 = 1
  EXPECT_EQ(same_padding(6, 2, 2), Pads(0, 0));      // even input, 2x2/2 pool: no padding
  EXPECT_EQ(same_padding(7, 1, 2), Pads(0, 0));      // 1x1 never pads
  EXPECT_EQ(same_padding(4, 4, 1), Pads(1, 2));      // total 3: the odd cell after
  EXPECT_EQ(same_padding(10, 3, 1, 2), Pads(2, 2));  // effective kernel 5
  EXPECT_EQ(same_padding(1, 3, 2), Pads(1, 1));      // total = 0 + 3 - 1 = 2
  EXPECT_THROW(same_padding(4, 0, 1), Error);
}

TEST(Conv2dSame, PadSameIsAsymmetric) {
  const auto x = torch::ones({1, 1, 4, 4});
  const auto padded = pad_same(x, {3, 3}, {2, 2});
  ASSERT_EQ(padded.sizes(), torch::IntArrayRef({1, 1, 5, 5}));
  // Row 4 and column 4 are the padding; row 0 and column 0 are input.
  EXPECT_EQ(padded[0][0][4].sum().item<float>(), 0.0f);
  EXPECT_EQ(padded[0][0].select(1, 4).sum().item<float>(), 0.0f);
  EXPECT_EQ(padded[0][0][0].sum().item<float>(), 4.0f);
  // Nothing to pad: the input itself comes back.
  EXPECT_TRUE(pad_same(x, {1, 1}, {1, 1}).is_same(x));
}

TEST(Conv2dSame, StrideTwoConvolutionMatchesHandComputedSums) {
  // x = 0..15 in a 4x4 grid, an all-ones 3x3 kernel, stride 2: windows start at 0 and 2, the second one
  // reads one padded column / row of zeros.
  //    0  1  2  3
  //    4  5  6  7
  //    8  9 10 11
  //   12 13 14 15
  Conv2dSame conv(torch::nn::Conv2dOptions(1, 1, 3).stride(2).bias(false));
  {
    torch::NoGradGuard no_grad;
    conv->weight.fill_(1.0);
  }
  const auto x = torch::arange(16, torch::kFloat32).view({1, 1, 4, 4});
  const auto y = conv(x);
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({1, 1, 2, 2}));
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), 45);  // rows 0-2, cols 0-2
  EXPECT_FLOAT_EQ(y[0][0][0][1].item<float>(), 39);  // rows 0-2, cols 2-3
  EXPECT_FLOAT_EQ(y[0][0][1][0].item<float>(), 66);  // rows 2-3, cols 0-2
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), 50);  // rows 2-3, cols 2-3
  // PyTorch's symmetric padding=1 would centre the first window on (0, 0): 0+1+4+5 = 10.
  EXPECT_NE(y[0][0][0][0].item<float>(), 10);
}

TEST(Conv2dSame, SymmetricCaseEqualsPlainConvAndKeepsNames) {
  torch::manual_seed(0);
  Conv2dSame same(torch::nn::Conv2dOptions(3, 5, 3).bias(true));
  torch::nn::Conv2d plain(torch::nn::Conv2dOptions(3, 5, 3).padding(1).bias(true));
  {
    torch::NoGradGuard no_grad;
    plain->weight.copy_(same->weight);
    plain->bias.copy_(same->bias);
  }
  const auto x = torch::randn({2, 3, 7, 6});
  EXPECT_TRUE(torch::allclose(same(x), plain(x), 1e-6, 1e-6));
  const auto params = same->named_parameters();
  EXPECT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params.contains("bias"));
  // Code that looks for Conv2d layers (initialisation, freezing) finds it.
  std::shared_ptr<torch::nn::Module> as_module = same.ptr();
  EXPECT_NE(as_module->as<torch::nn::Conv2d>(), nullptr);
  // A clone keeps the TF padding and the weights.
  auto copy = std::dynamic_pointer_cast<Conv2dSameImpl>(same->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(torch::equal(copy->forward(x), same(x)));
}

TEST(Conv2dSame, OddInputStrideTwoMatchesExplicitPadding) {
  torch::manual_seed(1);
  Conv2dSame same(torch::nn::Conv2dOptions(2, 4, 3).stride(2).bias(false));
  const auto x = torch::randn({1, 2, 9, 8});
  // H = 9: total 2 -> (1, 1); W = 8: total 1 -> (0, 1).
  const auto manual = torch::conv2d(torch::constant_pad_nd(x, {0, 1, 1, 1}), same->weight, {}, 2);
  const auto y = same(x);
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({1, 4, 5, 4}));
  EXPECT_TRUE(torch::allclose(y, manual, 1e-6, 1e-6));
}

TEST(Conv2dSame, MaxPoolNeverPicksPadding) {
  // All values negative: zero padding would win; -inf padding never does.
  const auto x = -torch::arange(16, torch::kFloat32).view({1, 1, 4, 4});
  const auto y = max_pool2d_same(x, {3, 3}, {2, 2});
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({1, 1, 2, 2}));
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), 0);
  EXPECT_FLOAT_EQ(y[0][0][0][1].item<float>(), -2);
  EXPECT_FLOAT_EQ(y[0][0][1][0].item<float>(), -8);
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), -10);
  // 2x2/2 on an odd size: ceil(5 / 2) = 3 outputs per side, the last window one cell wide.
  EXPECT_EQ(max_pool2d_same(torch::zeros({1, 1, 5, 5}), {2, 2}, {2, 2}).sizes(),
            torch::IntArrayRef({1, 1, 3, 3}));
}

TEST(Conv2dSame, AvgPoolExcludesPadding) {
  // 0..8 in a 3x3 grid, 2x2/2 windows: {0,1,3,4} -> 2, {2,5} -> 3.5, {6,7} -> 6.5, {8} -> 8.
  const auto x = torch::arange(9, torch::kFloat32).view({1, 1, 3, 3});
  const auto y = avg_pool2d_same(x, {2, 2}, {2, 2});
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({1, 1, 2, 2}));
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), 2.0f);
  EXPECT_FLOAT_EQ(y[0][0][0][1].item<float>(), 3.5f);
  EXPECT_FLOAT_EQ(y[0][0][1][0].item<float>(), 6.5f);
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), 8.0f);
  // 3x3/1 on a constant map stays constant (borders average fewer cells, not zeros).
  const auto constant = avg_pool2d_same(torch::full({2, 3, 4, 5}, 7.0f), {3, 3}, {1, 1});
  EXPECT_TRUE(torch::allclose(constant, torch::full({2, 3, 4, 5}, 7.0f)));
}

}  // namespace
}  // namespace graft
