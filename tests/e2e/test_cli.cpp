// The graft program end to end: help/version/info, the model list, Keras-like summaries whose counts
// equal torchvision's, `forward` against torchvision's outputs, and clear errors on bad input.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "e2e/run_graft.h"
#include "graft/weights.h"

namespace {

using graft::testing::fresh_dir;
using graft::testing::graft;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Cli, HelpVersionInfo) {
  auto help = graft("--help");
  EXPECT_EQ(help.status, 0);
  for (const char* command : {"info", "models", "summary", "forward"})
    EXPECT_TRUE(contains(help.output, command));
  auto version = graft("--version");
  EXPECT_EQ(version.status, 0);
  EXPECT_TRUE(contains(version.output, "graft " GRAFT_VERSION)) << version.output;
  auto info = graft("info");
  EXPECT_EQ(info.status, 0) << info.output;
  EXPECT_TRUE(contains(info.output, "libtorch")) << info.output;
  EXPECT_TRUE(std::regex_search(info.output, std::regex("threads +[0-9]+ intra-op"))) << info.output;
  EXPECT_TRUE(contains(info.output, "BLAS")) << info.output;
  auto two = graft("--threads 1 info");
  EXPECT_TRUE(contains(two.output, "threads    1 intra-op")) << two.output;
  // Every command's --help shows its options' defaults (#15).
  auto predict_help = graft("predict --help");
  EXPECT_TRUE(contains(predict_help.output, "--top-k INT=5")) << predict_help.output;
  EXPECT_TRUE(contains(predict_help.output, "--device TEXT=auto")) << predict_help.output;
  EXPECT_TRUE(contains(graft("generate --help").output, "--max-new-tokens INT=50"));
  // A mistyped command names the nearest one (it was "A subcommand is required": #15.9).
  auto typo = graft("--threads 1 trian --help");
  EXPECT_EQ(typo.status, 1) << typo.output;
  EXPECT_TRUE(contains(typo.output, "unknown command 'trian'; did you mean 'train'?")) << typo.output;
  auto unknown = graft("frobnicate");
  EXPECT_EQ(unknown.status, 1) << unknown.output;
  EXPECT_TRUE(contains(unknown.output, "unknown command 'frobnicate' (graft --help lists them)"))
      << unknown.output;
}

// The program starts again with OMP_WAIT_POLICY=PASSIVE before libgomp reads its environment
// (src/cli/openmp_wait.cpp), keeping its arguments; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
TEST(Cli, OpenMpWorkersSleepUnlessTheUserSaysOtherwise) {
  const std::string clean = "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u GRAFT_OMP_WAIT_POLICY";
  auto info = graft("--threads 1 info", clean);
  EXPECT_EQ(info.status, 0) << info.output;
  EXPECT_TRUE(contains(info.output, "OpenMP     OMP_WAIT_POLICY=PASSIVE (set by graft")) << info.output;
  EXPECT_TRUE(contains(info.output, "threads    1 intra-op")) << info.output;
  auto active = graft("info", clean + " OMP_WAIT_POLICY=ACTIVE");
  EXPECT_TRUE(contains(active.output, "OpenMP     OMP_WAIT_POLICY=ACTIVE (from the environment)"))
      << active.output;
  auto spins = graft("info", clean + " GOMP_SPINCOUNT=1000");
  EXPECT_TRUE(contains(spins.output, "OpenMP     GOMP_SPINCOUNT=1000 (from the environment)"))
      << spins.output;
}

