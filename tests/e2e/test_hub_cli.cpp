// `graft pull` and `--weights ORG/NAME` end to end against a fake Hugging Face Hub on 127.0.0.1
// (tests/fake_hub.h): the ml5 Tiny Darknet TF.js model served as a Hub repository, pulled into an
// HF_HOME of the test's own, then run by `graft forward --weights ORG/NAME` to TF.js's reference logits.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "e2e/run_graft.h"
#include "fake_hub.h"
#include "graft/data.h"
#include "graft/registry.h"
#include "graft/sha256.h"
#include "graft/weights.h"

namespace {

namespace fs = std::filesystem;
using graft::testing::contains;
using graft::testing::FakeHub;
using graft::testing::FakeRepo;
using graft::testing::fresh_dir;
using graft::testing::graft;
using graft::testing::read_file;

const std::string kCommit = "fedcba9876543210fedcba9876543210fedcba98";

// shared/weights/tiny_darknet_tfjs as a Hub repository, plus a pickle that must never be fetched.
FakeRepo darknet_repo() {
  const fs::path source = fs::path(GRAFT_SHARED_DIR) / "weights" / "tiny_darknet_tfjs";
  FakeRepo repo;
  repo.commit = kCommit;
  for (const auto& entry : fs::directory_iterator(source)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    const bool lfs = name.find("shard") != std::string::npos;
    repo.files[name] = lfs ? graft::testing::lfs_file(read_file(entry.path()))
                           : graft::testing::git_file(read_file(entry.path()));
  }
  repo.files["pytorch_model.bin"] = graft::testing::lfs_file("not really a pickle");
  return repo;
}

class HubCli : public ::testing::Test {
 protected:
  void SetUp() override {
    home_ = fresh_dir("hub_cli");
    hub_.set_repo("test-org/tiny-darknet", darknet_repo());
  }
  void TearDown() override { fs::remove_all(home_); }
  std::string env(const std::string& extra = "") const {
    return "HF_ENDPOINT=" + hub_.endpoint() + " HF_HOME=" + home_.string() +
           " HF_HUB_CACHE= HF_TOKEN=" + (extra.empty() ? "" : " " + extra);
  }
  fs::path repo_folder() const { return home_ / "hub" / "models--test-org--tiny-darknet"; }

  FakeHub hub_;
  fs::path home_;
};

TEST_F(HubCli, PullThenForwardWithWeightsOrgName) {
  auto pull = graft("pull test-org/tiny-darknet", env());
  ASSERT_EQ(pull.status, 0) << pull.output;
  EXPECT_TRUE(contains(pull.output, "skipped pytorch_model.bin: pickle")) << pull.output;
  EXPECT_TRUE(contains(pull.output, "pulled test-org/tiny-darknet@main (commit " + kCommit + "): 32 files"))
      << pull.output;
  for (const auto& request : hub_.requests())
    EXPECT_FALSE(contains(request.path, "pytorch_model")) << request.path;
  const fs::path snapshot = repo_folder() / "snapshots" / kCommit;
  EXPECT_EQ(read_file(repo_folder() / "refs" / "main"), kCommit);
  EXPECT_TRUE(fs::is_symlink(snapshot / "model.json"));
  EXPECT_TRUE(fs::is_regular_file(snapshot / "group19-shard1of1"));
  EXPECT_FALSE(fs::exists(snapshot / "labels.txt"));  // not a file graft reads
  const std::string shard =
      read_file(fs::path(GRAFT_SHARED_DIR) / "weights/tiny_darknet_tfjs/group19-shard1of1");
  EXPECT_EQ(read_file(repo_folder() / "blobs" / graft::sha256_hex(shard)), shard);

  // --weights ORG/NAME loads the pulled model: TF.js's own logits on the reference images.
  const fs::path reference_dir = fs::path(GRAFT_SHARED_DIR) / "weights/tiny_darknet_tfjs/reference";
  graft::SafeTensorsReader reference((reference_dir / "reference.safetensors").string());
  const std::string inputs = (home_ / "in.safetensors").string(), out = (home_ / "out.safetensors").string();
  graft::write_safetensors(inputs,
                           {{"pixel_values", reference.load("input").permute({0, 3, 1, 2}).contiguous()}});
  for (const std::string mode : {"HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE=0"}) {
    hub_.clear_requests();
    auto run =
        graft("forward darknet_tiny.ml5 --weights test-org/tiny-darknet --inputs " + inputs + " --out " + out,
              env(mode));
    ASSERT_EQ(run.status, 0) << mode << ": " << run.output;
    graft::SafeTensorsReader got(out);
    const double diff = (got.load("logits") - reference.load("output")).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4) << mode;
    if (mode == "HF_HUB_OFFLINE=1") {
      EXPECT_TRUE(hub_.requests().empty()) << "offline mode asked the Hub";
    } else {
      EXPECT_FALSE(hub_.requests().empty());       // online: the revision is asked about ...
      for (const auto& request : hub_.requests())  // ... but nothing is downloaded again
        EXPECT_FALSE(request.method == "GET" && contains(request.path, "/cdn/")) << request.path;
    }
  }
}

