// --precision and the autocast guard (graft/precision.h), and the float32 LayerNorm under it.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "graft/errors.h"
#include "graft/layer_norm.h"
#include "graft/precision.h"

namespace graft {
namespace {

// The kernel's view of the CPU, independent of graft's cpuid reading.
bool cpuinfo_has(const std::string& flag) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string word;
    while (words >> word)
      if (word == flag) return true;
    return false;
  }
  return false;
}

TEST(Precision, CpuSupportAgreesWithTheKernel) {
  const CpuBf16Support support = cpu_bf16_support();
  EXPECT_EQ(support.avx512_bf16, cpuinfo_has("avx512_bf16"));
  EXPECT_EQ(support.amx_bf16, cpuinfo_has("amx_bf16"));
  // oneDNN dispatches to its bf16 kernels where the CPU has them, unless told not to.
  if (support.native() && std::getenv("ONEDNN_MAX_CPU_ISA") == nullptr &&
      std::getenv("DNNL_MAX_CPU_ISA") == nullptr) {
    const std::string isa = onednn_isa();
    EXPECT_TRUE(isa == "avx512_core_bf16" || isa == "avx512_core_amx") << isa;
  }
}

TEST(Precision, ResolvesEachChoiceAndRefusesTheRestByName) {
  std::ostringstream log;
  EXPECT_EQ(resolve_precision("fp32", torch::kCPU, log), Precision::kFloat32);
  EXPECT_EQ(log.str(), "");
  const bool native = cpu_bf16_support().native();
  EXPECT_EQ(resolve_precision("bf16", torch::kCPU, log), Precision::kBFloat16);
  EXPECT_EQ(log.str().find("runs emulated") != std::string::npos, !native) << log.str();
  log.str("");
  EXPECT_EQ(resolve_precision("auto", torch::kCPU, log), native ? Precision::kBFloat16 : Precision::kFloat32);
  EXPECT_NE(log.str().find(native ? "--precision auto: bf16" : "--precision auto: fp32"), std::string::npos)
      << log.str();
  for (const auto& [text, words] : std::vector<std::pair<std::string, std::string>>{
           {"fp16", "--precision fp16: CPUs have no float16 kernels"},
           {"half", "--precision half: expected fp32, bf16, fp16 or auto"}}) {
    try {
      resolve_precision(text, torch::kCPU, log);
      ADD_FAILURE() << text << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(precision_name(Precision::kBFloat16), "bf16");
  EXPECT_EQ(precision_name(Precision::kFloat32), "fp32");
}

TEST(Precision, AutocastGuardSetsAndRestoresAtensState) {
  torch::nn::Linear linear(8, 4);
  const torch::Tensor x = torch::randn({2, 8});
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    Autocast fp32(Precision::kFloat32, torch::kCPU);
    EXPECT_FALSE(at::autocast::is_cpu_enabled()) << "float32 changes nothing";
    EXPECT_EQ(linear(x).scalar_type(), torch::kFloat);
  }
  {
    Autocast outer(Precision::kBFloat16, torch::kCPU);
    EXPECT_TRUE(at::autocast::is_cpu_enabled());
    EXPECT_EQ(at::autocast::get_autocast_cpu_dtype(), torch::kBFloat16);
    const torch::Tensor y = linear(x);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    // The product of bf16-rounded operands, summed in float32: within 2 x 2^-9 of each term's size.
    const torch::Tensor bound = (x.abs().matmul(linear->weight.abs().t()) + linear->bias.abs()) * (2.0 / 256);
    EXPECT_TRUE(
        ((y.to(torch::kFloat) - torch::nn::functional::linear(x, linear->weight, linear->bias)).abs() <=
         bound + 1e-6)
            .all()
            .item<bool>());
    {
      Autocast inner(Precision::kBFloat16, torch::kCPU);
      EXPECT_TRUE(at::autocast::is_cpu_enabled());
    }
    EXPECT_TRUE(at::autocast::is_cpu_enabled()) << "the inner guard gave back the outer's state";
    {
      Autocast off(Precision::kFloat32, torch::kCPU);
      EXPECT_TRUE(at::autocast::is_cpu_enabled()) << "float32 inside bf16 leaves it as it is";
    }
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(linear(x).scalar_type(), torch::kFloat);
}

TEST(Precision, FloatLayerNormNormalisesInFloat32) {
  FloatLayerNorm norm(torch::nn::LayerNormOptions({16}).eps(1e-5));
  torch::NoGradGuard no_grad;
  norm->weight.uniform_(0.5, 1.5);
  norm->bias.uniform_(-0.5, 0.5);
  torch::nn::LayerNorm plain(torch::nn::LayerNormOptions({16}).eps(1e-5));
  plain->weight.copy_(norm->weight);
  plain->bias.copy_(norm->bias);
  const torch::Tensor x = torch::randn({3, 5, 16});
  EXPECT_TRUE(torch::equal(norm(x), plain(x))) << "float32 inputs as torch::nn::LayerNorm";
  const torch::Tensor half = x.to(torch::kBFloat16);
  const torch::Tensor y = norm(half);
  EXPECT_EQ(y.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(y, plain(half.to(torch::kFloat))));
  Autocast autocast(Precision::kBFloat16, torch::kCPU);
  EXPECT_EQ(norm(half).scalar_type(), torch::kFloat) << "under autocast too";
}

}  // namespace
}  // namespace graft
