// graft's side of bench/vision: the figures bench/reference_vision.py measures for PyTorch, measured
// the same way, one JSON object per run on stdout.
//
//   graft_vision_bench forward --model NAME [--batch 32] [--size 224] [--reps 5] [--unfolded]
//       Frozen-backbone forward (pooled features), as graft's feature extraction runs it: InferenceMode,
//       BatchNorm folded into the convolutions in channels-last memory (--unfolded: the plain NCHW
//       modules, for comparison). One warm-up batch, then img_per_s is the median of --reps batches.
//   graft_vision_bench finetune --model NAME --top PREFIX [--batch 32] [--size 224] [--steps 4]
//       A fine-tune step with everything before PREFIX frozen (BatchNorm there on running statistics,
//       as graft trains), a new 10-class head, SGD momentum 0.9: zero_grad, forward, cross-entropy,
//       backward, step, inside a BatchNormFolding scope as graft's Trainer runs it. One warm-up step;
//       img_per_s from the median step.
//   graft_vision_bench matmul [--n 2048] [--reps 5]
//       The practical fp32 peak: GFLOP/s of an n x n x n matrix product through the BLAS and of a matrix
//       product of about the same size through oneDNN (a 1x1 convolution), median of --reps each;
//       gflop_per_s is the larger.
//   graft_vision_bench pipeline --images LIST [--size 224] [--reps 3]
//       The eval input pipeline on one thread: decode (DCT-scaled where it may) + resize the shorter
//       side + centre crop + normalise into a (3, size, size) tensor, for every file LIST names; median
//       images/s over --reps passes.
// Every run reports peak_rss_mb, the process's peak resident memory.
#include <c10/core/InferenceMode.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/precision.h"
#include "graft/registry.h"
#include "graft/runtime.h"
#include "graft/transfer.h"
#include "graft/vit.h"
#include "layers/conv_bn.h"
#include "timing.h"

namespace {

using graft::bench::Clock;
using graft::bench::median;
using graft::bench::seconds_since;
using nlohmann::json;

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

struct Args {
  std::vector<std::pair<std::string, std::string>> flags;
  std::vector<std::string> switches;

  static Args parse(int argc, char** argv) {
    Args args;
    for (int i = 2; i < argc; ++i) {
      const std::string word = argv[i];
      if (word == "--unfolded") {
        args.switches.push_back(word);
      } else if (word.rfind("--", 0) == 0 && i + 1 < argc) {
        args.flags.emplace_back(word, argv[++i]);
      } else {
        throw graft::Error("graft_vision_bench: unexpected argument '" + word + "'");
      }
    }
    return args;
  }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    for (const auto& [key, value] : flags)
      if (key == name) return value;
    if (fallback.empty()) throw graft::Error("graft_vision_bench: missing " + name);
    return fallback;
  }
  int64_t integer(const std::string& name, int64_t fallback) const {
    return std::stoll(get(name, std::to_string(fallback)));
  }
  bool has(const std::string& name) const {
    return std::find(switches.begin(), switches.end(), name) != switches.end();
  }
};

// --precision fp32 (default) | bf16.
graft::Precision precision_of(const Args& args) {
  const std::string text = args.get("--precision", "fp32");
  if (text != "fp32" && text != "bf16") throw graft::Error("--precision must be fp32 or bf16, got " + text);
  return text == "bf16" ? graft::Precision::kBFloat16 : graft::Precision::kFloat32;
}

json forward(const Args& args) {
  const std::string name = args.get("--model");
  const int64_t batch = args.integer("--batch", 32), size = args.integer("--size", 224);
  const int64_t reps = args.integer("--reps", 5);
  const bool folded = !args.has("--unfolded");
  const graft::Precision precision = precision_of(args);
  torch::manual_seed(0);
  // vit_b_16: google/vit-base-patch16-224's shape (graft's Hugging Face ViT); its pooled output is the
  // [CLS] token's, so the logits of its 1000-class Linear stand for it (0.1% of the work).
  const bool vit = name == "vit_b_16";
  graft::Backbone model =
      vit ? graft::Backbone(std::make_shared<graft::ViTForImageClassificationImpl>(graft::ViTConfig{}))
          : graft::create_model(name);
  model->eval();
  graft::apply_freeze(*model, "all");
  const torch::Tensor images = torch::randn({batch, 3, size, size});
  c10::InferenceMode inference;
  graft::BatchNormFolding::set_enabled(folded);
  graft::BatchNormFolding folding;
  // As graft's feature extraction runs it: the autocast guard around the batch, float32 features out.
  auto run = [&] {
    graft::Autocast autocast(precision, torch::kCPU);
    if (vit) return model->forward(images).to(torch::kFloat);
    return model->forward_features(images).mean({2, 3}).to(torch::kFloat);
  };
  const torch::Tensor features = run();  // warm-up (and folding)
  std::vector<double> times;
  for (int64_t i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    run();
    times.push_back(seconds_since(start));
  }
  return {{"mode", "forward"},
          {"model", name},
          {"folded", folded},
          {"precision", graft::precision_name(precision)},
          {"batch", batch},
          {"size", size},
          {"img_per_s", batch / median(times)},
          {"features", features.size(1)},
          {"peak_rss_mb", peak_rss_mb()}};
}