TEST_F(HubCli, WeightsOrgNameDownloadsOnFirstUse) {
  auto run = graft("summary darknet_tiny.ml5 --weights test-org/tiny-darknet@main", env());
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "Total params")) << run.output;
  EXPECT_TRUE(fs::is_regular_file(repo_folder() / "snapshots" / kCommit / "model.json"));
  EXPECT_FALSE(contains(run.output, "randomly initialised")) << run.output;
}

TEST_F(HubCli, ClearErrors) {
  // Offline with nothing cached: says so and how to fix it, and never calls the Hub.
  auto offline = graft("pull test-org/tiny-darknet", env("HF_HUB_OFFLINE=1"));
  EXPECT_EQ(offline.status, 1);
  EXPECT_TRUE(contains(offline.output, "HF_HUB_OFFLINE")) << offline.output;
  EXPECT_TRUE(contains(offline.output, "graft pull test-org/tiny-darknet")) << offline.output;
  auto weights_offline =
      graft("summary darknet_tiny.ml5 --weights test-org/tiny-darknet", env("HF_HUB_OFFLINE=1"));
  EXPECT_EQ(weights_offline.status, 1);
  EXPECT_TRUE(contains(weights_offline.output, "not in the cache")) << weights_offline.output;
  EXPECT_TRUE(hub_.requests().empty());

  auto missing = graft("pull test-org/nothing-here", env());
  EXPECT_EQ(missing.status, 1);
  EXPECT_TRUE(
      contains(missing.output,
               hub_.endpoint() + "/api/models/test-org/nothing-here/revision/main?blobs=true: HTTP 404"))
      << missing.output;

  auto escape = graft("pull test-org/tiny-darknet --files ../../../etc/passwd", env());
  EXPECT_EQ(escape.status, 1);
  EXPECT_TRUE(contains(escape.output, "refused")) << escape.output;

  auto pickle = graft("pull test-org/tiny-darknet --files pytorch_model.bin", env());
  EXPECT_EQ(pickle.status, 1);
  EXPECT_TRUE(contains(pickle.output, "pickle")) << pickle.output;

  auto bad_id = graft("pull not..a/repo", env());
  EXPECT_EQ(bad_id.status, 1);
  EXPECT_TRUE(contains(bad_id.output, "not a Hugging Face repository id")) << bad_id.output;

  // A --weights value that is neither a path nor ORG/NAME is refused by the option check.
  auto neither = graft("summary darknet_tiny.ml5 --weights missing.safetensors", env());
  EXPECT_NE(neither.status, 0);
  EXPECT_TRUE(contains(neither.output, "no such file or folder: missing.safetensors")) << neither.output;
}

