// `graft forward` on Hugging Face model folders (shared/fixtures/hf: BERT, GPT-2, ViT from transformers
// v4.31): the fixture's own inputs in, and the written logits / last_hidden_state / pooler_output must
// equal the fixture's outputs.
#include <gtest/gtest.h>

#include <iostream>

#include "e2e/run_graft.h"
#include "graft/weights.h"

namespace graft {
namespace {

using testing::fresh_dir;
using testing::graft;

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

TEST(HfCli, ForwardReproducesTransformers) {
  const auto dir = fresh_dir("hf_forward");
  const std::string fixtures = std::string(GRAFT_SHARED_DIR) + "/fixtures/hf/";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"bert", {"logits", "last_hidden_state", "pooler_output"}},
      {"gpt2", {"logits", "last_hidden_state"}},
      {"vit", {"logits", "last_hidden_state"}},
  };
  for (const auto& [model, outputs] : cases) {
    const std::string expected = fixtures + model + "/expected.safetensors";
    const std::string out = (dir / (model + ".safetensors")).string();
    auto run = graft("forward " + fixtures + model + " --inputs " + expected + " --out " + out);
    ASSERT_EQ(run.status, 0) << model << ":\n" << run.output;
    const SafeTensorsReader got(out), want(expected);
    for (const auto& name : outputs) {
      ASSERT_TRUE(got.contains(name)) << model << ": " << out << " has no " << name << "\n" << run.output;
      // GPT-2's last hidden state is its last hidden_states entry (after ln_f).
      const std::string reference = model == "gpt2" && name == "last_hidden_state" ? "hidden_states.3" : name;
      const torch::Tensor a = got.load(name), b = want.load(reference);
      ASSERT_EQ(a.sizes(), b.sizes()) << model << " " << name;
      const double diff = max_diff(a, b);
      std::cout << "[hf forward] " << model << " " << name << " max|diff|=" << diff << "\n";
      EXPECT_LE(diff, 1e-5) << model << ": " << name << " differs from transformers by " << diff;
    }
  }
  // Text inputs missing: the message names the file and what it holds.
  auto missing = graft("forward " + fixtures + "bert --inputs " + fixtures +
                       "vit/expected.safetensors --out " + (dir / "x.safetensors").string());
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.output.find("no tensor named 'input_ids'"), std::string::npos) << missing.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace graft