json finetune(const Args& args) {
  const std::string name = args.get("--model"), top = args.get("--top");
  const int64_t batch = args.integer("--batch", 32), size = args.integer("--size", 224);
  const int64_t steps = args.integer("--steps", 4);
  const graft::Precision precision = precision_of(args);
  torch::manual_seed(0);
  graft::Backbone model = graft::create_model(name);
  model->reset_classifier(10);
  graft::apply_freeze(*model, "until:" + top);
  model->train();
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  torch::optim::SGD optimizer(trainable, torch::optim::SGDOptions(0.001).momentum(0.9));
  const torch::Tensor images = torch::randn({batch, 3, size, size});
  const torch::Tensor labels = torch::randint(0, 10, {batch}, torch::kLong);
  graft::BatchNormFolding folding;
  std::vector<double> times;
  for (int64_t i = 0; i <= steps; ++i) {
    const auto start = Clock::now();
    optimizer.zero_grad();
    torch::Tensor loss;
    {
      graft::Autocast autocast(precision, torch::kCPU);  // forward and loss, as graft's Trainer
      loss = torch::nn::functional::cross_entropy(model->forward(images), labels);
    }
    loss.backward();
    optimizer.step();
    if (i > 0) times.push_back(seconds_since(start));  // step 0 is the warm-up
  }
  return {{"mode", "finetune"},
          {"model", name},
          {"top", top},
          {"precision", graft::precision_name(precision)},
          {"batch", batch},
          {"size", size},
          {"img_per_s", batch / median(times)},
          {"trainable_params", graft::count_parameters(*model, "", true)},
          {"peak_rss_mb", peak_rss_mb()}};
}

json matmul(const Args& args) {
  const int64_t n = args.integer("--n", 2048), reps = args.integer("--reps", 5);
  c10::InferenceMode inference;
  const torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n});
  torch::mm(a, b);
  std::vector<double> times;
  for (int64_t i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    torch::mm(a, b);
    times.push_back(seconds_since(start));
  }
  const double blas = 2.0 * n * n * n / median(times) / 1e9;
  // The same kind of product through oneDNN, which runs the convolutions: a 1x1 convolution over
  // channels-last (32 x 32 x 32) x 1024 -> 1024 is a (32768 x 1024) x (1024 x 1024) matrix product.
  const torch::Tensor x = torch::randn({32, 1024, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
  const torch::Tensor w = torch::randn({1024, 1024, 1, 1}).contiguous(torch::MemoryFormat::ChannelsLast);
  torch::conv2d(x, w);
  times.clear();
  for (int64_t i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    torch::conv2d(x, w);
    times.push_back(seconds_since(start));
  }
  const double onednn = 2.0 * 32768 * 1024 * 1024 / median(times) / 1e9;
  return {{"mode", "matmul"},
          {"n", n},
          {"blas_gflop_per_s", blas},
          {"onednn_gflop_per_s", onednn},
          {"gflop_per_s", std::max(blas, onednn)},
          {"peak_rss_mb", peak_rss_mb()}};
}

json pipeline(const Args& args) {
  std::ifstream list(args.get("--images"));
  std::vector<std::string> paths;
  for (std::string line; std::getline(list, line);)
    if (!line.empty()) paths.push_back(line);
  if (paths.empty())
    throw graft::Error("graft_vision_bench pipeline: " + args.get("--images") + " names no file");
  graft::TransformConfig config;  // torchvision's eval recipe: resize 256, centre crop 224, normalise
  config.size = args.integer("--size", 224);
  const int64_t reps = args.integer("--reps", 3);
  std::mt19937_64 rng(0);
  std::vector<double> times;
  double checksum = 0;
  for (int64_t r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    for (const auto& path : paths)
      checksum += graft::load_and_transform(path, config, rng)[0][0][0].item<float>();
    times.push_back(seconds_since(start));
  }
  return {{"mode", "pipeline"},
          {"images", paths.size()},
          {"img_per_s", paths.size() / median(times)},
          {"checksum", checksum},
          {"peak_rss_mb", peak_rss_mb()}};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw graft::Error("usage: graft_vision_bench forward|finetune|matmul|pipeline [flags]");
    const std::string mode = argv[1];
    const Args args = Args::parse(argc, argv);
    graft::set_threads(static_cast<int>(args.integer("--threads", 0)));
    graft::retain_freed_memory();  // as the graft program does
    json out;
    if (mode == "forward")
      out = forward(args);
    else if (mode == "finetune")
      out = finetune(args);
    else if (mode == "matmul")
      out = matmul(args);
    else if (mode == "pipeline")
      out = pipeline(args);
    else
      throw graft::Error("graft_vision_bench: unknown mode '" + mode + "'");
    out["threads"] = torch::get_num_threads();
    std::cout << out.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "graft_vision_bench: " << e.what() << "\n";
    return 1;
  }
}
