// bf16 mixed precision (graft/precision.h: ATen's autocast, layer norms and attention softmax in float32)
// against float32 references made by other code: the Hugging Face fixtures (transformers' BERT, GPT-2,
// ViT, float32) and TF.js' outputs of the real nsfwjs MobileNetV2 on real photos. Tolerances: tolerance.h's
// bf16_tolerance (rounding of every product's operands to 8 bits, layer after layer) on values, and the
// issue's accuracy criterion on directions: cosine similarity >= 0.999 to the float32 output.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <map>

#include "graft/bert.h"
#include "graft/gpt2.h"
#include "graft/precision.h"
#include "graft/registry.h"
#include "graft/run.h"
#include "graft/transfer.h"
#include "graft/transformers.h"
#include "graft/vit.h"
#include "graft/weights.h"
#include "layers/conv_bn.h"
#include "models/tolerance.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

std::map<std::string, torch::Tensor> read_map(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, tensor] : read_safetensors(path)) out[name] = tensor;
  return out;
}

std::string hf_dir(const std::string& model) {
  return std::string(GRAFT_SHARED_DIR) + "/fixtures/hf/" + model;
}

double cosine(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kDouble).flatten(), y = b.to(torch::kDouble).flatten();
  return (x.dot(y) / (x.norm() * y.norm())).item<double>();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

TextInputs bert_inputs(const std::map<std::string, torch::Tensor>& io) {
  TextInputs inputs;
  inputs.input_ids = io.at("input_ids");
  inputs.attention_mask = io.at("attention_mask");
  inputs.token_type_ids = io.at("token_type_ids");
  inputs.labels = io.at("labels");
  return inputs;
}

// Logits and loss of one fixture model under bf16 autocast, against transformers' float32 ones; the
// loss is cross-entropy of the logits, 2-Lipschitz in their max norm (logsumexp and the picked logit each
// move by at most the largest change), so it gets twice the logits' tolerance.
void expect_follows(const std::string& model, torch::nn::Module& module, const torch::Tensor& logits,
                    const torch::Tensor& loss, const std::map<std::string, torch::Tensor>& io) {
  const testing::ForwardDepth depth = testing::forward_depth(module);
  const double tolerance = testing::bf16_tolerance(depth, io.at("logits"));
  const double d_logits = max_abs_diff(logits, io.at("logits")), d_loss = max_abs_diff(loss, io.at("loss"));
  const double cos = cosine(logits, io.at("logits"));
  std::cout << "[bf16] " << model << ": logits max|diff| " << d_logits << " (tolerance " << tolerance
            << "), cosine " << cos << ", loss " << loss.item<double>() << " vs "
            << io.at("loss").item<double>() << "\n";
  EXPECT_LE(d_logits, tolerance) << model;
  EXPECT_GE(cos, 0.999) << model;
  EXPECT_EQ(loss.scalar_type(), torch::kFloat) << model << ": the loss is computed in float32";
  EXPECT_LE(d_loss, 2.0 * tolerance) << model;
}

TEST(MixedPrecision, TransformersFollowTheirFloat32References) {
  {
    auto model = load_hf_model(hf_dir("bert")).as<BertForSequenceClassificationImpl>();
    const auto io = read_map(hf_dir("bert") + "/expected.safetensors");
    model->eval();
    torch::NoGradGuard no_grad;
    const TextInputs inputs = bert_inputs(io);
    Autocast autocast(Precision::kBFloat16, torch::kCPU);
    const ClassifierOutput out = model->forward(inputs);
    EXPECT_EQ(out.base.pooler_output.scalar_type(), torch::kBFloat16) << "the pooler's Linear ran in bf16";
    expect_follows("bert", *model, out.logits, out.loss, io);
  }
  {
    auto model = load_hf_model(hf_dir("gpt2")).as<GPT2LMHeadModelImpl>();
    const auto io = read_map(hf_dir("gpt2") + "/expected.safetensors");
    model->eval();
    torch::NoGradGuard no_grad;
    CausalLMInputs inputs;
    inputs.input_ids = io.at("input_ids");
    inputs.labels = io.at("labels");
    Autocast autocast(Precision::kBFloat16, torch::kCPU);
    const CausalLMOutput out = model->forward(inputs);
    expect_follows("gpt2", *model, out.logits, out.loss, io);
  }
  {
    auto model = load_hf_model(hf_dir("vit")).as<ViTForImageClassificationImpl>();
    const auto io = read_map(hf_dir("vit") + "/expected.safetensors");
    model->eval();
    torch::NoGradGuard no_grad;
    Autocast autocast(Precision::kBFloat16, torch::kCPU);
    const ClassifierOutput out = model->forward(io.at("pixel_values"), io.at("labels"));
    expect_follows("vit", *model, out.logits, out.loss, io);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled()) << "each guard restores the state it found";
}