// A pretrained tag means pretrained (#15): resnet18.tv_in1k, whose source is the Hub repository
// timm/resnet18.tv_in1k, is pulled into the Hugging Face cache and loaded; offline and uncached, the run
// stops with the command that gets the weights instead of training from random weights; --random-init
// asks for random weights and says so; a tag graft cannot fetch says how to give its weights.
TEST_F(HubCli, APretrainedTagLoadsItsWeightsOrStops) {
  // timm's resnet18 safetensors carry torchvision's names: a resnet18 state dict (seeded) stands in.
  torch::manual_seed(3);
  const graft::Backbone reference = graft::create_model("resnet18");
  const fs::path file = home_ / "resnet18.safetensors";
  graft::write_safetensors(file.string(), graft::state_dict(*reference));
  FakeRepo timm;
  timm.commit = kCommit;
  timm.files["model.safetensors"] = graft::testing::lfs_file(read_file(file));
  timm.files["config.json"] = graft::testing::git_file("{\"architecture\": \"resnet18\"}");
  hub_.set_repo("timm/resnet18.tv_in1k", timm);
  const std::string data = graft::kFashionMnistDir;
  const std::string common = " --data " + data + " --limit 100 --image-size 32 --epochs 1 --batch-size 50";

  auto offline = graft("train --model resnet18.tv_in1k" + common + " --out " + (home_ / "offline").string(),
                       env("HF_HUB_OFFLINE=1"));
  EXPECT_EQ(offline.status, 1) << offline.output;
  EXPECT_TRUE(contains(offline.output, "graft pull timm/resnet18.tv_in1k")) << offline.output;
  EXPECT_FALSE(contains(offline.output, "epoch 1/1")) << offline.output;

  auto pulled =
      graft("train --model resnet18.tv_in1k" + common + " --out " + (home_ / "pulled").string(), env());
  ASSERT_EQ(pulled.status, 0) << pulled.output;
  EXPECT_TRUE(contains(pulled.output, "resnet18.tv_in1k's pretrained weights")) << pulled.output;
  EXPECT_FALSE(contains(pulled.output, "random initialisation")) << pulled.output;
  EXPECT_TRUE(fs::is_regular_file(home_ / "hub" / "models--timm--resnet18.tv_in1k" / "snapshots" / kCommit /
                                  "model.safetensors"));
  // The backbone of the run starts from the pulled weights (frozen, one epoch leaves them as they were;
  // --lr 0 is refused now: a rate of 0 trains nothing).
  auto frozen = graft("train --model resnet18.tv_in1k" + common + " --freeze all --no-augment --out " +
                          (home_ / "lr0").string(),
                      env());
  ASSERT_EQ(frozen.status, 0) << frozen.output;
  graft::SafeTensorsReader saved((home_ / "lr0" / "model.safetensors").string());
  const torch::Tensor expected = graft::state_dict(*reference).front().second;
  EXPECT_TRUE(torch::equal(saved.load(graft::state_dict(*reference).front().first), expected));

  auto random =
      graft("train --model resnet18.tv_in1k --random-init" + common + " --out " + (home_ / "random").string(),
            env("HF_HUB_OFFLINE=1"));
  ASSERT_EQ(random.status, 0) << random.output;
  EXPECT_TRUE(contains(random.output, "random initialisation, as --random-init asks")) << random.output;

  auto unfetchable =
      graft("train --model vgg16.tv_in1k" + common + " --out " + (home_ / "vgg").string(), env());
  EXPECT_EQ(unfetchable.status, 1) << unfetchable.output;
  EXPECT_TRUE(contains(unfetchable.output, "vgg16.tv_in1k: graft cannot fetch these weights itself"))
      << unfetchable.output;
  EXPECT_TRUE(contains(unfetchable.output, "--random-init")) << unfetchable.output;
  auto features = graft(
      "features vgg16.tv_in1k --data " + data + " --limit 10 --out " + (home_ / "f.safetensors").string(),
      env());
  EXPECT_EQ(features.status, 1) << features.output;
  EXPECT_TRUE(contains(features.output, "graft cannot fetch these weights itself")) << features.output;
  // summary needs no weights and says nothing about them.
  auto summary = graft("summary vgg16.tv_in1k", env());
  EXPECT_EQ(summary.status, 0) << summary.output;
  EXPECT_FALSE(contains(summary.output, "random")) << summary.output;
}

TEST_F(HubCli, TokenFromTheEnvironmentIsSent) {
  hub_.require_token("hf_e2e_token");
  auto denied = graft("pull test-org/tiny-darknet --files model.json", env());
  EXPECT_EQ(denied.status, 1);
  EXPECT_TRUE(contains(denied.output, "HTTP 401")) << denied.output;
  EXPECT_TRUE(contains(denied.output, "HF_TOKEN")) << denied.output;
  hub_.clear_requests();
  auto allowed =
      graft("pull test-org/tiny-darknet --revision main --files model.json", env("HF_TOKEN=hf_e2e_token"));
  ASSERT_EQ(allowed.status, 0) << allowed.output;
  bool seen = false;
  for (const auto& request : hub_.requests()) {
    if (contains(request.path, "/api/models/test-org/tiny-darknet/revision/main")) {
      seen = request.headers.count("authorization") &&
             request.headers.at("authorization") == "Bearer hf_e2e_token";
    }
  }
  EXPECT_TRUE(seen);
  // --files model.json brings its manifest's shards along.
  EXPECT_TRUE(fs::is_regular_file(repo_folder() / "snapshots" / kCommit / "group1-shard1of1"));
}

}  // namespace
