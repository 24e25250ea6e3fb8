// The feature cache of the feature-extraction strategy: cached pooled features equal a fresh forward pass
// of the frozen backbone, sample for sample, and carry no autograd history.
#include <gtest/gtest.h>

#include <sstream>

#include "graft/image_task.h"
#include "graft/registry.h"
#include "graft/transfer.h"

namespace graft {
namespace {

// Fixed random images in memory: the loader's decoding is not what is under test here.
class RandomImages : public Dataset {
 public:
  RandomImages(size_t n, int64_t size) {
    torch::manual_seed(3);
    images_ = torch::randn({static_cast<int64_t>(n), 3, size, size});
  }
  size_t size() const override { return static_cast<size_t>(images_.size(0)); }
  Sample get(size_t index, std::mt19937_64&) const override {
    return {images_[static_cast<int64_t>(index)].clone(), label(index), id(index)};
  }
  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t label(size_t index) const override { return static_cast<int64_t>(index % 3); }
  std::string id(size_t index) const override { return "image" + std::to_string(index); }
  const torch::Tensor& images() const { return images_; }

 private:
  torch::Tensor images_;
  std::vector<std::string> classes_{"a", "b", "c"};
};

TEST(FeatureCache, CachedFeaturesEqualAFreshForwardPass) {
  auto data = std::make_shared<RandomImages>(10, 32);
  for (const std::string head : {"", "max,dense:3"}) {
    Backbone model = create_model("resnet18");
    if (!head.empty()) model->set_head(HeadSpec::parse(head));
    apply_freeze(*model, "all");
    model->train();  // extraction must switch to eval (BatchNorm running statistics) by itself
    LoaderOptions options;
    options.batch_size = 4;  // 10 images: batches of 4, 4, 2
    options.shuffle = false;
    options.workers = 2;
    DataLoader loader(data, options);
    std::ostringstream log;
    FeatureSet cached = extract_features(*model, loader, torch::kCPU, log);
    EXPECT_TRUE(model->is_training());  // and put the mode back

    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor map = model->forward_features(data->images());
    torch::Tensor fresh = head.empty() ? map.mean({2, 3}) : map.amax({2, 3});
    ASSERT_EQ(cached.features.sizes(), fresh.sizes());
    const double diff = (cached.features - fresh).abs().max().item<double>();
    std::cout << "[feature cache] head '" << head << "' max|cached - fresh| = " << diff << "\n";
    EXPECT_LE(diff, 1e-5);
    EXPECT_FALSE(cached.features.requires_grad());
    EXPECT_FALSE(cached.features.is_inference());  // usable as input of the head's training
    EXPECT_TRUE(torch::equal(cached.labels, torch::tensor({0, 1, 2, 0, 1, 2, 0, 1, 2, 0}, torch::kLong)));
    EXPECT_EQ(cached.ids.front(), "image0");
    EXPECT_EQ(cached.ids.back(), "image9");
  }
}

}  // namespace
}  // namespace graft