// `graft train`'s flags come from one table: --help shows each task's default and the tasks an option is
// for; a bare `graft train` says what is missing (it printed a JSON library's type_error 307).
TEST(Cli, TrainHelpAndMissingOptions) {
  auto help = graft("train --help");
  EXPECT_EQ(help.status, 0) << help.output;
  EXPECT_TRUE(
      contains(help.output, "image-classify: 32; video-classify: 8; text-classify: 16; causal-lm: 16"))
      << help.output;
  EXPECT_TRUE(contains(help.output, "--block-size")) << help.output;
  EXPECT_TRUE(contains(help.output, "[causal-lm]")) << help.output;
  EXPECT_TRUE(contains(help.output, "feature-extract | fine-tune | two-stage")) << help.output;
  auto bare = graft("train");
  EXPECT_EQ(bare.status, 1) << bare.output;
  EXPECT_TRUE(contains(bare.output, "--data is required")) << bare.output;
  EXPECT_FALSE(contains(bare.output, "type_error")) << bare.output;
  auto no_model = graft("train --data somewhere --out elsewhere");
  EXPECT_EQ(no_model.status, 1) << no_model.output;
  EXPECT_TRUE(contains(no_model.output, "--model is required")) << no_model.output;
  auto word = graft("train --model resnet18 --data somewhere --out elsewhere --epochs three");
  EXPECT_EQ(word.status, 1) << word.output;
  EXPECT_TRUE(contains(word.output, "--epochs three: expected an integer")) << word.output;
  auto video_head = graft("train --task video-classify --model resnet18 --head avg --data somewhere --out x");
  EXPECT_EQ(video_head.status, 1) << video_head.output;
  EXPECT_TRUE(contains(video_head.output, "--head does not apply to --task video-classify"))
      << video_head.output;
}

// Text files of predict --input and tokenize --file are read whole and bounded: /dev/zero and a FIFO are
// refused by name (tokenize read 2 GB of /dev/zero before its 1 GiB limit applied).
TEST(Cli, TokenizeRefusesFilesThatNeverEnd) {
  const std::string vocab = std::string(GRAFT_SHARED_DIR) + "/tokenizers/bert-base-uncased/vocab.txt";
  auto zero = graft("tokenize --tokenizer " + vocab + " --file /dev/zero");
  EXPECT_EQ(zero.status, 1) << zero.output;
  EXPECT_TRUE(contains(zero.output, "/dev/zero: is a device or socket")) << zero.output;
  const auto dir = fresh_dir("tokenize_fifo");
  const std::string fifo = (dir / "pipe.txt").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto pipe = graft("tokenize --tokenizer " + vocab + " --file " + fifo);
  EXPECT_EQ(pipe.status, 1) << pipe.output;
  EXPECT_TRUE(contains(pipe.output, "is a FIFO")) << pipe.output;
  auto plain = graft("tokenize --tokenizer " + vocab + " --ids hello");
  EXPECT_EQ(plain.status, 0) << plain.output;
}

TEST(Cli, ModelsListsEveryArchitectureAndFilters) {
  auto all = graft("models");
  EXPECT_EQ(all.status, 0);
  for (const char* name : {"resnet18.tv_in1k", "resnet34.tv_in1k", "resnet50.tv_in1k", "resnet101.tv_in1k",
                           "resnet152.tv_in1k", "vgg16.tv_in1k", "vgg16_bn.tv_in1k", "vgg19.tv_in1k",
                           "vgg19_bn.tv_in1k", "mobilenet_v2.tv_in1k", "efficientnet_b0.tv_in1k"}) {
    EXPECT_TRUE(contains(all.output, name)) << name;
  }
  auto vgg = graft("models vgg");
  EXPECT_TRUE(contains(vgg.output, "vgg19_bn")) << vgg.output;
  EXPECT_FALSE(contains(vgg.output, "resnet")) << vgg.output;
  // The Hugging Face families are listed with how to use them ("no model matches 'vit'" before: #15.11).
  auto vit = graft("models vit");
  EXPECT_EQ(vit.status, 0);
  EXPECT_TRUE(contains(vit.output, "ViTForImageClassification")) << vit.output;
  EXPECT_FALSE(contains(vit.output, "no model matches")) << vit.output;
  EXPECT_TRUE(contains(all.output, "GPT2LMHeadModel")) << all.output;
  EXPECT_TRUE(contains(graft("models nothing_like_this").output, "no model matches 'nothing_like_this'"));
}

