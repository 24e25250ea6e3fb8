// graft::dropout (graft/dropout.h): torch::nn::Dropout's semantics, its masks' statistics, repeatability
// under a seed whatever the thread count, and its backward.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "graft/dropout.h"
#include "graft/errors.h"

namespace graft {
namespace {

// Bounds on counts of n independent draws with probability q: 6 standard deviations, so a correct
// generator fails one run in about 10^9 and a biased one (a 1% shift at n = 10^6) fails every run.
double six_sigma(double q, double n) {
  return 6.0 * std::sqrt(q * (1.0 - q) / n);
}

TEST(Dropout, EvalAndZeroProbabilityAreTheIdentity) {
  const torch::Tensor x = torch::randn({4, 5});
  EXPECT_TRUE(graft::dropout(x, 0.3, /*training=*/false).is_same(x));
  EXPECT_TRUE(graft::dropout(x, 0.0, /*training=*/true).is_same(x));
  Dropout module(0.3);
  module->eval();
  EXPECT_TRUE(module->forward(x).is_same(x));
  std::ostringstream printed;
  module->pretty_print(printed);
  EXPECT_EQ(printed.str(), "Dropout(p=0.3)");
}

TEST(Dropout, DropsWithProbabilityPAndScalesTheRest) {
  const int64_t n = 1000000;
  for (const double p : {0.1, 0.5, 0.9}) {
    const torch::Tensor x = torch::ones({n});
    const torch::Tensor out = graft::dropout(x, p, true);
    const torch::Tensor dropped = out.eq(0);
    const float scale = static_cast<float>(1.0 / (1.0 - p));
    EXPECT_TRUE(torch::logical_or(dropped, out.eq(scale)).all().item<bool>()) << p;
    const double share = dropped.to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(share, p, six_sigma(p, n)) << p;
    // Neighbours share a 64-bit draw (32 bits each): dropped together with probability p^2.
    const torch::Tensor pairs = dropped.view({n / 2, 2});
    const double both =
        torch::logical_and(pairs.select(1, 0), pairs.select(1, 1)).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(both, p * p, six_sigma(p * p, n / 2)) << p;
  }
  EXPECT_TRUE(graft::dropout(torch::ones({10}), 1.0, true).eq(0).all().item<bool>());
}

TEST(Dropout, ASeedRepeatsTheMasksWhateverTheThreads) {
  const torch::Tensor x = torch::randn({300, 1000});
  const int threads = at::get_num_threads();
  torch::manual_seed(11);
  at::set_num_threads(1);
  const torch::Tensor one = graft::dropout(x, 0.2, true);
  torch::manual_seed(11);
  at::set_num_threads(std::max(2, threads));
  const torch::Tensor several = graft::dropout(x, 0.2, true);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, several));
  EXPECT_FALSE(torch::equal(one, graft::dropout(x, 0.2, true))) << "the next call draws another mask";
  // A non-contiguous input: the kept elements are the input's, scaled.
  const torch::Tensor t = x.t();
  const torch::Tensor out = graft::dropout(t, 0.2, true);
  ASSERT_EQ(out.sizes(), t.sizes());
  const torch::Tensor kept = out.ne(0);
  EXPECT_TRUE(torch::allclose(out.masked_select(kept), t.masked_select(kept) / 0.8));
}

TEST(Dropout, BackwardPassesTheGradientWhereKept) {
  const torch::Tensor x = (torch::rand({64, 33}) + 0.5).requires_grad_();
  const torch::Tensor w = torch::randn({64, 33});
  const torch::Tensor out = graft::dropout(x, 0.25, true);
  (out * w).sum().backward();
  const torch::Tensor kept = out.detach().ne(0).to(torch::kFloat);
  EXPECT_TRUE(torch::allclose(x.grad(), kept * w / 0.75));
  EXPECT_GT(kept.sum().item<double>(), 0);
  EXPECT_LT(kept.sum().item<double>(), kept.numel());
}

TEST(Dropout, AProbabilityOutsideZeroToOneIsRefused) {
  for (const double p : {-0.1, 1.5, std::nan("")}) {
    EXPECT_THROW(graft::dropout(torch::ones({3}), p, true), Error) << p;
    EXPECT_THROW(Dropout{p}, Error) << p;
  }
}

}  // namespace
}  // namespace graft