// A training step under autocast (forward and loss inside the guard, backward after it, as the Trainer
// runs it): weights and gradients stay float32, and the gradients of the encoder's weights (products of
// the forward's activations and the backward's errors, each rounded as the forward is) point where
// transformers' float32 gradients do. The classifier's and the word embeddings' gradients are sums over
// the fixture's two examples of terms of opposite sign and nearly equal size (the random model pools
// both sentences alike; p - y is +-0.5), a small difference of large terms in which bf16 rounding of the
// terms shows at several per cent: those are held only to keep their direction (cosine > 0.7).
TEST(MixedPrecision, TrainingStepKeepsFloat32GradientsAlongTheReference) {
  auto model = load_hf_model(hf_dir("bert")).as<BertForSequenceClassificationImpl>();
  const auto io = read_map(hf_dir("bert") + "/expected.safetensors");
  const auto step = read_map(hf_dir("bert") + "/expected_after_step.safetensors");
  model->eval();  // dropout off, as the fixture
  const TextInputs inputs = bert_inputs(io);
  torch::Tensor loss;
  {
    Autocast autocast(Precision::kBFloat16, torch::kCPU);
    loss = model->forward(inputs).loss;
  }
  loss.backward();
  auto params = model->named_parameters();
  int encoder = 0;
  for (const auto& [name, reference] : step) {
    if (name.rfind("grad.", 0) != 0) continue;
    const std::string param = name.substr(5);
    ASSERT_TRUE(params.contains(param)) << param;
    const torch::Tensor grad = params[param].grad();
    ASSERT_TRUE(grad.defined()) << param << " got no gradient";
    EXPECT_EQ(params[param].scalar_type(), torch::kFloat) << param;
    EXPECT_EQ(grad.scalar_type(), torch::kFloat) << param << ": gradients of float32 weights are float32";
    const double cos = cosine(grad, reference);
    const bool in_encoder = param.find(".encoder.layer.") != std::string::npos;
    std::cout << "[bf16] bert grad." << param << " cosine " << cos << "\n";
    EXPECT_GE(cos, in_encoder ? 0.99 : 0.7) << param;
    encoder += in_encoder;
  }
  EXPECT_GE(encoder, 1);
}

// The real nsfwjs MobileNetV2 (scripts/fetch-weights) on TF.js' preprocessed photos, frozen, through
// graft's fast path (BatchNorm folded into channels-last convolutions) in bf16, its depthwise convolutions
// in float32 (layers/conv_bn.cpp; in bf16 the cosine was 0.997): pooled features within the bf16
// tolerance of TF.js' float32 ones and along them (cosine >= 0.999 each), the same top class.
TEST(MixedPrecision, NsfwjsFeaturesKeepTheirDirectionInBf16) {
  const std::string reference_file =
      std::string(GRAFT_SHARED_DIR) + "/weights/nsfwjs_reference/mobilenet_v2/reference.safetensors";
  Backbone model = create_model("mobilenet_v2.nsfwjs");
  const LoadReport report = load_pretrained(*model);
  ASSERT_TRUE(report.ok()) << "run scripts/fetch-weights nsfwjs (scripts/test does): " << report.to_string();
  const SafeTensorsReader reference(reference_file);
  const torch::Tensor input = reference.load("input").permute({0, 3, 1, 2}).contiguous();
  const torch::Tensor ref_features = reference.load("features"), ref_output = reference.load("output");
  apply_freeze(*model, "all");  // frozen, as feature extraction has it: its conv + BatchNorm pairs fold
  model->eval();
  c10::InferenceMode inference;
  BatchNormFolding folding;
  torch::Tensor features, logits;
  {
    Autocast autocast(Precision::kBFloat16, torch::kCPU);
    const torch::Tensor map = model->forward_features(input);
    EXPECT_EQ(map.scalar_type(), torch::kBFloat16) << "the convolutions ran in bf16";
    features = model->custom_head()->pool(map).to(torch::kFloat);
    logits = model->forward_head(map).to(torch::kFloat);
  }
  const double tolerance = testing::bf16_tolerance(testing::forward_depth(*model), ref_features);
  const double diff = max_abs_diff(features, ref_features);
  std::cout << "[bf16] mobilenet_v2.nsfwjs features max|diff| " << diff << " (tolerance " << tolerance
            << ")\n";
  EXPECT_LE(diff, tolerance);
  for (int64_t i = 0; i < input.size(0); ++i) {
    const double cos = cosine(features[i], ref_features[i]);
    std::cout << "[bf16] image " << i << ": feature cosine " << cos << "\n";
    EXPECT_GE(cos, 0.999) << "image " << i;
    EXPECT_EQ(logits[i].argmax().item<int64_t>(), ref_output[i].argmax().item<int64_t>()) << "image " << i;
  }
}

}  // namespace
}  // namespace graft