// Video backbones take clips (N, 3, T, H, W) in `graft forward`, as torchvision's do (they were refused
// with "expected [-1, 3, -1, -1]": #15.11).
TEST(Cli, ForwardTakesClipsForVideoModels) {
  const auto dir = fresh_dir("forward_video");
  const std::string inputs = (dir / "clips.safetensors").string(), out = (dir / "out.safetensors").string();
  torch::manual_seed(0);
  graft::write_safetensors(inputs, {{"pixel_values", torch::randn({2, 3, 4, 32, 32})}});
  auto run = graft("forward r3d_18 --inputs " + inputs + " --out " + out);
  ASSERT_EQ(run.status, 0) << run.output;
  const graft::SafeTensorsReader reader(out);
  EXPECT_EQ(reader.info("logits").shape, (std::vector<int64_t>{2, 400}));
  EXPECT_EQ(reader.info("features").shape, (std::vector<int64_t>{2, 512}));
  EXPECT_TRUE(torch::isfinite(reader.load("logits")).all().item<bool>());
  // Images are still refused for a video model, with the clip shape expected.
  graft::write_safetensors(inputs, {{"pixel_values", torch::randn({2, 3, 32, 32})}});
  auto images = graft("forward r3d_18 --inputs " + inputs + " --out " + out);
  EXPECT_EQ(images.status, 1) << images.output;
  EXPECT_TRUE(contains(images.output, "[-1, 3, -1, -1, -1]")) << images.output;
  std::filesystem::remove_all(dir);
}

std::string total_line(const std::string& output, const std::string& label) {
  std::smatch match;
  std::regex pattern("\n" + label + ": ([0-9,]+)");
  return std::regex_search(output, match, pattern) ? match[1].str() : "(none)";
}

// Parameter counts as torchvision 0.14 reports them (sum of p.numel() over model.parameters()).
TEST(Cli, SummaryTotalsEqualTorchvisionParameterCounts) {
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"resnet18", "11,689,512"},    {"resnet34", "21,797,672"},      {"resnet50", "25,557,032"},
      {"resnet101", "44,549,160"},   {"resnet152", "60,192,808"},     {"vgg16", "138,357,544"},
      {"vgg16_bn", "138,365,992"},   {"vgg19", "143,667,240"},        {"vgg19_bn", "143,678,248"},
      {"mobilenet_v2", "3,504,872"}, {"efficientnet_b0", "5,288,548"}};
  for (const auto& [arch, count] : expected) {
    auto run = graft("summary " + arch + " --input 64");
    ASSERT_EQ(run.status, 0) << arch << ": " << run.output;
    EXPECT_EQ(total_line(run.output, "Total params"), count) << arch;
    EXPECT_EQ(total_line(run.output, "Trainable params"), count) << arch;
  }
}

TEST(Cli, SummaryWithNewHeadAndFrozenBackbone) {
  auto run = graft("summary resnet50 --head avg,dropout:0.2,dense:512:relu,dense:10 --freeze all");
  ASSERT_EQ(run.status, 0) << run.output;
  // Backbone without fc: 25,557,032 - (2048*1000 + 1000) = 23,508,032. Head: 2048*512+512 + 512*10+10.
  EXPECT_EQ(total_line(run.output, "Total params"), "24,562,250");
  EXPECT_EQ(total_line(run.output, "Trainable params"), "1,054,218");
  EXPECT_EQ(total_line(run.output, "Non-trainable params"), "23,508,032");
  EXPECT_TRUE(std::regex_search(run.output, std::regex("layer4.2 \\(Bottleneck\\) +\\(None, 2048, 7, 7\\)")))
      << run.output;
  EXPECT_TRUE(std::regex_search(run.output, std::regex("fc.2 \\(Linear\\) +\\(None, 10\\) +5,130 +Y")))
      << run.output;
  EXPECT_TRUE(contains(run.output, "running statistics")) << run.output;
  // Shapes and counts need no weights: summary says nothing about them (#15; it warned of random weights).
  EXPECT_FALSE(contains(run.output, "random")) << run.output;

  auto last = graft("summary mobilenet_v2 --input 96 --freeze last:3");
  ASSERT_EQ(last.status, 0) << last.output;
  // last:3 leaves features.18's conv and BN and features.17's last BN trainable, plus the classifier.
  EXPECT_TRUE(std::regex_search(last.output, std::regex("features.17 \\(InvertedResidual\\).* partial")))
      << last.output;
  EXPECT_TRUE(std::regex_search(last.output, std::regex("features.16 \\(InvertedResidual\\).* N\n")))
      << last.output;
}

