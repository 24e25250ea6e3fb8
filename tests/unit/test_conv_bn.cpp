// BatchNorm folding (layers/conv_bn.h): a frozen backbone's folded, channels-last forward equals the plain
// modules' forward; pairs that train are left alone; a folded weight follows in-place updates; and the
// gradients of a fine-tune step with a folded frozen prefix equal those without folding.
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include "graft/registry.h"
#include "graft/transfer.h"
#include "layers/conv2d_same.h"
#include "layers/conv_bn.h"

namespace graft {
namespace {

// Running statistics and affine parameters far from the identity that a fresh BatchNorm has, so that a
// wrong fold (a missing eps, a swapped mean) shows.
void randomise_batchnorms(torch::nn::Module& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& module : model.modules(/*include_self=*/false)) {
    if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
      const int64_t c = bn->running_mean.size(0);
      bn->running_mean.copy_(torch::randn({c}) * 0.5);
      bn->running_var.copy_(torch::rand({c}) * 2 + 0.1);
      bn->weight.copy_(torch::rand({c}) + 0.5);
      bn->bias.copy_(torch::randn({c}) * 0.2);
    }
  }
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max()).item<double>();
}

class FoldedForward : public ::testing::TestWithParam<std::string> {};

TEST_P(FoldedForward, EqualsTheUnfoldedModules) {
  Backbone model = create_model(GetParam());
  randomise_batchnorms(*model, 1);
  apply_freeze(*model, "all");
  model->eval();
  torch::manual_seed(2);
  const torch::Tensor images = torch::randn({2, 3, 80, 80});  // InceptionV3 needs 75 px or more
  c10::InferenceMode inference;
  const torch::Tensor plain = model->forward(images);
  torch::Tensor folded;
  size_t pairs = 0;
  {
    BatchNormFolding folding;
    folded = model->forward(images);
    pairs = folding.size();
  }
  // Every BatchNorm of these models follows a convolution: all of them fold (InceptionV3's auxiliary
  // classifier does not run in eval mode), except after a Keras port's Conv2dSame (TF padding), which
  // keeps its own forward.
  size_t batchnorms = 0, same_padding = 0;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    batchnorms +=
        item.value()->as<torch::nn::BatchNorm2d>() != nullptr && item.key().rfind("AuxLogits", 0) != 0;
    same_padding += item.value()->as<Conv2dSame>() != nullptr;
  }
  EXPECT_EQ(pairs, batchnorms - same_padding);
  if (GetParam() == "mobilenet_v2.keras") {
    EXPECT_GT(same_padding, 0u);
  }
  const double error = relative_error(folded, plain);
  std::cout << "[fold] " << GetParam() << ": " << pairs << " pairs folded, max relative error " << error
            << "\n";
  EXPECT_LT(error, 1e-5);
  // Outside a scope, and with folding switched off, nothing folds.
  BatchNormFolding::set_enabled(false);
  {
    BatchNormFolding folding;
    EXPECT_TRUE(torch::equal(model->forward(images), plain));
    EXPECT_EQ(folding.size(), 0u);
  }
  BatchNormFolding::set_enabled(true);
}

INSTANTIATE_TEST_SUITE_P(Architectures, FoldedForward,
                         ::testing::Values("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v2.keras",
                                           "efficientnet_b0", "inception_v3"));

TEST(BatchNormFolding, LeavesTrainingPairsAloneAndFollowsInPlaceUpdates) {
  Backbone model = create_model("resnet18");
  randomise_batchnorms(*model, 3);
  apply_freeze(*model, "all");
  model->eval();
  torch::manual_seed(4);
  const torch::Tensor images = torch::randn({2, 3, 64, 64});
  torch::NoGradGuard no_grad;
  BatchNormFolding folding;
  model->forward(images);
  const size_t all_pairs = folding.size();

  // A BatchNorm in train mode or with a trainable parameter is not folded.
  auto* bn1 = model->named_modules()["bn1"]->as<torch::nn::BatchNorm2d>();
  ASSERT_NE(bn1, nullptr);
  auto conv1 = model->named_modules()["conv1"]->as<torch::nn::Conv2d>();
  EXPECT_TRUE(can_fold(*conv1, *bn1));
  bn1->weight.set_requires_grad(true);
  EXPECT_FALSE(can_fold(*conv1, *bn1));
  bn1->weight.set_requires_grad(false);
  bn1->train();
  EXPECT_FALSE(can_fold(*conv1, *bn1));
  bn1->eval();

  // New running statistics (copied in place, as loading weights does) reach the folded weights.
  bn1->running_var.mul_(4.0);
  bn1->running_mean.add_(0.3);
  const torch::Tensor folded = model->forward(images);
  EXPECT_EQ(folding.size(), all_pairs);
  BatchNormFolding::set_enabled(false);
  const torch::Tensor plain = model->forward(images);
  BatchNormFolding::set_enabled(true);
  EXPECT_LT(relative_error(folded, plain), 1e-5);
}

TEST(BatchNormFolding, FineTuneGradientsEqualThoseWithoutFolding) {
  auto grads = [](bool fold) {
    torch::manual_seed(5);
    Backbone model = create_model("resnet18");
    randomise_batchnorms(*model, 6);
    model->reset_classifier(3);
    apply_freeze(*model, "until:layer4");
    model->train();  // the frozen prefix's BatchNorms stay on running statistics
    torch::manual_seed(7);
    const torch::Tensor images = torch::randn({4, 3, 64, 64});
    const torch::Tensor labels = torch::tensor({0, 1, 2, 1}, torch::kLong);
    BatchNormFolding::set_enabled(fold);
    BatchNormFolding folding;
    torch::nn::functional::cross_entropy(model->forward(images), labels).backward();
    BatchNormFolding::set_enabled(true);
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& item : model->named_parameters())
      if (item.value().requires_grad()) out.emplace_back(item.key(), item.value().grad().clone());
    return std::make_pair(out, folding.size());
  };
  const auto [folded, folded_pairs] = grads(true);
  const auto [plain, plain_pairs] = grads(false);
  EXPECT_GT(folded_pairs, 0u);  // the frozen stem and layer1..3 folded
  EXPECT_EQ(plain_pairs, 0u);
  ASSERT_EQ(folded.size(), plain.size());
  ASSERT_FALSE(folded.empty());
  for (size_t i = 0; i < folded.size(); ++i) {
    EXPECT_EQ(folded[i].first, plain[i].first);
    EXPECT_LT(relative_error(folded[i].second, plain[i].second), 1e-4) << folded[i].first;
  }
}

TEST(BatchNormFolding, FoldsAModelMadeUnderInferenceMode) {
  // Its parameters are inference tensors, which keep no version counter.
  c10::InferenceMode inference;
  Backbone model = create_model("resnet18");
  randomise_batchnorms(*model, 8);
  apply_freeze(*model, "all");
  model->eval();
  torch::manual_seed(9);
  const torch::Tensor images = torch::randn({2, 3, 64, 64});
  const torch::Tensor plain = model->forward(images);
  BatchNormFolding folding;
  const torch::Tensor folded = model->forward(images);
  EXPECT_EQ(folding.size(), 20u);  // ResNet-18: the stem, 16 block convolutions, 3 downsamples
  EXPECT_LT(relative_error(folded, plain), 1e-5);
  EXPECT_LT(relative_error(model->forward(images), plain), 1e-5);  // from the cache
}

}  // namespace
}  // namespace graft
