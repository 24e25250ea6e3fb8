// Training core: schedules, loss, metrics, optimisers, checkpoints, pictures, progress bars and the
// Trainer (convergence, early stopping, determinism, resume equivalence, NaN handling). Expected values
// are computed by hand (in the comments) or with plain scalar arithmetic, never with the code under test.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <tuple>

#include "graft/files.h"
#include "graft/progress.h"
#include "graft/trainer.h"
#include "graft/weights.h"

namespace fs = std::filesystem;
using namespace graft;

namespace {

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("graft_train_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  fs::path operator/(const std::string& child) const { return path_ / child; }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// logits whose argmax is `predicted` for each row.
torch::Tensor one_hot_logits(const std::vector<int64_t>& predicted, int64_t classes) {
  torch::Tensor logits = torch::zeros({static_cast<int64_t>(predicted.size()), classes});
  for (size_t i = 0; i < predicted.size(); ++i) logits[static_cast<int64_t>(i)][predicted[i]] = 1.0;
  return logits;
}

torch::Tensor labels_of(const std::vector<int64_t>& labels) {
  return torch::tensor(labels, torch::kLong);
}

struct TinyMlpImpl : torch::nn::Module {
  TinyMlpImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(2, 16));
    drop = register_module("drop", torch::nn::Dropout(0.1));
    fc2 = register_module("fc2", torch::nn::Linear(16, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(drop(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(TinyMlp);

// Four well separated Gaussian blobs in the plane, one per class.
std::pair<torch::Tensor, torch::Tensor> blobs(int64_t per_class, uint64_t seed) {
  torch::manual_seed(seed);
  const float centres[4][2] = {{2.5f, 2.5f}, {-2.5f, 2.5f}, {-2.5f, -2.5f}, {2.5f, -2.5f}};
  std::vector<torch::Tensor> xs, ys;
  for (int64_t c = 0; c < 4; ++c) {
    xs.push_back(torch::randn({per_class, 2}) * 0.6 + torch::tensor({centres[c][0], centres[c][1]}));
    ys.push_back(torch::full({per_class}, c, torch::kLong));
  }
  return {torch::cat(xs), torch::cat(ys)};
}

struct Data {
  std::unique_ptr<TensorBatchSource> train, val;
  Data() {
    auto [xt, yt] = blobs(64, 1);
    auto [xv, yv] = blobs(32, 2);
    train = std::make_unique<TensorBatchSource>(xt, yt, 32, /*shuffle=*/true);
    val = std::make_unique<TensorBatchSource>(xv, yv, 50, /*shuffle=*/false);
  }
};

TrainConfig base_config(std::ostream& log) {
  TrainConfig config;
  config.epochs = 4;
  config.optimizer.name = "adamw";
  config.optimizer.lr = 0.02;
  config.schedule.name = "cosine";
  config.schedule.warmup_steps = 3;
  config.schedule.warmup_start = 0.1;
  config.label_smoothing = 0.05;
  config.grad_clip = 1.0;
  config.seed = 11;
  config.log = &log;
  config.class_names = {"north-east", "north-west", "south-west", "south-east"};
  return config;
}

std::unique_ptr<Trainer> make_trainer(TinyMlp model, TrainConfig config) {
  return std::make_unique<Trainer>(
      model.ptr(), [model](const torch::Tensor& x) mutable { return model->forward(x); }, std::move(config));
}

void expect_same_weights(torch::nn::Module& a, torch::nn::Module& b) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    const torch::Tensor other = pb[item.key()];
    EXPECT_TRUE(torch::equal(item.value(), other))
        << item.key() << " differs, max |diff| = " << (item.value() - other).abs().max().item<double>();
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Schedules

TEST(Schedule, ConstantWithWarmup) {
  ScheduleConfig c;
  c.warmup_steps = 4;
  c.warmup_start = 0.2;
  // 0.2 + 0.8 * step / 4
  EXPECT_DOUBLE_EQ(lr_factor(c, 0, 100), 0.2);
  EXPECT_DOUBLE_EQ(lr_factor(c, 1, 100), 0.4);
  EXPECT_DOUBLE_EQ(lr_factor(c, 3, 100), 0.8);
  EXPECT_DOUBLE_EQ(lr_factor(c, 4, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(c, 99, 100), 1.0);
}

TEST(Schedule, StepInEpochsAndSteps) {
  ScheduleConfig c;
  c.name = "step";
  c.step_size = 2;  // epochs
  c.gamma = 0.5;
  EXPECT_DOUBLE_EQ(lr_factor(c, 0, 100, /*steps_per_epoch=*/10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(c, 19, 100, 10), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(c, 20, 100, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(c, 39, 100, 10), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(c, 40, 100, 10), 0.25);
  c.step_size = 3;
  c.step_size_in_epochs = false;
  c.gamma = 0.1;
  EXPECT_DOUBLE_EQ(lr_factor(c, 2, 100, 10), 1.0);
  EXPECT_NEAR(lr_factor(c, 3, 100, 10), 0.1, 1e-15);
  EXPECT_NEAR(lr_factor(c, 6, 100, 10), 0.01, 1e-15);
}

TEST(Schedule, Cosine) {
  ScheduleConfig c;
  c.name = "cosine";
  EXPECT_DOUBLE_EQ(lr_factor(c, 0, 10), 1.0);
  EXPECT_NEAR(lr_factor(c, 2, 10), 0.9045084971874737, 1e-12);  // (1 + cos(0.2 pi)) / 2
  EXPECT_NEAR(lr_factor(c, 5, 10), 0.5, 1e-12);
  EXPECT_NEAR(lr_factor(c, 10, 10), 0.0, 1e-12);
  c.min_factor = 0.1;
  EXPECT_NEAR(lr_factor(c, 5, 10), 0.55, 1e-12);  // 0.1 + 0.9 * 0.5
  EXPECT_NEAR(lr_factor(c, 10, 10), 0.1, 1e-12);
  // Warm-up of 2 steps from 0, then the cosine over the remaining 10.
  c.min_factor = 0.0;
  c.warmup_steps = 2;
  EXPECT_DOUBLE_EQ(lr_factor(c, 0, 12), 0.0);
  EXPECT_DOUBLE_EQ(lr_factor(c, 1, 12), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(c, 2, 12), 1.0);
  EXPECT_NEAR(lr_factor(c, 7, 12), 0.5, 1e-12);
}

TEST(Schedule, LinearWarmupDecayBertRecipe) {
  ScheduleConfig c;
  c.name = "linear";
  c.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(lr_factor(c, 5, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(c, 10, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(c, 55, 100), 0.5);  // (100 - 55) / 90
  EXPECT_DOUBLE_EQ(lr_factor(c, 100, 100), 0.0);
}

TEST(Schedule, RejectsUnknownNameAndBadValues) {
  ScheduleConfig c;
  c.name = "exponential";
  EXPECT_THROW(lr_factor(c, 0, 10), Error);
  c.name = "step";
  c.step_size = 0;
  EXPECT_THROW(LrSchedule(c, 10, 1), Error);
}

TEST(Schedule, SetLrScalesEveryGroupsBaseRate) {
  torch::Tensor a = torch::ones({2}, torch::requires_grad()), b = torch::ones({3}, torch::requires_grad());
  OptimizerConfig oc;
  oc.name = "sgd";
  oc.lr = 0.01;
  GroupedOptimizer opt = build_optimizer(oc, {{{a}, 0.1, "backbone"}, {{b}, 1.0, "head"}});
  ScheduleConfig sc;
  sc.name = "linear";
  LrSchedule schedule(sc, /*total_steps=*/10, /*steps_per_epoch=*/5);
  set_lr(opt, schedule, 5);  // factor 0.5
  const auto lrs = current_lrs(opt);
  ASSERT_EQ(lrs.size(), 2u);
  EXPECT_NEAR(lrs[0], 0.0005, 1e-15);
  EXPECT_NEAR(lrs[1], 0.005, 1e-15);
}

// ---------------------------------------------------------------------------------------------------
// Loss

namespace {
// -log softmax(row)[k] in double.
double nll(const std::vector<double>& row, size_t k) {
  double sum = 0;
  for (double v : row) sum += std::exp(v);
  return std::log(sum) - row[k];
}
const std::vector<std::vector<double>> kRows = {{2.0, 1.0, 0.0}, {0.5, -1.0, 1.5}};
const std::vector<int64_t> kTargets = {0, 2};
torch::Tensor loss_logits() {
  return torch::tensor({2.0, 1.0, 0.0, 0.5, -1.0, 1.5}, torch::kDouble).reshape({2, 3});
}
}  // namespace

TEST(Loss, PlainCrossEntropy) {
  // log(e^2 + e + 1) - 2 = 0.40760596...
  EXPECT_NEAR(nll(kRows[0], 0), 0.4076059644443804, 1e-12);
  const double expected = (nll(kRows[0], 0) + nll(kRows[1], 2)) / 2;
  EXPECT_NEAR(classification_loss(loss_logits(), labels_of(kTargets)).item<double>(), expected, 1e-12);
}

TEST(Loss, LabelSmoothing) {
  const double eps = 0.1, classes = 3;
  double expected = 0;
  for (size_t i = 0; i < 2; ++i) {
    double all = 0;
    for (size_t c = 0; c < 3; ++c) all += nll(kRows[i], c);
    expected += (1 - eps) * nll(kRows[i], static_cast<size_t>(kTargets[i])) + eps / classes * all;
  }
  expected /= 2;
  EXPECT_NEAR(classification_loss(loss_logits(), labels_of(kTargets), eps).item<double>(), expected, 1e-12);
}

TEST(Loss, ClassWeightsAndSmoothingTogether) {
  const std::vector<double> w = {1.0, 2.0, 3.0};
  const torch::Tensor weights = torch::tensor(w, torch::kDouble);
  // Weights alone: sum_i w[y_i] nll_i / sum_i w[y_i].
  const double weighted = (w[0] * nll(kRows[0], 0) + w[2] * nll(kRows[1], 2)) / (w[0] + w[2]);
  EXPECT_NEAR(classification_loss(loss_logits(), labels_of(kTargets), 0.0, weights).item<double>(), weighted,
              1e-12);
  // PyTorch: [(1 - eps) sum_i w[y_i] nll_i + eps / C sum_i sum_c w[c] nll_ic] / sum_i w[y_i].
  const double eps = 0.2;
  double numerator = 0;
  for (size_t i = 0; i < 2; ++i) {
    double all = 0;
    for (size_t c = 0; c < 3; ++c) all += w[c] * nll(kRows[i], c);
    const size_t y = static_cast<size_t>(kTargets[i]);
    numerator += (1 - eps) * w[y] * nll(kRows[i], y) + eps / 3 * all;
  }
  EXPECT_NEAR(classification_loss(loss_logits(), labels_of(kTargets), eps, weights).item<double>(),
              numerator / (w[0] + w[2]), 1e-12);
}

TEST(Loss, BadLabelsAreClearErrors) {
  try {
    classification_loss(loss_logits(), labels_of({0, 3}));
    FAIL() << "no error for label 3 with 3 classes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("label 3 is outside [0, 3)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(classification_loss(loss_logits(), labels_of({0, 1}), 0.0, torch::ones({4})), Error);
}

// ---------------------------------------------------------------------------------------------------
// Metrics

TEST(Metrics, ConfusionPrecisionRecallF1OverBatches) {
  // true:      0 0 0 1 1 2 2 2 2 1
  // predicted: 0 1 0 1 2 2 2 0 2 1
  // confusion [[2,1,0],[0,2,1],[1,0,3]]; column sums 3,3,4.
  MetricsAccumulator acc;
  acc.add(one_hot_logits({0, 1, 0, 1}, 3), labels_of({0, 0, 0, 1}), /*batch_loss=*/1.0);
  acc.add(one_hot_logits({2, 2, 2, 0, 2, 1}, 3), labels_of({1, 2, 2, 2, 2, 1}), 2.0);
  const Metrics m = acc.result();
  EXPECT_EQ(m.samples, 10);
  EXPECT_NEAR(m.loss, 1.6, 1e-12);  // (4 * 1 + 6 * 2) / 10
  EXPECT_NEAR(m.accuracy, 0.7, 1e-12);
  EXPECT_FALSE(m.top5.has_value());
  const std::vector<std::vector<int64_t>> confusion = {{2, 1, 0}, {0, 2, 1}, {1, 0, 3}};
  EXPECT_EQ(m.confusion, confusion);
  const std::vector<int64_t> support = {3, 3, 4};
  EXPECT_EQ(m.support, support);
  const double p[3] = {2.0 / 3, 2.0 / 3, 3.0 / 4}, r[3] = {2.0 / 3, 2.0 / 3, 3.0 / 4};
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(m.precision[k], p[k], 1e-12) << "class " << k;
    EXPECT_NEAR(m.recall[k], r[k], 1e-12) << "class " << k;
    EXPECT_NEAR(m.f1[k], 2 * p[k] * r[k] / (p[k] + r[k]), 1e-12) << "class " << k;
  }
  EXPECT_NEAR(m.macro_f1, (2.0 / 3 + 2.0 / 3 + 0.75) / 3, 1e-12);
}

// 25,000 classes (a 330 KB CSV of distinct labels) once took a 25,000 x 25,000 table per batch (5 GB): the
// counts are now one cell per sample, and the dense matrix is kept, shown and drawn up to 200 classes only.
TEST(Metrics, ManyClassesKeepPerClassFiguresWithoutAConfusionTable) {
  constexpr int64_t kClasses = 25000;
  MetricsAccumulator acc;
  acc.add(one_hot_logits({0, 7, 24999, 7}, kClasses), labels_of({0, 7, 24999, 3}), 1.0);
  const Metrics m = acc.result();
  EXPECT_EQ(m.num_classes, kClasses);
  EXPECT_TRUE(m.confusion.empty());
  ASSERT_EQ(m.support.size(), size_t(kClasses));
  EXPECT_EQ(m.support[3], 1);
  EXPECT_EQ(m.support[7], 1);
  EXPECT_NEAR(m.accuracy, 0.75, 1e-12);
  EXPECT_NEAR(m.precision[7], 0.5, 1e-12);  // predicted twice, right once
  EXPECT_NEAR(m.recall[24999], 1.0, 1e-12);
  const std::string report = metrics_report(m);
  EXPECT_NE(report.find("confusion matrix left out: 25000 classes, more than the 200"), std::string::npos);
  try {
    write_confusion_matrix_svg("/tmp/never_written.svg", m);
    ADD_FAILURE() << "a picture of 25,000 classes was drawn";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("25000 classes"), std::string::npos) << e.what();
  }
  // 200 classes still get the whole matrix.
  MetricsAccumulator small;
  small.add(one_hot_logits({5, 199}, kMaxConfusionClasses), labels_of({5, 3}), 1.0);
  const Metrics shown = small.result();
  ASSERT_EQ(shown.confusion.size(), size_t(kMaxConfusionClasses));
  EXPECT_EQ(shown.confusion[3][199], 1);
  EXPECT_EQ(shown.confusion[5][5], 1);
  // Past graft's class limit: refused by name.
  try {
    MetricsAccumulator too_many(kMaxClasses + 1);
    ADD_FAILURE() << "no error for " << kMaxClasses + 1 << " classes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than graft's limit of 100000"), std::string::npos) << e.what();
  }
}

TEST(Metrics, UndefinedRatiosAreZeroNotNan) {
  // Class 3 is never true nor predicted; class 2 is true once but never predicted.
  MetricsAccumulator acc(4);
  acc.add(one_hot_logits({0, 1, 1}, 4), labels_of({0, 1, 2}), 0.5);
  const Metrics m = acc.result();
  for (int k = 0; k < 4; ++k) {
    EXPECT_FALSE(std::isnan(m.precision[k]) || std::isnan(m.recall[k]) || std::isnan(m.f1[k])) << k;
  }
  EXPECT_EQ(m.precision[2], 0.0);
  EXPECT_EQ(m.recall[2], 0.0);
  EXPECT_EQ(m.f1[3], 0.0);
  EXPECT_NEAR(m.precision[1], 0.5, 1e-12);
  EXPECT_NEAR(m.macro_f1, (1.0 + 2.0 / 3 + 0 + 0) / 4, 1e-12);  // f1[1] = 2 * 0.5 * 1 / 1.5
}

TEST(Metrics, Top5WhenMoreThanFiveClasses) {
  // 7 classes, scores 6..0 by column; the label sits at rank 1, rank 5 and rank 6.
  torch::Tensor logits = torch::arange(6, -1, -1, torch::kFloat).repeat({3, 1});
  MetricsAccumulator acc;
  acc.add(logits, labels_of({0, 4, 5}), 0.0);
  const Metrics m = acc.result();
  ASSERT_TRUE(m.top5.has_value());
  EXPECT_NEAR(*m.top5, 2.0 / 3, 1e-12);
  EXPECT_NEAR(m.accuracy, 1.0 / 3, 1e-12);
}

TEST(Metrics, ReportNamesClassesAndShowsTheMatrix) {
  MetricsAccumulator acc;
  acc.add(one_hot_logits({0, 1, 0, 1}, 3), labels_of({0, 0, 0, 1}), 1.0);
  const std::string report = metrics_report(acc.result(), {"cat", "dog", "bird"});
  for (const char* needle : {"precision", "recall", "support", "cat", "dog", "bird", "macro avg",
                             "confusion matrix (rows: true class, columns: predicted class)"})
    EXPECT_NE(report.find(needle), std::string::npos) << needle << " missing from\n" << report;
}

// ---------------------------------------------------------------------------------------------------
// Optimisers

namespace {
// Runs `steps` SGD steps on loss = sum(p * g), whose gradient is the constant g.
torch::Tensor sgd_steps(OptimizerConfig config, int steps) {
  torch::Tensor p = torch::tensor({1.0, -2.0}, torch::kDouble).requires_grad_();
  const torch::Tensor g = torch::tensor({0.5, 1.0}, torch::kDouble);
  GroupedOptimizer opt = build_optimizer(config, {{{p}, 1.0, "all"}});
  for (int i = 0; i < steps; ++i) {
    opt.optimizer->zero_grad();
    (p * g).sum().backward();
    opt.optimizer->step();
  }
  return p.detach();
}
}  // namespace

TEST(Optim, SgdMomentumMatchesHandComputation) {
  OptimizerConfig c;
  c.name = "sgd";
  c.lr = 0.1;
  c.momentum = 0.9;
  // Step 1: b = g, p -= 0.1 g. Step 2: b = 0.9 g + g = 1.9 g, p -= 0.19 g. Total: p0 - 0.29 g.
  torch::Tensor p = sgd_steps(c, 2);
  EXPECT_NEAR(p[0].item<double>(), 1.0 - 0.29 * 0.5, 1e-12);
  EXPECT_NEAR(p[1].item<double>(), -2.0 - 0.29 * 1.0, 1e-12);
  // Nesterov: update = g + 0.9 b. Step 1: 1.9 g; step 2: b = 1.9 g, update = g + 1.71 g = 2.71 g.
  c.nesterov = true;
  p = sgd_steps(c, 2);
  EXPECT_NEAR(p[0].item<double>(), 1.0 - 0.461 * 0.5, 1e-12);
}

TEST(Optim, AdamWFirstStep) {
  // AdamW: p *= 1 - lr * wd, then p -= lr * m_hat / (sqrt(v_hat) + eps); on step 1 m_hat = g, v_hat = g^2.
  torch::Tensor p = torch::tensor({2.0}, torch::kDouble).requires_grad_();
  OptimizerConfig c;
  c.name = "adamw";
  c.lr = 0.1;  // weight_decay unset: PyTorch's 0.01
  GroupedOptimizer opt = build_optimizer(c, {{{p}, 1.0, "all"}});
  (p * 0.5).sum().backward();
  opt.optimizer->step();
  EXPECT_NEAR(p.item<double>(), 2.0 * (1 - 0.1 * 0.01) - 0.1 * 0.5 / (0.5 + 1e-8), 1e-12);
}

TEST(Optim, GroupMultipliersGiveDiscriminativeRates) {
  torch::Tensor backbone = torch::zeros({1}, torch::requires_grad()),
                head = torch::zeros({1}, torch::requires_grad());
  OptimizerConfig c;
  c.name = "sgd";
  c.lr = 0.1;
  c.momentum = 0.0;
  GroupedOptimizer opt = build_optimizer(c, {{{backbone}, 0.1, "backbone"}, {{head}, 1.0, "head"}});
  ASSERT_EQ(opt.base_lrs.size(), 2u);
  EXPECT_NEAR(opt.base_lrs[0], 0.01, 1e-15);
  EXPECT_NEAR(opt.base_lrs[1], 0.1, 1e-15);
  (backbone + head).sum().backward();  // gradient 1 for both
  opt.optimizer->step();
  EXPECT_NEAR(backbone.item<double>(), -0.01, 1e-7);
  EXPECT_NEAR(head.item<double>(), -0.1, 1e-7);
}

TEST(Optim, FrozenParametersNeverEnterTheOptimizer) {
  TinyMlp model;
  for (auto& p : model->fc1->parameters()) p.set_requires_grad(false);
  OptimizerConfig c;
  GroupedOptimizer opt = build_optimizer(
      c, {{model->fc1->parameters(), 0.1, "backbone"}, {model->fc2->parameters(), 1.0, "head"}});
  ASSERT_EQ(opt.optimizer->param_groups().size(), 1u) << "the wholly frozen group must be dropped";
  EXPECT_EQ(opt.group_names[0], "head");
  for (const auto& p : opt.optimizer->param_groups()[0].params()) {
    EXPECT_TRUE(p.requires_grad());
    for (const auto& frozen : model->fc1->parameters())
      EXPECT_NE(p.unsafeGetTensorImpl(), frozen.unsafeGetTensorImpl());
  }
  // A partly frozen group keeps only its trainable tensors.
  model->fc2->bias.set_requires_grad(false);
  opt = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
  ASSERT_EQ(opt.optimizer->param_groups()[0].params().size(), 1u);
  EXPECT_EQ(opt.optimizer->param_groups()[0].params()[0].unsafeGetTensorImpl(),
            model->fc2->weight.unsafeGetTensorImpl());
  // Everything frozen: a clear error.
  model->fc2->weight.set_requires_grad(false);
  EXPECT_THROW(build_optimizer(c, {{model->parameters(), 1.0, "all"}}), Error);
}

TEST(Optim, RejectsBadConfigurations) {
  torch::Tensor p = torch::zeros({1}, torch::requires_grad());
  OptimizerConfig c;
  c.name = "rmsprop";
  EXPECT_THROW(build_optimizer(c, {{{p}, 1.0, ""}}), Error);
  c.name = "sgd";
  EXPECT_THROW(build_optimizer(c, {{{p}, 1.0, "a"}, {{p}, 1.0, "b"}}), Error);  // p in two groups
  c.momentum = 0.0;
  c.nesterov = true;
  EXPECT_THROW(build_optimizer(c, {{{p}, 1.0, ""}}), Error);
}

// ---------------------------------------------------------------------------------------------------
// Early stopping rule

TEST(Trainer, EarlyStoppingRuleOnScriptedSequence) {
  EarlyStoppingConfig c;
  c.enabled = true;
  c.monitor = "val_loss";  // auto: min
  c.patience = 2;
  c.min_delta = 0.01;
  EarlyStopping rule(c);
  EXPECT_TRUE(rule.update(1.0));     // first value
  EXPECT_TRUE(rule.update(0.95));    // < 1.0 - 0.01
  EXPECT_FALSE(rule.update(0.945));  // not below 0.94: wait 1
  EXPECT_FALSE(rule.should_stop());
  EXPECT_FALSE(rule.update(0.96));  // wait 2
  EXPECT_TRUE(rule.should_stop());
  EXPECT_DOUBLE_EQ(rule.best(), 0.95);

  c.monitor = "val_accuracy";  // auto: max
  c.patience = 1;
  c.min_delta = 0.0;
  EarlyStopping accuracy(c);
  EXPECT_FALSE(accuracy.minimise());
  EXPECT_TRUE(accuracy.update(0.5));
  EXPECT_TRUE(accuracy.update(0.6));
  EXPECT_FALSE(accuracy.update(0.6));  // equal is no improvement
  EXPECT_TRUE(accuracy.should_stop());
  EXPECT_FALSE(accuracy.update(std::nan("")));  // NaN never improves

  c.monitor = "val_loss";
  c.patience = 0;  // Keras: stop at the first epoch without improvement, never after an improvement
  EarlyStopping impatient(c);
  EXPECT_TRUE(impatient.update(1.0));
  EXPECT_FALSE(impatient.should_stop());
  EXPECT_FALSE(impatient.update(1.0));
  EXPECT_TRUE(impatient.should_stop());

  c.monitor = "val_speed";
  EXPECT_THROW(EarlyStopping{c}, Error);
}

// ---------------------------------------------------------------------------------------------------
// Trainer

TEST(Trainer, TinyMlpLearnsSeparableBlobs) {
  TempDir dir("fit");
  Data data;
  std::ostringstream log;
  torch::manual_seed(3);
  TinyMlp model;
  TrainConfig config = base_config(log);
  config.epochs = 8;
  config.out_dir = dir.str();
  auto trainer = make_trainer(model, config);
  const TrainHistory history = trainer->fit(*data.train, data.val.get());
  ASSERT_EQ(history.epochs.size(), 8u);
  const EpochResult& last = history.epochs.back();
  ASSERT_TRUE(last.val_accuracy.has_value());
  EXPECT_GT(*last.val_accuracy, 0.95) << log.str();
  EXPECT_LT(*last.val_loss, history.epochs.front().train_loss);
  EXPECT_EQ(last.global_step, 8 * 8);  // 256 samples / 32 per batch * 8 epochs

  const Metrics eval = trainer->evaluate(*data.val);
  EXPECT_EQ(eval.samples, 128);
  EXPECT_GT(eval.accuracy, 0.95);

  // metrics.csv: the header and one flushed row per epoch.
  std::istringstream csv(read_file(dir / "metrics.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_top5,lr,seconds");
  int rows = 0;
  while (std::getline(csv, line)) {
    ++rows;
    EXPECT_EQ(line.rfind(std::to_string(rows) + ",", 0), 0u) << line;
  }
  EXPECT_EQ(rows, 8);
  for (const char* file : {"checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors",
                           "checkpoints/last/trainer.json", "checkpoints/best/trainer.json",
                           "training_curves.svg", "confusion_matrix.svg", "val_report.txt"})
    EXPECT_TRUE(fs::exists(dir / file)) << file;
  EXPECT_NE(read_file(dir / "confusion_matrix.svg").find("north-east"), std::string::npos);
  // Logs on a non-terminal stay short: at most ~10 bar lines per pass plus the summary.
  const std::string text = log.str();
  EXPECT_NE(text.find("epoch 8/8"), std::string::npos);
  EXPECT_LT(std::count(text.begin(), text.end(), '\n'), 8 * 25);
}

TEST(Trainer, SameSeedGivesBitIdenticalWeights) {
  Data data;
  std::ostringstream log;
  auto run = [&]() {
    torch::manual_seed(5);
    TinyMlp model;
    TrainConfig config = base_config(log);
    config.epochs = 3;
    make_trainer(model, config)->fit(*data.train, data.val.get());
    return model;
  };
  TinyMlp a = run(), b = run();
  expect_same_weights(*a, *b);
}

namespace {
// Trains 4 epochs in one go and, in another folder, 2 epochs then a resumed Trainer for the rest; the
// final weights must be identical. `configure` adjusts the config (optimiser, schedule, callbacks).
void check_resume_equivalence(const std::string& name,
                              const std::function<void(TinyMlp&, TrainConfig&)>& configure) {
  TempDir whole(name + "_whole"), parts(name + "_parts");
  Data data;
  std::ostringstream log;
  auto make = [&](const std::string& out, bool resume, uint64_t init_seed, bool stop_after_2) {
    torch::manual_seed(init_seed);
    TinyMlp model;
    TrainConfig config = base_config(log);
    config.out_dir = out;
    config.resume = resume;
    configure(model, config);
    if (stop_after_2)
      config.on_epoch_end.push_back([](Trainer&, EpochResult& r) { r.stop_requested = r.epoch == 2; });
    return std::make_pair(model, make_trainer(model, config));
  };
  auto [uninterrupted, t1] = make(whole.str(), false, 21, false);
  const TrainHistory h1 = t1->fit(*data.train, data.val.get());
  ASSERT_EQ(h1.epochs.size(), 4u);

  auto [first_half, t2] = make(parts.str(), false, 21, true);
  EXPECT_EQ(t2->fit(*data.train, data.val.get()).epochs.size(), 2u);
  // A new process would build a fresh model (other random weights) and resume.
  auto [resumed, t3] = make(parts.str(), true, 999, false);
  const TrainHistory h3 = t3->fit(*data.train, data.val.get());
  ASSERT_EQ(h3.epochs.size(), 4u) << log.str();
  EXPECT_NE(log.str().find("resumed from"), std::string::npos);
  expect_same_weights(*uninterrupted, *resumed);
  EXPECT_EQ(h1.epochs.back().train_loss, h3.epochs.back().train_loss);
  EXPECT_EQ(h1.epochs.back().val_loss, h3.epochs.back().val_loss);
  EXPECT_EQ(read_file(whole / "metrics.csv").substr(0, 40), read_file(parts / "metrics.csv").substr(0, 40));
  std::string csv = read_file(parts / "metrics.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5) << csv;  // header + 4 epochs, none repeated
}
}  // namespace

TEST(Trainer, ResumeGivesTheSameWeightsAsAnUninterruptedRunAdamW) {
  check_resume_equivalence("resume_adamw", [](TinyMlp&, TrainConfig&) {});
}

TEST(Trainer, ResumeGivesTheSameWeightsAsAnUninterruptedRunSgdNesterovStep) {
  check_resume_equivalence("resume_sgd", [](TinyMlp&, TrainConfig& c) {
    c.optimizer.name = "sgd";
    c.optimizer.lr = 0.05;
    c.optimizer.nesterov = true;
    c.optimizer.weight_decay = 1e-4;
    c.schedule.name = "step";
    c.schedule.step_size = 1;
    c.schedule.gamma = 0.7;
    c.class_weights = {1.0, 2.0, 1.0, 0.5};
  });
}

TEST(Trainer, ResumeAfterATwoStageUnfreezeKeepsTheNewGroups) {
  // Stage 1 (epochs 1-2): backbone fc1 frozen, head fc2 trains. At the end of epoch 2 a callback
  // unfreezes fc1 and regroups with a 10x lower backbone rate. The interrupted run stops right after
  // that callback; the resumed one must continue with the stage-2 optimiser.
  auto initial_fc1 = std::make_shared<torch::Tensor>();
  check_resume_equivalence("resume_two_stage", [initial_fc1](TinyMlp& model, TrainConfig& c) {
    for (auto& p : model->fc1->parameters()) p.set_requires_grad(false);
    *initial_fc1 = model->fc1->weight.detach().clone();
    c.param_groups = {{model->fc1->parameters(), 0.1, "backbone"}, {model->fc2->parameters(), 1.0, "head"}};
    TinyMlp captured = model;
    c.on_epoch_end.push_back([captured](Trainer& trainer, EpochResult& r) mutable {
      if (r.epoch != 2) return;
      EXPECT_EQ(trainer.optimizer().optimizer->param_groups().size(), 1u);
      for (auto& p : captured->fc1->parameters()) p.set_requires_grad(true);
      trainer.set_param_groups(
          {{captured->fc1->parameters(), 0.1, "backbone"}, {captured->fc2->parameters(), 1.0, "head"}});
      EXPECT_EQ(trainer.optimizer().optimizer->param_groups().size(), 2u);
    });
  });
}

// Mixed precision (bf16 autocast around forward and loss) resumes as exactly as float32 does; a resume
// asked at another precision continues at the checkpoint's, and says so.
TEST(Trainer, ResumeAtBf16RepeatsTheRunAndKeepsItsPrecision) {
  check_resume_equivalence("resume_bf16",
                           [](TinyMlp&, TrainConfig& c) { c.precision = Precision::kBFloat16; });
  TempDir dir("resume_bf16_asked_fp32");
  Data data;
  std::ostringstream log;
  {
    torch::manual_seed(3);
    TinyMlp model;
    TrainConfig config = base_config(log);
    config.out_dir = dir.str();
    config.precision = Precision::kBFloat16;
    config.on_epoch_end.push_back([](Trainer&, EpochResult& r) { r.stop_requested = r.epoch == 1; });
    make_trainer(model, config)->fit(*data.train, data.val.get());
  }
  EXPECT_NE(read_file(dir / "checkpoints" / "last" / "trainer.json").find("\"precision\": \"bf16\""),
            std::string::npos);
  TinyMlp model;
  TrainConfig config = base_config(log);
  config.out_dir = dir.str();
  config.resume = true;
  auto trainer = make_trainer(model, config);
  trainer->fit(*data.train, data.val.get());
  EXPECT_NE(log.str().find("resume: the checkpoint was trained at --precision bf16, continuing at it (config "
                           "says fp32)"),
            std::string::npos)
      << log.str();
  EXPECT_EQ(trainer->config().precision, Precision::kBFloat16);
}

TEST(Trainer, FrozenLayersStayUnchanged) {
  Data data;
  std::ostringstream log;
  torch::manual_seed(4);
  TinyMlp model;
  for (auto& p : model->fc1->parameters()) p.set_requires_grad(false);
  const torch::Tensor before = model->fc1->weight.detach().clone();
  const torch::Tensor head_before = model->fc2->weight.detach().clone();
  TrainConfig config = base_config(log);
  config.epochs = 2;
  make_trainer(model, config)->fit(*data.train);
  EXPECT_TRUE(torch::equal(before, model->fc1->weight));
  EXPECT_FALSE(torch::equal(head_before, model->fc2->weight));
}

TEST(Trainer, EarlyStoppingStopsSaysSoAndKeepsTheBestCheckpoint) {
  TempDir dir("early");
  Data data;
  std::ostringstream log;
  torch::manual_seed(6);
  TinyMlp model;
  TrainConfig config = base_config(log);
  config.epochs = 10;
  config.optimizer.lr = 0.0;  // the weights never move: val_loss is the same every epoch
  config.early_stopping.enabled = true;
  config.early_stopping.patience = 2;
  config.out_dir = dir.str();
  const TrainHistory history = make_trainer(model, config)->fit(*data.train, data.val.get());
  EXPECT_TRUE(history.stopped_early);
  ASSERT_EQ(history.epochs.size(), 3u);
  EXPECT_EQ(history.best_epoch, 1);
  EXPECT_NE(log.str().find("early stopping after epoch 3: val_loss has not improved"), std::string::npos)
      << log.str();
  EXPECT_EQ(read_trainer_state(*find_checkpoint((dir / "checkpoints/best").string())).epoch, 1);
  EXPECT_EQ(read_trainer_state(*find_checkpoint((dir / "checkpoints/last").string())).epoch, 3);
  // Resuming a run that stopped early does nothing.
  config.resume = true;
  TinyMlp again;
  const TrainHistory resumed = make_trainer(again, config)->fit(*data.train, data.val.get());
  EXPECT_EQ(resumed.epochs.size(), 3u);
  EXPECT_NE(log.str().find("already stopped early"), std::string::npos);
}

TEST(Trainer, NanLossStopsWithAMessageAndKeepsTheLastGoodCheckpoint) {
  TempDir dir("nan");
  Data data;
  std::ostringstream log;
  torch::manual_seed(8);
  TinyMlp model;
  TrainConfig config = base_config(log);
  config.out_dir = dir.str();
  auto poisoned = std::make_shared<bool>(false);
  config.on_epoch_end.push_back([poisoned](Trainer&, EpochResult& r) { *poisoned = r.epoch == 1; });
  Trainer trainer(
      model.ptr(),
      [model, poisoned](const torch::Tensor& x) mutable {
        torch::Tensor logits = model->forward(x);
        return *poisoned ? logits * std::nan("") : logits;
      },
      config);
  try {
    trainer.fit(*data.train, data.val.get());
    FAIL() << "a NaN loss did not stop the run";
  } catch (const NonFiniteLoss& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("loss is nan at epoch 2 step 9; lower --lr, enable --grad-clip, check the data"),
              std::string::npos)
        << message;
  }
  const auto last = find_checkpoint((dir / "checkpoints/last").string());
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(read_trainer_state(*last).epoch, 1);
  for (const auto& item : read_safetensors((fs::path(*last) / "model.safetensors").string()))
    EXPECT_TRUE(torch::isfinite(item.second).all().item<bool>()) << item.first;
}

TEST(Trainer, OverflowingWeightsWithAFiniteLossStopAndKeepTheLastGoodCheckpoint) {
  // At a huge rate BatchNorm's running_var can overflow while the loss stays finite; here a buffer the
  // loss never reads is set to inf during epoch 2. Epoch 2 must not become a checkpoint.
  TempDir dir("overflow");
  Data data;
  std::ostringstream log;
  torch::manual_seed(8);
  TinyMlp model;
  model->register_buffer("running_stat", torch::ones({3}));
  TrainConfig config = base_config(log);
  config.out_dir = dir.str();
  auto poisoned = std::make_shared<bool>(false);
  config.on_epoch_end.push_back([poisoned](Trainer&, EpochResult& r) { *poisoned = r.epoch == 1; });
  Trainer trainer(
      model.ptr(),
      [model, poisoned](const torch::Tensor& x) mutable {
        if (*poisoned) {
          torch::NoGradGuard no_grad;
          model->named_buffers()["running_stat"][1] = std::numeric_limits<float>::infinity();
        }
        return model->forward(x);
      },
      config);
  try {
    trainer.fit(*data.train, data.val.get());
    FAIL() << "an inf buffer did not stop the run";
  } catch (const NonFiniteLoss& e) {
    const std::string message = e.what();
    const std::string expected =
        "buffer 'running_stat' is inf after epoch 2 (the weights overflowed, though the loss stayed finite); "
        "lower --lr, enable --grad-clip, check the data (the last good checkpoint, epoch 1, is in " +
        (dir / "checkpoints" / "last").string() + ")";
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
  const auto last = find_checkpoint((dir / "checkpoints/last").string());
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(read_trainer_state(*last).epoch, 1);
  for (const auto& item : read_safetensors((fs::path(*last) / "model.safetensors").string()))
    EXPECT_TRUE(torch::isfinite(item.second).all().item<bool>()) << item.first;
}

TEST(Trainer, ResumeRewritesBestWhenTheRunDiedBetweenLastAndBest) {
  // A run killed after writing checkpoints/last of an improving epoch but before checkpoints/best: the
  // resumed run must end with the uninterrupted run's best, not the older one left on disk.
  TempDir whole("best_gap_whole"), parts("best_gap_parts"), older("best_gap_older");
  Data data;
  std::ostringstream log;
  auto fit = [&](const std::string& out, int64_t epochs, bool resume) {
    torch::manual_seed(21);
    TinyMlp model;
    TrainConfig config = base_config(log);
    config.out_dir = out;
    config.epochs = 4;
    config.resume = resume;
    config.on_epoch_end.push_back(
        [epochs](Trainer&, EpochResult& r) { r.stop_requested = r.epoch == epochs; });
    return make_trainer(model, config)->fit(*data.train, data.val.get());
  };
  const TrainHistory reference = fit(whole.str(), 4, false);
  ASSERT_TRUE(reference.epochs[1].improved) << "the test needs epoch 2 to improve";
  fit(older.str(), 1, false);
  fit(parts.str(), 2, false);
  // The state a kill between the two writes of epoch 2 leaves: best is epoch 1's.
  fs::remove_all(parts / "checkpoints/best");
  fs::copy(older / "checkpoints/best", parts / "checkpoints/best", fs::copy_options::recursive);
  ASSERT_EQ(read_trainer_state((parts / "checkpoints/best").string()).epoch, 1);

  fit(parts.str(), 4, true);
  EXPECT_NE(log.str().find("checkpoints/best is older than epoch 2, the best so far"), std::string::npos)
      << log.str();
  const TrainerState best_whole = read_trainer_state((whole / "checkpoints/best").string());
  const TrainerState best_parts = read_trainer_state((parts / "checkpoints/best").string());
  EXPECT_EQ(best_parts.epoch, best_whole.epoch);
  TinyMlp a, b;
  load_checkpoint_model((whole / "checkpoints/best").string(), *a);
  load_checkpoint_model((parts / "checkpoints/best").string(), *b);
  expect_same_weights(*a, *b);
}

// ---------------------------------------------------------------------------------------------------
// Checkpoints

namespace {
TrainerState state_at(int64_t epoch) {
  TrainerState s;
  s.epoch = epoch;
  s.global_step = epoch * 10;
  s.has_best = true;
  s.best_metric = 0.125 * static_cast<double>(epoch);
  s.rng_state = {1, 2, 3, 254};
  EpochResult r;
  r.epoch = epoch;
  r.val_loss = 0.5;
  s.history.push_back(r);
  s.groups.push_back({"head", 1.0, {"fc2.weight"}});
  return s;
}
}  // namespace

TEST(Checkpoint, RoundTrip) {
  TempDir dir("ckpt_roundtrip");
  torch::manual_seed(1);
  TinyMlp model;
  const std::string last = (dir / "last").string();
  save_checkpoint(last, *model, nullptr, state_at(3));
  ASSERT_EQ(find_checkpoint(last), last);
  const TrainerState s = read_trainer_state(last);
  EXPECT_EQ(s.epoch, 3);
  EXPECT_EQ(s.global_step, 30);
  EXPECT_EQ(s.best_metric, 0.375);
  EXPECT_EQ(s.rng_state, (std::vector<uint8_t>{1, 2, 3, 254}));
  ASSERT_EQ(s.history.size(), 1u);
  EXPECT_EQ(s.history[0].val_loss, 0.5);
  EXPECT_FALSE(s.history[0].val_top5.has_value());
  EXPECT_EQ(s.groups[0].params, std::vector<std::string>{"fc2.weight"});
  TinyMlp other;
  load_checkpoint_model(last, *other);
  expect_same_weights(*model, *other);
}

// A checkpoint's files are tied by a save id (#14.18): a model or optimiser file copied in from another
// checkpoint was loaded as if it belonged; now it is refused naming both files.
TEST(Checkpoint, FilesCopiedInFromAnotherCheckpointAreRefused) {
  TempDir dir("ckpt_tied");
  torch::manual_seed(1);
  TinyMlp model;
  OptimizerConfig c;
  c.name = "adam";
  GroupedOptimizer opt = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  save_checkpoint(a, *model, opt.optimizer.get(), state_at(1));
  save_checkpoint(b, *model, opt.optimizer.get(), state_at(2));
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    SCOPED_TRACE(file);
    const fs::path target = fs::path(a) / file;
    const std::string kept = target.string() + ".kept";
    fs::copy_file(target, kept);
    fs::copy_file(fs::path(b) / file, target, fs::copy_options::overwrite_existing);
    try {
      TinyMlp other;
      GroupedOptimizer fresh = build_optimizer(c, {{other->parameters(), 1.0, "all"}});
      if (std::string(file) == "model.safetensors")
        load_checkpoint_model(a, *other);
      else
        load_checkpoint_optimizer(a, *other, *fresh.optimizer);
      ADD_FAILURE() << "a file of another checkpoint was loaded";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("trainer.json is of save"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("copied in from another checkpoint"), std::string::npos)
          << e.what();
    }
    fs::rename(kept, target);
  }
  TinyMlp other;
  EXPECT_NO_THROW(load_checkpoint_model(a, *other));  // its own files load
}

TEST(Checkpoint, CrashMidWriteLeavesThePreviousCheckpointLoadable) {
  TempDir dir("ckpt_crash");
  TinyMlp model;
  const std::string last = (dir / "last").string();
  save_checkpoint(last, *model, nullptr, state_at(1));
  save_checkpoint(last, *model, nullptr, state_at(2));
  EXPECT_EQ(read_trainer_state(*find_checkpoint(last)).epoch, 2);

  // 1. A crash while writing the next one: a partial temporary folder beside it.
  fs::create_directories(dir / "last.tmp-a1b2c3");
  std::ofstream(dir / "last.tmp-a1b2c3" / "model.safetensors") << "trunc";
  std::ofstream(dir / "last.tmp-a1b2c3" / "trainer.json") << "{\"format\": \"graft-che";
  EXPECT_EQ(find_checkpoint(last), last);

  // 2. A crash between the two renames of the fallback scheme: no `last`, the previous one at
  //    last.old-*, a complete-looking temporary that must still not be trusted.
  fs::rename(last, dir / "last.old-x9y8z7");
  const auto found = find_checkpoint(last);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(fs::path(*found).filename(), "last.old-x9y8z7");
  EXPECT_EQ(read_trainer_state(*found).epoch, 2);
  TinyMlp loaded;
  load_checkpoint_model(*found, *loaded);
  expect_same_weights(*model, *loaded);

  // 3. A truncated file inside the newest folder: its recorded size no longer matches; the complete
  //    older one is chosen.
  save_checkpoint(last, *model, nullptr, state_at(3));  // also cleans the stale tmp/old folders
  EXPECT_FALSE(fs::exists(dir / "last.tmp-a1b2c3"));
  EXPECT_FALSE(fs::exists(dir / "last.old-x9y8z7"));
  fs::copy(last, dir / "last.old-q1w2e3", fs::copy_options::recursive);
  fs::resize_file(fs::path(last) / "model.safetensors", 100);
  EXPECT_EQ(fs::path(*find_checkpoint(last)).filename(), "last.old-q1w2e3");

  // 4. Nothing complete at all: no checkpoint, and a Trainer refuses to resume from it.
  fs::remove_all(dir / "last.old-q1w2e3");
  EXPECT_FALSE(find_checkpoint(last).has_value());
}

TEST(Checkpoint, FallbackWithoutRenameExchange) {
  // The path taken where renameat2(RENAME_EXCHANGE) is unsupported: old aside, new in, old removed.
  TempDir dir("ckpt_fallback");
  TinyMlp model;
  const std::string last = (dir / "last").string();
  ::setenv("GRAFT_NO_RENAME_EXCHANGE", "1", 1);
  save_checkpoint(last, *model, nullptr, state_at(1));
  save_checkpoint(last, *model, nullptr, state_at(2));
  ::unsetenv("GRAFT_NO_RENAME_EXCHANGE");
  EXPECT_EQ(read_trainer_state(*find_checkpoint(last)).epoch, 2);
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.str())) ++entries, (void)entry;
  EXPECT_EQ(entries, 1) << "temporary or old folders left behind";
}

// A trainer.json whose counts are out of range (damaged, or not graft's) is refused by field: "epoch": -5
// was read and printed as "resumed after epoch -5" (#14.18).
TEST(Checkpoint, FieldsOutOfRangeAreRefusedByName) {
  TempDir dir("ckpt_ranges");
  TinyMlp model;
  const std::string last = (dir / "last").string();
  save_checkpoint(last, *model, nullptr, state_at(2));
  const std::string state_file = *find_checkpoint(last) + "/trainer.json";
  const nlohmann::json good = nlohmann::json::parse(std::ifstream(state_file));
  for (const auto& [field, value, expected] :
       std::vector<std::tuple<std::string, nlohmann::json, std::string>>{
           {"epoch", -5, "field 'epoch' is -5"},
           {"best_epoch", 3, "field 'best_epoch' is 3 (expected an epoch in 0..2"},
           {"global_step", -1, "field 'global_step' is -1"},
           {"epochs_without_improvement", 7, "field 'epochs_without_improvement' is 7"}}) {
    nlohmann::json bad = good;
    bad[field] = value;
    std::ofstream(state_file) << bad.dump();
    try {
      read_trainer_state(*find_checkpoint(last));
      ADD_FAILURE() << field << " " << value << " was read";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
  nlohmann::json bad_group = good;
  bad_group["groups"][0]["lr_mult"] = -1.0;
  std::ofstream(state_file) << bad_group.dump();
  EXPECT_THROW(read_trainer_state(*find_checkpoint(last)), FormatError);
  std::ofstream(state_file) << good.dump();
  EXPECT_EQ(read_trainer_state(*find_checkpoint(last)).epoch, 2);
}

TEST(Checkpoint, ResumeFromAnIncompleteCheckpointIsAClearError) {
  TempDir dir("ckpt_incomplete");
  fs::create_directories(dir / "checkpoints" / "last");
  std::ofstream(dir / "checkpoints" / "last" / "trainer.json") << "{";
  Data data;
  std::ostringstream log;
  TinyMlp model;
  TrainConfig config = base_config(log);
  config.out_dir = dir.str();
  config.resume = true;
  try {
    make_trainer(model, config)->fit(*data.train, data.val.get());
    FAIL() << "resumed from a broken checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is incomplete"), std::string::npos) << e.what();
  }
}

// A full disk (a file-size limit standing in for it) while writing optimizer.safetensors, the second
// file: a clear error naming the file and the limit, the previous checkpoint untouched, no temporaries.
TEST(Checkpoint, FullDiskWhileWritingTheOptimizerKeepsThePreviousCheckpoint) {
  TempDir dir("ckpt_full");
  torch::manual_seed(3);
  auto model = torch::nn::Linear(64, 64);
  OptimizerConfig c;
  c.name = "adam";  // two moments per parameter: optimizer.safetensors is about twice model.safetensors
  GroupedOptimizer opt = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
  model->forward(torch::randn({4, 64})).sum().backward();
  opt.optimizer->step();
  const std::string last = (dir / "last").string();
  save_checkpoint(last, *model, opt.optimizer.get(), state_at(1));
  const uintmax_t model_bytes = fs::file_size(fs::path(last) / "model.safetensors");
  const uintmax_t optimizer_bytes = fs::file_size(fs::path(last) / "optimizer.safetensors");
  ASSERT_GT(optimizer_bytes, model_bytes + 4096);
  const std::string before = read_file(fs::path(last) / "optimizer.safetensors");

  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = ::signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG
  rlimit limited = saved;
  limited.rlim_cur = (model_bytes + optimizer_bytes) / 2;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  std::string message;
  try {
    save_checkpoint(last, *model, opt.optimizer.get(), state_at(2));
  } catch (const Error& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, previous_handler);

  ASSERT_FALSE(message.empty()) << "expected graft::Error from a write over the file size limit";
  const std::string expected =
      "cannot write checkpoint '" + last + "' (the previous one there, if any, is unchanged)";
  EXPECT_NE(message.find(expected), std::string::npos) << message;
  EXPECT_NE(message.find("/optimizer.safetensors: cannot write"), std::string::npos) << message;
  EXPECT_NE(message.find("File too large (a file-size limit was reached"), std::string::npos) << message;
  EXPECT_EQ(read_trainer_state(*find_checkpoint(last)).epoch, 1);
  EXPECT_EQ(read_file(fs::path(last) / "optimizer.safetensors"), before);
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.str())) ++entries, (void)entry;
  EXPECT_EQ(entries, 1) << "a temporary folder was left behind";
}

TEST(Files, ErrorTextSaysWhatToDoWhenTheDiskIsFull) {
  EXPECT_EQ(file_error_text(ENOSPC), std::string(std::strerror(ENOSPC)) +
                                         " (the disk or your quota is full: free space, or write the run "
                                         "elsewhere with --out)");
  EXPECT_NE(file_error_text(EFBIG).find("a file-size limit was reached"), std::string::npos);
  EXPECT_EQ(file_error_text(EACCES), std::strerror(EACCES));
}

TEST(Files, WriteFileAtomicReplacesWholeAndNamesTheFileOnError) {
  TempDir dir("files_atomic");
  const std::string path = (dir / "metrics.csv").string();
  write_file_atomic(path, "old\n");
  write_file_atomic(path, "new\n");
  EXPECT_EQ(read_file(path), "new\n");
  try {
    write_file_atomic((dir / "no_such_folder" / "x.txt").string(), "x");
    FAIL() << "wrote into a missing folder";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "no_such_folder" / "x.txt").string() +
                                         ": cannot create the temporary file"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(std::strerror(ENOENT)), std::string::npos) << e.what();
  }
  int entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.str())) ++entries, (void)entry;
  EXPECT_EQ(entries, 1) << "a temporary was left behind";
}

TEST(Files, StaleTemporariesOfDeadWritersAreRemovedOthersStay) {
  TempDir dir("files_stale");
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  const std::vector<std::string> stale = {".metrics.csv.tmp-" + std::to_string(dead) + "-0"};
  // Kept: this process's, init's (alive), and names that are not AtomicFile temporaries.
  const std::vector<std::string> kept = {".metrics.csv.tmp-" + std::to_string(::getpid()) + "-3",
                                         ".graft.json.tmp-1-0", "metrics.csv", ".hidden", "notes.tmp-12-0"};
  for (const auto& name : stale) std::ofstream(dir / name) << "partial";
  for (const auto& name : kept) std::ofstream(dir / name) << "x";
  EXPECT_EQ(remove_stale_temporaries(dir.str()), 1);
  for (const auto& name : stale) EXPECT_FALSE(fs::exists(dir / name)) << name;
  for (const auto& name : kept) EXPECT_TRUE(fs::exists(dir / name)) << name;
}

namespace {
// `steps` optimiser steps on a TinyMlp, on inputs (and dropout masks) drawn from `seed`.
void take_steps(TinyMlp& model, torch::optim::Optimizer& optimizer, int64_t steps, uint64_t seed) {
  torch::manual_seed(seed);
  for (int64_t i = 0; i < steps; ++i) {
    optimizer.zero_grad();
    model->forward(torch::randn({8, 2})).pow(2).sum().backward();
    optimizer.step();
  }
}
}  // namespace

// Saved after two steps and restored into a fresh optimiser over a fresh model, the optimiser takes the
// third step bit for bit as the one that never stopped, for each optimiser graft builds. The file holds
// the state by parameter name, with PyTorch's field names.
TEST(Checkpoint, OptimizerStateRoundTrip) {
  for (const char* name : {"sgd", "adam", "adamw"}) {
    SCOPED_TRACE(name);
    TempDir dir("ckpt_optim");
    OptimizerConfig c;
    c.name = name;
    c.lr = 0.01;
    torch::manual_seed(2);
    TinyMlp model;
    GroupedOptimizer opt = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
    take_steps(model, *opt.optimizer, 2, 11);
    const std::string last = (dir / "last").string();
    save_checkpoint(last, *model, opt.optimizer.get(), state_at(1));

    SafeTensorsReader file(last + "/optimizer.safetensors");
    EXPECT_EQ(file.metadata().at("optimizer"), name);
    const std::vector<std::string> fields = c.name == "sgd"
                                                ? std::vector<std::string>{"momentum_buffer"}
                                                : std::vector<std::string>{"step", "exp_avg", "exp_avg_sq"};
    EXPECT_EQ(file.tensors().size(), 4 * fields.size());
    for (const char* param : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"})
      for (const auto& field : fields)
        EXPECT_TRUE(file.contains(std::string(param) + "." + field)) << param << "." << field;
    if (c.name != "sgd") {
      EXPECT_EQ(file.load("fc2.bias.step").item<int64_t>(), 2);
    }

    TinyMlp restored;
    load_checkpoint_model(last, *restored);
    GroupedOptimizer fresh = build_optimizer(c, {{restored->parameters(), 1.0, "all"}});
    load_checkpoint_optimizer(last, *restored, *fresh.optimizer);
    take_steps(model, *opt.optimizer, 1, 12);
    take_steps(restored, *fresh.optimizer, 1, 12);
    expect_same_weights(*model, *restored);
  }
}

// A damaged or foreign optimizer.safetensors is refused with the file and the tensor named; so is the
// libtorch archive (optimizer.pt) that graft wrote before, which can carry code.
TEST(Checkpoint, OptimizerStateThatDoesNotFitIsAClearError) {
  TempDir dir("ckpt_optim_bad");
  OptimizerConfig c;
  c.name = "adam";
  torch::manual_seed(2);
  TinyMlp model;
  GroupedOptimizer opt = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
  take_steps(model, *opt.optimizer, 1, 11);
  const std::string last = (dir / "last").string();
  const std::string path = last + "/optimizer.safetensors";
  save_checkpoint(last, *model, opt.optimizer.get(), state_at(1));
  const NamedTensors good = read_safetensors(path);
  // The checkpoint's save id, so that each damaged file reaches the checks of its contents.
  const std::string save_id = SafeTensorsReader(path).metadata().at("graft_save_id");
  const std::map<std::string, std::string> adam_meta = {{"optimizer", "adam"}, {"graft_save_id", save_id}};

  // Loads into the stepped optimiser, whose own state must survive a refused file untouched.
  auto fc1_state = [&]() -> const torch::optim::AdamParamState& {
    const auto* state = optimizer_param_state(*opt.optimizer, model->fc1->weight);
    if (!state) throw std::runtime_error("the optimiser holds no state for fc1.weight");
    return dynamic_cast<const torch::optim::AdamParamState&>(*state);
  };
  const torch::Tensor fc1_exp_avg = fc1_state().exp_avg().clone();
  auto error_with = [&](const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
    write_safetensors(path, tensors, metadata);
    std::string message = "no error";
    try {
      load_checkpoint_optimizer(last, *model, *opt.optimizer);
    } catch (const Error& e) {
      message = e.what();
    }
    EXPECT_EQ(opt.optimizer->state().size(), 4u) << message;
    EXPECT_TRUE(torch::equal(fc1_state().exp_avg(), fc1_exp_avg)) << message;
    return message;
  };
  auto replaced = [&](const std::string& name, const torch::Tensor& tensor) {
    NamedTensors out = good;
    for (auto& [key, value] : out)
      if (key == name) value = tensor;
    return out;
  };
  auto expect_has = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
  };

  std::string message = error_with(replaced("fc1.weight.exp_avg", torch::zeros({3, 3})), adam_meta);
  expect_has(message, path);
  expect_has(message, "tensor 'fc1.weight.exp_avg' has shape [3, 3], expected [16, 2]");

  message = error_with(replaced("fc1.bias.exp_avg_sq", torch::zeros({16}, torch::kFloat64)), adam_meta);
  expect_has(message, "tensor 'fc1.bias.exp_avg_sq' has dtype F64, expected F32");

  message = error_with(replaced("fc2.bias.step", torch::tensor({1.5})), adam_meta);
  expect_has(message, "tensor 'fc2.bias.step' has dtype F32 and shape [1], expected an I64 scalar");

  NamedTensors extra = good;
  extra.emplace_back("fc3.weight.exp_avg", torch::zeros({2}));
  message = error_with(extra, adam_meta);
  expect_has(message, "tensor 'fc3.weight.exp_avg' is the state of no parameter this optimiser trains");

  NamedTensors partial;
  for (const auto& item : good)
    if (item.first != "fc2.weight.exp_avg_sq") partial.push_back(item);
  message = error_with(partial, adam_meta);
  expect_has(message, "the state of parameter 'fc2.weight' is incomplete");

  message = error_with(good, {{"optimizer", "sgd"}, {"graft_save_id", save_id}});
  expect_has(message, "holds the state of optimizer 'sgd', expected 'adam'");
  // A file of no checkpoint save at all (written by another program) is refused before it is read.
  message = error_with(good, {{"optimizer", "adam"}});
  expect_has(message, "is from no graft checkpoint");

  fs::remove(path);
  { std::ofstream(last + "/optimizer.pt") << "PK"; }
  GroupedOptimizer fresh = build_optimizer(c, {{model->parameters(), 1.0, "all"}});
  try {
    load_checkpoint_optimizer(last, *model, *fresh.optimizer);
    FAIL() << "loaded a checkpoint without optimizer.safetensors";
  } catch (const Error& e) {
    expect_has(e.what(), "its optimiser state is in optimizer.pt");
    expect_has(e.what(), "graft no longer loads such files");
  }
}

// ---------------------------------------------------------------------------------------------------
// Pictures

TEST(Plot, TrainingCurvesAndConfusionMatrixSvg) {
  TempDir dir("plots");
  std::vector<EpochResult> history;
  for (int e = 1; e <= 5; ++e) {
    EpochResult r;
    r.epoch = e;
    r.train_loss = 1.0 / e;
    r.train_accuracy = 0.5 + 0.08 * e;
    r.val_loss = 1.2 / e;
    r.val_accuracy = 0.45 + 0.08 * e;
    history.push_back(r);
  }
  const std::string curves = (dir / "curves.svg").string();
  write_training_curves_svg(curves, history);
  const std::string svg = read_file(curves);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  for (const char* needle :
       {"Loss", "Accuracy", ">epoch<", ">train<", ">val<", "stroke-dasharray", "<polyline"})
    EXPECT_NE(svg.find(needle), std::string::npos) << needle;
  EXPECT_NE(svg.find("</svg>"), std::string::npos);

  MetricsAccumulator acc;
  acc.add(one_hot_logits({0, 1, 2, 2}, 3), labels_of({0, 1, 2, 1}), 1.0);
  const std::string matrix = (dir / "confusion.svg").string();
  write_confusion_matrix_svg(matrix, acc.result(), {"cat", "dog", "fish & chips"});
  const std::string heat = read_file(matrix);
  for (const char* needle :
       {">cat<", ">dog<", "fish &amp; chips", "Confusion matrix", ">predicted<", ">true<"})
    EXPECT_NE(heat.find(needle), std::string::npos) << needle;
  EXPECT_EQ(heat.find("fish & chips"), std::string::npos) << "class names must be XML-escaped";
  // Atomic writes leave no temporaries behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.str())) ++files, (void)entry;
  EXPECT_EQ(files, 2);

  // #15.13: a 2-class matrix is wide enough for its subtitle (it was 216 px); marks (a stage switch, the
  // kept epoch) are drawn and labelled; a causal LM's second panel is perplexity.
  MetricsAccumulator two;
  two.add(one_hot_logits({0, 1}, 2), labels_of({0, 1}), 1.0);
  write_confusion_matrix_svg(matrix, two.result(), {"a", "b"});
  const std::string small = read_file(matrix);
  std::smatch width;
  ASSERT_TRUE(std::regex_search(small, width, std::regex("<svg [^>]*width=\"([0-9.]+)\""))) << small;
  EXPECT_GE(std::stod(width[1]), 440.0) << small;
  write_training_curves_svg(curves, history, {{2.5, "stage 2"}, {4, "kept: best val_loss"}}, true);
  const std::string marked = read_file(curves);
  for (const char* needle :
       {">stage 2<", ">kept: best val_loss<", ">Perplexity<", "stroke-dasharray=\"2 3\""})
    EXPECT_NE(marked.find(needle), std::string::npos) << needle;
  EXPECT_EQ(marked.find(">Accuracy<"), std::string::npos);
  // The val perplexity of epoch 1 is exp(1.2).
  EXPECT_NE(marked.find("val epoch 1: " + std::to_string(std::exp(1.2)).substr(0, 5)), std::string::npos)
      << marked;
}

// ---------------------------------------------------------------------------------------------------
// Progress

TEST(Progress, RenderShowsBarCountsSpeedEtaLossAccuracy) {
  std::ostringstream out;
  ProgressBar bar("", 40, out, "img", /*tty=*/false);
  // 384 images in 4.5 s: 85.3 img/s; 28 batches left at 0.375 s each: 10.5 s -> 00:11.
  const std::string text = bar.render(12, 384, 0.6931, 0.512, 4.5);
  EXPECT_EQ(text.rfind("[=======>", 0), 0u) << text;  // 12/40 of 24 columns: 7 filled, then the head
  EXPECT_NE(text.find("] 12/40 batches  85.3 img/s  ETA 00:11  loss 0.6931 acc 0.512"), std::string::npos)
      << text;
  EXPECT_EQ(format_duration(21), "00:21");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  // A pass without a loss (feature extraction) shows neither loss nor accuracy.
  const std::string features = bar.render(12, 384, std::nan(""), 0.0, 4.5);
  EXPECT_NE(features.find("ETA 00:11"), std::string::npos) << features;
  EXPECT_EQ(features.find("loss"), std::string::npos) << features;
  EXPECT_EQ(features.find("acc"), std::string::npos) << features;
}

// Outside a terminal an epoch is one line, as Keras' verbose=2 (it was up to ten progress lines and the
// summary: 343 of 430 lines of a 25-epoch log, #15.4). A pass shorter than the 30 s heartbeat prints its
// summary only.
TEST(Progress, LogModePrintsOneLinePerPass) {
  std::ostringstream out;
  {
    ProgressBar bar("epoch 1/3", 40, out, "img", /*tty=*/false);
    for (int i = 1; i <= 40; ++i) bar.update(i, i * 32, 0.5, 0.75);
    bar.finish("epoch 1/3 done");
  }
  EXPECT_EQ(out.str(), "epoch 1/3 done\n");
  std::ostringstream unknown;  // an unknown total (a download without a size) likewise
  {
    ProgressBar bar("download", 0, unknown, "B", /*tty=*/false);
    for (int i = 1; i <= 1000; ++i) bar.update(i << 20, i << 20, std::nan(""), 0.0);
    bar.finish("downloaded");
  }
  EXPECT_EQ(unknown.str(), "downloaded\n");
  // A pass ended without a summary prints nothing more in a log (the trainer ends its train bar so before
  // validation); a download ends with its bar's last state, size and rate (current()).
  std::ostringstream quiet;
  {
    ProgressBar bar("epoch 1/1", 40, quiet, "img", /*tty=*/false);
    for (int i = 1; i <= 40; ++i) bar.update(i, i * 32, 0.5, 0.75);
    bar.finish("");
  }
  EXPECT_EQ(quiet.str(), "");
  std::ostringstream download;
  {
    ProgressBar bar("model.safetensors", 4 << 20, download, "B", /*tty=*/false);
    for (int i = 1; i <= 4; ++i) bar.update(i << 20, i << 20, std::nan(""), 0.0);
    bar.finish(bar.current());
  }
  const std::string line = download.str();
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
  EXPECT_NE(line.find("4.0 MiB / 4.0 MiB"), std::string::npos) << line;
}

TEST(Progress, TerminalModeRedrawsInPlace) {
  std::ostringstream out;
  ProgressBar bar("epoch 1/1", 5, out, "seq", /*tty=*/true);
  for (int i = 1; i <= 5; ++i) bar.update(i, i * 8, 0.5, 0.75);
  bar.finish("summary");
  const std::string text = out.str();
  EXPECT_EQ(text[0], '\r');
  EXPECT_NE(text.find("5/5 batches"), std::string::npos);  // the last update is always drawn
  EXPECT_NE(text.find("seq/s"), std::string::npos);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
  EXPECT_NE(text.find("\rsummary"), std::string::npos);
  EXPECT_EQ(text.back(), '\n');
}