TEST(Cli, ClearErrorsOnBadInput) {
  auto unknown = graft("summary resnet5");
  EXPECT_EQ(unknown.status, 1);
  EXPECT_TRUE(contains(unknown.output, "unknown architecture 'resnet5'; did you mean 'resnet50'"))
      << unknown.output;
  auto tag = graft("summary resnet50.nope");
  EXPECT_EQ(tag.status, 1);
  EXPECT_TRUE(contains(tag.output, "no tag 'nope'")) << tag.output;
  auto head = graft("summary resnet18 --head avg,dense:x");
  EXPECT_EQ(head.status, 1);
  EXPECT_TRUE(contains(head.output, "'dense:x'")) << head.output;
  auto freeze = graft("summary resnet18 --freeze until:layer9");
  EXPECT_EQ(freeze.status, 1);
  EXPECT_TRUE(contains(freeze.output, "no layer named 'layer9'")) << freeze.output;

  auto dir = fresh_dir("bad");
  const auto bad = (dir / "broken.safetensors").string();
  std::ofstream(bad, std::ios::binary) << "\x10\x00\x00";  // shorter than the 8-byte header length
  auto corrupt = graft("summary resnet18 --weights " + bad);
  EXPECT_EQ(corrupt.status, 1);
  EXPECT_TRUE(contains(corrupt.output, bad)) << corrupt.output;

  // A file for another architecture: every misfit is named with both shapes.
  graft::write_safetensors((dir / "tiny.safetensors").string(),
                           {{"conv1.weight", torch::zeros({8, 3, 7, 7})}});
  auto wrong = graft("summary resnet18 --weights " + (dir / "tiny.safetensors").string());
  EXPECT_EQ(wrong.status, 1);
  EXPECT_TRUE(contains(wrong.output, "conv1.weight")) << wrong.output;
  EXPECT_TRUE(contains(wrong.output, "[64, 3, 7, 7]")) << wrong.output;
  EXPECT_TRUE(contains(wrong.output, "[8, 3, 7, 7]")) << wrong.output;
  EXPECT_TRUE(contains(wrong.output, "layer4.1.bn2.running_var")) << wrong.output;  // a missing one
  EXPECT_TRUE(contains(wrong.output, "hint: --no-strict loads what fits")) << wrong.output;

  // A model folder whose config.json is a folder is said so (it was "unknown architecture").
  std::filesystem::create_directories(dir / "hf" / "config.json");
  auto folder = graft("forward " + (dir / "hf").string() + " --inputs " + bad + " --out " +
                      (dir / "out.safetensors").string());
  EXPECT_EQ(folder.status, 1) << folder.output;
  EXPECT_TRUE(contains(folder.output, "config.json: is a folder, not a config.json")) << folder.output;
  std::filesystem::remove_all(dir);
}

