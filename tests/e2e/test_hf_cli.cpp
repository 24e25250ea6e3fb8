// `graft forward` on Hugging Face model folders (shared/fixtures/hf: BERT, GPT-2, ViT from transformers
// v4.31): the fixture's own inputs in, and the written logits / last_hidden_state / pooler_output must
// equal the fixture's outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "e2e/run_graft.h"
#include "graft/lora.h"
#include "graft/registry.h"
#include "graft/summary.h"
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

// --adapter: PEFT's own adapters (shared/fixtures/peft, made by PEFT v0.5) on their bases through graft
// forward. Hugging Face folders (BERT, GPT-2, ViT): PEFT's logits with the adapter kept apart and merged in
// (--merge), within 1e-5 of the largest logit (float32 sums over a few hundred terms). A torchvision-named
// ResNet-18 (--num-classes, the head from the adapter): the logits of the C++ API's load_lora_adapter,
// which the golden tests hold to PEFT's. Two adapters without --merge are refused by name.
TEST(HfCli, ForwardTakesPeftAdapters) {
  const auto dir = fresh_dir("peft_forward");
  const std::string peft = std::string(GRAFT_SHARED_DIR) + "/fixtures/peft/";
  for (const auto& [name, architecture] :
       std::vector<std::pair<std::string, std::string>>{{"bert_lora", "BertForSequenceClassification"},
                                                        {"gpt2_lora", "GPT2LMHeadModel"},
                                                        {"vit_lora", "ViTForImageClassification"}}) {
    // A Hugging Face folder of the fixture's base, its class named as save_pretrained names it (the
    // fixture's config.json leaves architectures null).
    const auto base = dir / name;
    std::filesystem::create_directories(base);
    auto config = nlohmann::json::parse(std::ifstream(peft + name + "/config.json"));
    config["architectures"] = {architecture};
    std::ofstream(base / "config.json") << config.dump(2);
    std::filesystem::copy_file(peft + name + "/base.safetensors", base / "model.safetensors");
    const std::string expected = peft + name + "/expected.safetensors";
    for (const std::string merge : {"", " --merge"}) {
      const std::string out = (dir / (name + (merge.empty() ? "" : "_merged") + ".safetensors")).string();
      auto run = graft("forward " + base.string() + " --adapter " + peft + name + merge + " --inputs " +
                       expected + " --out " + out);
      ASSERT_EQ(run.status, 0) << name << merge << ":\n" << run.output;
      EXPECT_NE(run.output.find("adapter " + peft + name + ": LoRA r=4 alpha=8"), std::string::npos)
          << run.output;
      const SafeTensorsReader got(out), want(expected);
      const torch::Tensor a = got.load("logits"), b = want.load("logits");
      ASSERT_EQ(a.sizes(), b.sizes()) << name;
      const double diff = max_diff(a, b), scale = std::max(1.0, b.abs().max().item<double>());
      std::cout << "[peft forward] " << name << merge << " logits max|diff|=" << diff << "\n";
      EXPECT_LE(diff, 1e-5 * scale) << name << merge << ": logits differ from PEFT's by " << diff;
      EXPECT_GT(max_diff(a, want.load("base.logits")), 1e-3) << name << ": the adapter changed nothing";
    }
  }
  // The fixture's own config.json names no class: BertModel is built, and the adapter's names say why
  // they do not fit.
  std::filesystem::copy_file(peft + "bert_lora/config.json", dir / "bert_lora" / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto bare = graft("forward " + (dir / "bert_lora").string() + " --adapter " + peft + "bert_lora --inputs " +
                    peft + "bert_lora/expected.safetensors --out " + (dir / "bare.safetensors").string());
  EXPECT_EQ(bare.status, 1) << bare.output;
  EXPECT_NE(bare.output.find("whose names lack its 'bert.' prefix"), std::string::npos) << bare.output;

  const std::string resnet = peft + "resnet18_conv_lora";
  const std::string out = (dir / "resnet.safetensors").string();
  auto run = graft("forward resnet18 --num-classes 5 --weights " + resnet + "/base.safetensors --adapter " +
                   resnet + " --inputs " + resnet + "/expected.safetensors --out " + out);
  ASSERT_EQ(run.status, 0) << run.output;
  {
    Backbone model = create_model("resnet18", 5);
    load_weights(*model, resnet + "/base.safetensors");
    load_lora_adapter(*model, resnet);
    model->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor want =
        model->forward(SafeTensorsReader(resnet + "/expected.safetensors").load("pixel_values"));
    EXPECT_LE(max_diff(SafeTensorsReader(out).load("logits"), want), 1e-5);
  }
  // features takes the adapter too: its branches on layer4 change the pooled features.
  const std::string images = std::string(GRAFT_SHARED_DIR) + "/data/cats_vs_dogs_small/test";
  const std::string base_features = "features resnet18 --num-classes 5 --weights " + resnet +
                                    "/base.safetensors --data " + images + " --limit 2 --out ";
  auto plain = graft(base_features + (dir / "plain.safetensors").string());
  auto adapted = graft(base_features + (dir / "adapted.safetensors").string() + " --adapter " + resnet);
  ASSERT_EQ(plain.status, 0) << plain.output;
  ASSERT_EQ(adapted.status, 0) << adapted.output;
  const torch::Tensor f_plain = SafeTensorsReader((dir / "plain.safetensors").string()).load("features");
  const torch::Tensor f_adapted = SafeTensorsReader((dir / "adapted.safetensors").string()).load("features");
  EXPECT_EQ(f_adapted.sizes(), f_plain.sizes());
  EXPECT_EQ(f_adapted.size(1), 512);
  EXPECT_GT(max_diff(f_adapted, f_plain), 1e-3);

  auto two = graft("forward resnet18 --num-classes 5 --weights " + resnet + "/base.safetensors --adapter " +
                   resnet + " --adapter " + resnet + " --inputs " + resnet + "/expected.safetensors --out " +
                   (dir / "two.safetensors").string());
  EXPECT_EQ(two.status, 1) << two.output;
  EXPECT_NE(two.output.find("--adapter given 2 times"), std::string::npos) << two.output;
  std::filesystem::remove_all(dir);
}

// summary --lora shows each adapted layer with PEFT's shapes and what trains, for a Hugging Face folder
// (the classifier of a sequence classifier trained whole, as PEFT's SEQ_CLS) and a registry model (its new
// head whole); --adapter shows a PEFT adapter's layers.
TEST(HfCli, SummaryShowsAdaptedLayers) {
  const auto dir = fresh_dir("peft_summary");
  const std::string peft = std::string(GRAFT_SHARED_DIR) + "/fixtures/peft/bert_lora";
  auto config = nlohmann::json::parse(std::ifstream(peft + "/config.json"));
  config["architectures"] = {"BertForSequenceClassification"};
  std::ofstream(dir / "config.json") << config.dump(2);
  const int64_t hidden = config["hidden_size"], labels = static_cast<int64_t>(config["id2label"].size());
  auto bert = graft("summary " + dir.string() + " --lora r=4,alpha=8,targets=query,value");
  ASSERT_EQ(bert.status, 0) << bert.output;
  const std::string a = "A (4, " + std::to_string(hidden) + "), B (" + std::to_string(hidden) + ", 4)";
  EXPECT_NE(bert.output.find("LoRA bert.encoder.layer.1.attention.self.value: " + a), std::string::npos)
      << bert.output;
  const int64_t trainable = 4 * 2 * 4 * hidden + labels * hidden + labels;  // 4 layers' A and B, the head
  EXPECT_NE(bert.output.find("LoRA on 4 layers: " + format_count(trainable) + " trainable of "),
            std::string::npos)
      << bert.output;
  auto adapter = graft("summary " + dir.string() + " --adapter " + peft);
  ASSERT_EQ(adapter.status, 0) << adapter.output;
  EXPECT_NE(adapter.output.find("LoRA on 4 layers: " + format_count(trainable) + " trainable of "),
            std::string::npos)
      << adapter.output;
  auto resnet = graft("summary resnet18 --num-classes 5 --lora r=4,targets=layer4.1.conv2");
  ASSERT_EQ(resnet.status, 0) << resnet.output;
  EXPECT_NE(resnet.output.find("LoRA layer4.1.conv2: A (4, 512, 3, 3), B (512, 4, 1, 1)"), std::string::npos)
      << resnet.output;
  EXPECT_NE(resnet.output.find("LoRA on 1 layers: 23,045 trainable of "), std::string::npos) << resnet.output;
  auto refused = graft("summary " + dir.string() + " --head avg,dense:3 --lora r=4,targets=query");
  EXPECT_EQ(refused.status, 1) << refused.output;
  EXPECT_NE(refused.output.find("--head applies to registry models"), std::string::npos) << refused.output;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace graft
