// Head and freeze specs on a small hand-built backbone: parsing, shapes, and what one optimiser step
// may and may not change.
#include <gtest/gtest.h>

#include <set>

#include "graft/errors.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/summary.h"
#include "graft/transfer.h"

namespace graft {
namespace {

// conv-bn-relu x2, then avgpool + fc: the shape of every CNN in the zoo, small enough to reason about.
// The convolutions have no bias, as in the zoo: a bias before a training-mode BatchNorm gets a gradient of
// ~0 (the batch mean cancels it), so whether one SGD step moves it would depend on rounding.
class TinyNetImpl : public BackboneImpl {
 public:
  explicit TinyNetImpl(int64_t classes) : BackboneImpl("tinynet") {
    conv1 =
        register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(4));
    conv2 = register_module(
        "conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3).stride(2).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(8));
    fc = register_module("fc", torch::nn::Linear(8, classes));
  }
  int64_t num_features() const override { return 8; }
  std::vector<ForwardStep> feature_steps() override {
    return {{"conv1", "Conv2d", [this](const torch::Tensor& x) { return conv1(x); }},
            {"bn1", "BatchNorm2d", [this](const torch::Tensor& x) { return torch::relu(bn1(x)); }},
            {"conv2", "Conv2d", [this](const torch::Tensor& x) { return conv2(x); }},
            {"bn2", "BatchNorm2d", [this](const torch::Tensor& x) { return torch::relu(bn2(x)); }}};
  }
  std::vector<ForwardStep> classifier_steps(bool pre_logits) override {
    std::vector<ForwardStep> steps{{"avgpool", "GlobalAvgPool", [](const torch::Tensor& x) {
                                      return x.mean({2, 3});
                                    }}};
    if (!pre_logits) steps.push_back({"fc", "Linear", [this](const torch::Tensor& x) { return fc(x); }});
    return steps;
  }
  std::string classifier_name() const override { return "fc"; }
  void replace_classifier(int64_t n) override { fc = replace_module("fc", torch::nn::Linear(8, n)); }
  int64_t classifier_outputs() const override { return fc->options.out_features(); }

  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Linear fc{nullptr};
};

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value().detach().clone();
  return out;
}

// One SGD step on random data with only trainable parameters in the optimiser; returns what changed.
std::set<std::string> changed_after_step(TinyNetImpl& model) {
  torch::manual_seed(0);
  auto before = snapshot(model);
  std::vector<torch::Tensor> trainable;
  for (auto& p : model.parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::SGD optimizer(trainable, torch::optim::SGDOptions(0.1));
  model.train();
  auto x = torch::randn({4, 3, 8, 8});
  auto target = torch::randint(0, 3, {4}, torch::kLong);
  auto loss = torch::nn::functional::cross_entropy(model.forward(x), target);
  loss.backward();
  optimizer.step();
  std::set<std::string> changed;
  for (const auto& [name, value] : snapshot(model)) {
    if (!torch::equal(value, before[name])) changed.insert(name);
  }
  return changed;
}

TEST(HeadSpec, ParsesKerasStyleHead) {
  auto spec = HeadSpec::parse("avg,dropout:0.2,dense:512:relu,dense:10");
  EXPECT_EQ(spec.pooling, Pooling::kAvg);
  ASSERT_EQ(spec.layers.size(), 3u);
  EXPECT_EQ(spec.layers[0].kind, HeadLayerSpec::Kind::kDropout);
  EXPECT_DOUBLE_EQ(spec.layers[0].rate, 0.2);
  EXPECT_EQ(spec.layers[1].units, 512);
  EXPECT_EQ(spec.layers[1].activation, "relu");
  EXPECT_EQ(spec.layers[2].units, 10);
  EXPECT_EQ(spec.to_string(), "avg,dropout:0.2,dense:512:relu,dense:10");
  EXPECT_EQ(HeadSpec::parse("dense:3").pooling, Pooling::kAvg);  // pooling defaults to avg
  EXPECT_EQ(HeadSpec::parse("flatten").layers.size(), 0u);
}

TEST(HeadSpec, RejectsMalformedTermsWithTheTerm) {
  auto expect_error = [](const std::string& text, const std::string& needle) {
    try {
      HeadSpec::parse(text);
      FAIL() << "no error for '" << text << "'";
    } catch (const SpecError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("avg,dense:0", "dense:0");
  expect_error("avg,dense:ten", "'ten'");
  expect_error("avg,dropout:1.5", "[0, 1)");
  expect_error("avg,dense:5:swish", "unknown activation 'swish'");
  expect_error("dense:5,avg", "must come first");
  expect_error("avg,,dense:5", "empty term");
  expect_error("avg,conv:3", "'conv:3' not understood");
}

TEST(Head, ShapesAndNamesFollowTheSpec) {
  TinyNetImpl model(3);
  model.set_head(HeadSpec::parse("flatten,dense:16:relu,dropout:0.5,dense:5"), {8, 8});
  model.eval();
  // 8x8 input -> conv2 stride 2 -> 4x4 map of 8 channels -> flatten 128.
  auto names = snapshot(model);
  EXPECT_EQ(names.at("fc.0.weight").sizes(), torch::IntArrayRef({16, 128}));
  EXPECT_EQ(names.at("fc.2.weight").sizes(), torch::IntArrayRef({5, 16}));
  EXPECT_EQ(names.count("fc.weight"), 0u);  // the reference classifier is gone
  EXPECT_EQ(model.forward(torch::randn({2, 3, 8, 8})).sizes(), torch::IntArrayRef({2, 5}));
  EXPECT_EQ(model.forward_head(model.forward_features(torch::randn({2, 3, 8, 8})), true).sizes(),
            torch::IntArrayRef({2, 16}));
  // include_top=false: pooling only.
  model.set_head(HeadSpec::parse("max"));
  EXPECT_EQ(model.forward(torch::randn({2, 3, 8, 8})).sizes(), torch::IntArrayRef({2, 8}));
  // reset_classifier brings a plain linear classifier back under the reference name.
  model.reset_classifier(7);
  EXPECT_FALSE(model.has_custom_head());
  EXPECT_EQ(snapshot(model).at("fc.weight").sizes(), torch::IntArrayRef({7, 8}));
  EXPECT_THROW(model.set_head(HeadSpec::parse("none,dense:3")), SpecError);
}

// Global pooling reduces every dim after the channels, so one head serves image maps (N, C, H, W) and
// video maps (N, C, T, H, W).
TEST(Head, GlobalPoolingReducesEveryDimAfterTheChannels) {
  HeadImpl avg(HeadSpec::parse("avg"), /*in_channels=*/2, {0, 0});
  HeadImpl max(HeadSpec::parse("max"), /*in_channels=*/2, {0, 0});
  // Channel 0 holds 0..3, channel 1 holds 4..7, as a 2x2 image and as a 2-frame 1x2 clip.
  const torch::Tensor image = torch::arange(8, torch::kFloat).view({1, 2, 2, 2});
  const torch::Tensor clip = torch::arange(8, torch::kFloat).view({1, 2, 2, 1, 2});
  const torch::Tensor means = torch::tensor({{1.5f, 5.5f}});
  const torch::Tensor maxima = torch::tensor({{3.0f, 7.0f}});
  EXPECT_TRUE(torch::equal(avg.forward(image), means));
  EXPECT_TRUE(torch::equal(avg.forward(clip), means));
  EXPECT_TRUE(torch::equal(max.forward(image), maxima));
  EXPECT_TRUE(torch::equal(max.forward(clip), maxima));
  // Image maps pool exactly as before: the same reduction, bit for bit.
  const torch::Tensor map = torch::randn({3, 5, 7, 6});
  EXPECT_TRUE(torch::equal(avg.pool(map), map.mean({2, 3})));
  EXPECT_TRUE(torch::equal(max.pool(map), map.amax({2, 3})));
  // Already pooled (N, C): nothing to pool over, and the error says so.
  try {
    avg.pool(torch::randn({3, 5}));
    FAIL() << "expected graft::Error for a (3, 5) feature map";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("got shape"), std::string::npos) << e.what();
  }
}

// A video backbone (input_size (C, T, H, W)) takes clips wherever a dry run builds an input: summary,
// flatten heads; its preprocessing reads the frame size.
TEST(Head, VideoBackboneSummaryAndHeadsTakeClips) {
  Backbone model = create_model("r3d_18");
  const PretrainedCfg& cfg = model->default_cfg();
  ASSERT_TRUE(is_video_cfg(cfg));
  EXPECT_EQ(input_hw(cfg), (std::array<int64_t, 2>{112, 112}));
  EXPECT_EQ(example_input(cfg, {32, 32}).sizes(), torch::IntArrayRef({1, 3, 16, 32, 32}));
  EXPECT_EQ(Preprocessing::from_cfg(cfg).size, 112);
  EXPECT_FALSE(is_video_cfg(create_model("resnet18")->default_cfg()));

  // 16 x 32 x 32 clip: the stem halves H, W; layer2..4 halve T, H, W.
  ModelSummary summary = summarize(*model, {32, 32});
  ASSERT_FALSE(summary.rows.empty());
  EXPECT_EQ(summary.rows.front().name, "stem.0");
  EXPECT_EQ(summary.rows.front().output_shape, (std::vector<int64_t>{64, 16, 16, 16}));
  EXPECT_EQ(summary.rows.back().output_shape, (std::vector<int64_t>{400}));
  EXPECT_EQ(summary.total_params, 33371472);  // torchvision's R3D_18_Weights num_params

  model->eval();
  torch::NoGradGuard no_grad;
  model->set_head(HeadSpec::parse("avg,dense:5"));
  EXPECT_EQ(model->forward(torch::randn({2, 3, 4, 32, 32})).sizes(), torch::IntArrayRef({2, 5}));
  // flatten: 512 channels x (2 x 2 x 2) cells of a 16 x 32 x 32 clip's map.
  model->set_head(HeadSpec::parse("flatten,dense:5"), {32, 32});
  EXPECT_EQ(model->named_parameters()["fc.0.weight"].sizes(), torch::IntArrayRef({5, 512 * 8}));
  EXPECT_EQ(model->forward(torch::randn({1, 3, 16, 32, 32})).sizes(), torch::IntArrayRef({1, 5}));

  // Frozen BatchNorm3d counts as frozen BatchNorm in the summary's notes.
  apply_freeze(*model, "all");
  summary = summarize(*model, {32, 32});
  ASSERT_FALSE(summary.notes.empty());
  EXPECT_NE(summary.notes.back().find("frozen BatchNorm"), std::string::npos) << summary.notes.back();
}

TEST(Freeze, AllWithNewHeadTrainsOnlyTheHeadAndKeepsBatchNormStatistics) {
  TinyNetImpl model(3);
  model.set_head(HeadSpec::parse("avg,dense:6:relu,dense:3"));
  {
    // A positive bias keeps the hidden ReLUs alive: with an unseeded init all six could be dead for the
    // batch (about one run in fifteen), and then only fc.1.bias gets a gradient.
    torch::NoGradGuard no_grad;
    model.named_parameters()["fc.0.bias"].fill_(1.0);
  }
  auto report = apply_freeze(model, "all");
  EXPECT_EQ(report.frozen_layers, (std::vector<std::string>{"conv1", "bn1", "conv2", "bn2"}));
  auto changed = changed_after_step(model);
  EXPECT_EQ(changed, (std::set<std::string>{"fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias"}));
  // Frozen BatchNorm stays in inference mode even though the model is in train().
  EXPECT_TRUE(model.is_training());
  EXPECT_FALSE(model.bn1->is_training());
}

TEST(Freeze, FrozenBatchNormMayTrainWhenAskedExplicitly) {
  TinyNetImpl model(3);
  model.set_frozen_bn_trains(true);
  apply_freeze(model, "all");
  auto changed = changed_after_step(model);
  EXPECT_TRUE(changed.count("bn1.running_mean"));
  EXPECT_FALSE(changed.count("bn1.weight"));  // still frozen: only the statistics move
  EXPECT_TRUE(changed.count("fc.weight"));
}

TEST(Freeze, LastNLeavesExactlyTheLastNLayersTrainable) {
  TinyNetImpl model(3);
  EXPECT_EQ(backbone_layers(model), (std::vector<std::string>{"conv1", "bn1", "conv2", "bn2"}));
  apply_freeze(model, "last:2");
  auto changed = changed_after_step(model);
  EXPECT_EQ(changed,
            (std::set<std::string>{"conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean",
                                   "bn2.running_var", "bn2.num_batches_tracked", "fc.weight", "fc.bias"}));
}

TEST(Freeze, UntilAndGlobs) {
  TinyNetImpl model(3);
  auto report = apply_freeze(model, "until:conv2");
  EXPECT_EQ(report.frozen_layers, (std::vector<std::string>{"conv1", "bn1"}));
  EXPECT_FALSE(model.conv1->weight.requires_grad());
  EXPECT_TRUE(model.conv2->weight.requires_grad());

  apply_freeze(model, "conv*");  // re-applying starts from everything trainable
  EXPECT_FALSE(model.conv1->weight.requires_grad());
  EXPECT_FALSE(model.conv2->bias.requires_grad());
  EXPECT_TRUE(model.bn1->weight.requires_grad());
  EXPECT_TRUE(model.fc->weight.requires_grad());

  apply_freeze(model, "none");
  EXPECT_TRUE(model.conv1->weight.requires_grad());

  EXPECT_THROW(apply_freeze(model, "until:layer9"), SpecError);
  EXPECT_THROW(apply_freeze(model, "nothing*"), SpecError);
  EXPECT_THROW(apply_freeze(model, "last:x"), SpecError);
  // The example glob in the message is one of this model's names, not a ResNet's (#15.9).
  try {
    apply_freeze(model, "nothing*");
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("such as 'conv1.*'"), std::string::npos) << e.what();
  }
}

// The same guarantees on a zoo model: ResNet-18 with a new head and `freeze all`.
TEST(Freeze, ZooModelFrozenBackboneOnlyHeadMovesAndBatchNormStatisticsStay) {
  Backbone model = create_model("resnet18");
  model->set_head(HeadSpec::parse("avg,dense:16:relu,dense:4"));
  apply_freeze(*model, "all");
  auto before = snapshot(*model);
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  ASSERT_EQ(trainable.size(), 4u);  // fc.0.{weight,bias}, fc.1.{weight,bias}
  torch::optim::SGD optimizer(trainable, torch::optim::SGDOptions(0.1).momentum(0.9));
  model->train();
  torch::manual_seed(1);
  auto loss = torch::nn::functional::cross_entropy(model->forward(torch::randn({4, 3, 32, 32})),
                                                   torch::tensor({0, 1, 2, 3}, torch::kLong));
  loss.backward();
  optimizer.step();
  std::set<std::string> changed;
  for (const auto& [name, value] : snapshot(*model)) {
    if (!torch::equal(value, before[name])) changed.insert(name);
  }
  EXPECT_EQ(changed, (std::set<std::string>{"fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias"}));
  // last:2 on ResNet-18: layer4.1's conv2 and bn2 (then the head) are all that learn.
  model->reset_classifier(4);
  apply_freeze(*model, "last:2");
  std::vector<std::string> trainable_names;
  for (const auto& p : model->named_parameters()) {
    if (p.value().requires_grad()) trainable_names.push_back(p.key());
  }
  EXPECT_EQ(trainable_names, (std::vector<std::string>{"layer4.1.conv2.weight", "layer4.1.bn2.weight",
                                                       "layer4.1.bn2.bias", "fc.weight", "fc.bias"}));
}

}  // namespace
}  // namespace graft