// `graft forward` reproduces torchvision's outputs from the golden files (tests/models/make_golden.py).
TEST(Cli, ForwardMatchesTorchvision) {
  const std::string golden = GRAFT_GOLDEN_DIR;
  auto dir = fresh_dir("forward");
  for (const std::string arch : {"resnet18", "mobilenet_v2"}) {
    const std::string out = (dir / (arch + ".out.safetensors")).string();
    auto run = graft("forward " + arch + " --weights " + golden + "/" + arch +
                     ".weights.safetensors --inputs " + golden + "/" + arch + ".io.safetensors --out " + out);
    ASSERT_EQ(run.status, 0) << run.output;
    graft::SafeTensorsReader expected(golden + "/" + arch + ".io.safetensors");
    graft::SafeTensorsReader got(out);
    for (const std::string name : {"logits", "features"}) {
      const double diff = (got.load(name) - expected.load(name)).abs().max().item<double>();
      std::cout << "[forward] " << arch << " " << name << " max|diff|=" << diff << "\n";
      EXPECT_LE(diff, 1e-4) << arch << " " << name;
    }
  }
  // A fine-tuned file with another class count loads: the classifier adapts to the file.
  graft::SafeTensorsReader weights(golden + "/resnet18.weights.safetensors");
  graft::NamedTensors tensors;
  for (const auto& info : weights.tensors()) {
    torch::Tensor t = weights.load(info.name);
    if (info.name == "fc.weight") t = t.slice(0, 0, 7).clone();
    if (info.name == "fc.bias") t = t.slice(0, 0, 7).clone();
    tensors.emplace_back(info.name, t);
  }
  const std::string seven = (dir / "seven.safetensors").string();
  graft::write_safetensors(seven, tensors);
  const std::string out = (dir / "seven.out.safetensors").string();
  auto run = graft("forward resnet18 --weights " + seven + " --inputs " + golden +
                   "/resnet18.io.safetensors --out " + out);
  ASSERT_EQ(run.status, 0) << run.output;
  EXPECT_TRUE(contains(run.output, "logits [2, 7]")) << run.output;
  auto missing = graft("forward resnet18 --weights " + seven + " --inputs " + seven + " --out " + out);
  EXPECT_EQ(missing.status, 1);
  EXPECT_TRUE(contains(missing.output, "no tensor named 'pixel_values'")) << missing.output;
  // --out equal to --inputs (or to --weights) replaced the user's file; now it is refused and both stay.
  const std::string inputs = (dir / "inputs.safetensors").string();
  std::filesystem::copy_file(golden + "/resnet18.io.safetensors", inputs);
  const auto before = std::filesystem::file_size(inputs);
  for (const std::string& target : {inputs, seven}) {
    auto same = graft("forward resnet18 --weights " + seven + " --inputs " + inputs + " --out " + target);
    EXPECT_EQ(same.status, 1) << same.output;
    EXPECT_TRUE(contains(same.output,
                         "--out " + target + " is the file " + (target == inputs ? "--inputs" : "--weights")))
        << same.output;
  }
  EXPECT_EQ(std::filesystem::file_size(inputs), before);
  EXPECT_EQ(graft::SafeTensorsReader(seven).tensors().size(), tensors.size());
  std::filesystem::remove_all(dir);
}

// --weights takes the Keras formats too: the ml5 Tiny Darknet straight from its TF.js model.json gives
// TF.js's own logits on the reference images (shared/weights/tiny_darknet_tfjs/reference).
TEST(Cli, ForwardTakesTfjsWeightsDirectly) {
  const std::string weights = std::string(GRAFT_SHARED_DIR) + "/weights/tiny_darknet_tfjs";
  graft::SafeTensorsReader reference(weights + "/reference/reference.safetensors");
  auto dir = fresh_dir("tfjs");
  const std::string inputs = (dir / "in.safetensors").string(), out = (dir / "out.safetensors").string();
  graft::write_safetensors(inputs,
                           {{"pixel_values", reference.load("input").permute({0, 3, 1, 2}).contiguous()}});
  for (const std::string& source : {weights, weights + "/model.json"}) {
    auto run =
        graft("forward darknet_tiny.ml5 --weights " + source + " --inputs " + inputs + " --out " + out);
    ASSERT_EQ(run.status, 0) << run.output;
    graft::SafeTensorsReader got(out);
    const double diff = (got.load("logits") - reference.load("output")).abs().max().item<double>();
    std::cout << "[forward] darknet_tiny.ml5 from " << source << " logits max|diff|=" << diff << "\n";
    EXPECT_LE(diff, 1e-4);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
