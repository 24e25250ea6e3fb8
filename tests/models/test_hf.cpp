// Golden parity of graft's BERT, RoBERTa, DistilBERT, GPT-2, ViT and Llama against Hugging Face
// transformers v4.31 ({Bert,Roberta,DistilBert}ForSequenceClassification, GPT2LMHeadModel,
// ViTForImageClassification, LlamaForCausalLM): shared/fixtures/hf holds tiny configs, their weights, inputs
// and every output (logits, loss, hidden_states.i, last_hidden_state, pooler_output), and the parameters and
// gradients after one torch.optim.AdamW step. Each model loads config.json + model.safetensors strictly by
// Hugging Face's names and must reproduce every tensor within float32 tolerance; each comparison prints its
// largest difference and a failure names the tensor. Further tests: the GPT-2 key/value cache, Hugging Face's
// loading variants (tied lm_head present or not, base model <-> model with head, a new head), config.json
// errors, ViT as an image backbone, and freezing. Last, LoRA adapters against the real PEFT
// (shared/fixtures/peft).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "graft/bert.h"
#include "graft/distilbert.h"
#include "graft/files.h"
#include "graft/gpt2.h"
#include "graft/json_file.h"
#include "graft/llama.h"
#include "graft/lora.h"
#include "graft/registry.h"
#include "graft/roberta.h"
#include "graft/strings.h"
#include "graft/summary.h"
#include "graft/transfer.h"
#include "graft/transformers.h"
#include "graft/vit.h"
#include "graft/weights.h"
#include "layers/conv_bn.h"
#include "layers/linear.h"
#include "layers/lora.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

// float32 against float32 of the same operations: the fixture README expects about 1e-5 relative;
// float32 vs float64 of the reference itself differs by ~1e-6 (stats.json). A tensor passes when
// max |got - expected| <= kRelTolerance * max |expected| + kAbsTolerance.
constexpr double kRelTolerance = 1e-5;
constexpr double kAbsTolerance = 1e-7;

std::string fixture_dir(const std::string& model) {
  return std::string(GRAFT_SHARED_DIR) + "/fixtures/hf/" + model;
}

std::map<std::string, torch::Tensor> read_map(const std::string& path) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, tensor] : read_safetensors(path)) out[name] = tensor;
  return out;
}

// Largest absolute difference; the check; a message naming the tensor, shape, place and both values.
struct Comparison {
  double max_abs = 0, scale = 0;
  bool ok = false;
  std::string message;
};

Comparison compare(const std::string& model, const std::string& name, const torch::Tensor& got,
                   const torch::Tensor& expected) {
  Comparison c;
  std::ostringstream out;
  if (!got.defined() || got.sizes() != expected.sizes()) {
    out << model << ": " << name << " has shape "
        << (got.defined() ? shape_str(got.sizes().vec()) : "undefined") << ", Hugging Face's is "
        << shape_str(expected.sizes().vec());
    c.message = out.str();
    return c;
  }
  const torch::Tensor g = got.detach().to(torch::kDouble).flatten(),
                      e = expected.to(torch::kDouble).flatten();
  const torch::Tensor delta = (g - e).abs();
  const int64_t at = delta.argmax().item<int64_t>();
  c.max_abs = delta[at].item<double>();
  c.scale = e.abs().max().item<double>();
  const double tolerance = kRelTolerance * c.scale + kAbsTolerance;
  c.ok = c.max_abs <= tolerance;
  out << model << ": " << name << " max |diff| " << std::setprecision(3) << c.max_abs << " (max |expected| "
      << c.scale << ", tolerance " << tolerance << ") at flat index " << at << " of "
      << shape_str(got.sizes().vec()) << ": got " << std::setprecision(9) << g[at].item<double>()
      << ", expected " << e[at].item<double>();
  c.message = out.str();
  return c;
}

// Compares and prints one line per tensor (the report's numbers).
void expect_close(const std::string& model, const std::string& name, const torch::Tensor& got,
                  const torch::Tensor& expected) {
  const Comparison c = compare(model, name, got, expected);
  std::cout << "[hf parity] " << model << " " << std::left << std::setw(58) << name << " max|diff| "
            << std::scientific << std::setprecision(2) << c.max_abs << std::defaultfloat << "\n";
  EXPECT_TRUE(c.ok) << c.message;
}

// The parameter after one AdamW step, against Hugging Face's. The first step moves each element by
// lr * g / (|g| + eps) (m_hat = g, v_hat = g^2) after the decay p * (1 - lr * wd), so a gradient difference
// dg reaches the parameter amplified by the slope of g / (|g| + eps), which is eps / (|g| + eps)^2: up to
// 1 / eps = 1e8 for an element whose gradient is near 0, where a 2e-10 gradient difference (float32 noise,
// which differs between CPUs' kernels) becomes a 2e-5 update difference. The bound per element, from the
// gradient difference this run actually has (the gradients themselves are checked above):
//   lr * eps * dg / (max(0, |g_ref| - dg) + eps)^2, at most 2 lr (the update never exceeds lr),
// plus float32 rounding of the step: a few ulps of |p| and of the lr-sized update.
void expect_step_close(const std::string& model, const std::string& name, const torch::Tensor& got,
                       const torch::Tensor& expected, const torch::Tensor& our_grad,
                       const torch::Tensor& ref_grad) {
  constexpr double kLr = 1e-3, kEps = 1e-8;  // fixture_adamw's
  constexpr double kUlp = 1.0 / (1 << 23);   // float32's relative rounding step
  ASSERT_EQ(got.sizes(), expected.sizes()) << model << ": " << name;
  const torch::Tensor p = got.detach().to(torch::kDouble), e = expected.to(torch::kDouble);
  const torch::Tensor g_ref = ref_grad.to(torch::kDouble);
  const torch::Tensor dg = (our_grad.to(torch::kDouble) - g_ref).abs();
  const torch::Tensor nearest = (g_ref.abs() - dg).clamp_min(0.0) + kEps;
  const torch::Tensor amplified = (kLr * kEps * dg / (nearest * nearest)).clamp_max(2 * kLr);
  const torch::Tensor tolerance = amplified + 4 * kUlp * e.abs() + 8 * kUlp * kLr;
  const torch::Tensor delta = (p - e).abs();
  const torch::Tensor excess = delta - tolerance;
  const int64_t at = excess.flatten().argmax().item<int64_t>();
  std::cout << "[hf parity] " << model << " " << std::left << std::setw(58) << (name + " (after step)")
            << " max|diff| " << std::scientific << std::setprecision(2) << delta.max().item<double>()
            << std::defaultfloat << "\n";
  EXPECT_LE(excess.flatten()[at].item<double>(), 0.0)
      << model << ": " << name << " (after step) differs by " << delta.flatten()[at].item<double>()
      << " at flat index " << at << ", more than the " << tolerance.flatten()[at].item<double>()
      << " that its gradient difference " << dg.flatten()[at].item<double>() << " (reference gradient "
      << g_ref.flatten()[at].item<double>() << ") and rounding allow";
}

HfModel load_fixture(const std::string& model, HfLoadOptions options = {}) {
  HfModel loaded = load_hf_model(fixture_dir(model), options);
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  return loaded;
}

torch::optim::AdamW fixture_adamw(std::vector<torch::Tensor> params) {
  // The fixture's optimiser: one group, weight decay on every parameter.
  return torch::optim::AdamW(
      std::move(params),
      torch::optim::AdamWOptions(1e-3).betas(std::make_tuple(0.9, 0.999)).eps(1e-8).weight_decay(0.01));
}

// One AdamW step from the fixture weights: loss, the gradients of the stored parameters, the updated
// parameters. `forward_loss` runs the model in eval mode and returns its loss; `graft_name` turns a
// fixture's parameter name into the model's (PEFT's in-memory names differ from graft's).
void check_adamw_step(const std::string& model_name, const std::map<std::string, torch::Tensor>& expected,
                      torch::nn::Module& model, const std::function<torch::Tensor()>& forward_loss,
                      const std::function<std::string(const std::string&)>& graft_name) {
  model.eval();  // dropout off, as the fixture
  auto optimizer = fixture_adamw(model.parameters());
  optimizer.zero_grad();
  torch::Tensor loss = forward_loss();
  loss.backward();
  auto params = model.named_parameters();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& [name, tensor] : expected) {
    if (name.rfind("grad.", 0) != 0) continue;
    const std::string param = graft_name(name.substr(5));
    ASSERT_TRUE(params.contains(param)) << model_name << ": the model has no parameter " << param;
    ASSERT_TRUE(params[param].grad().defined()) << model_name << ": " << param << " got no gradient";
    grads[param] = params[param].grad().clone();
  }
  optimizer.step();
  expect_close(model_name, "loss (step)", loss, expected.at("loss"));
  for (const auto& [name, tensor] : expected) {
    if (name.rfind("grad.", 0) != 0) continue;
    expect_close(model_name, "grad." + graft_name(name.substr(5)), grads[graft_name(name.substr(5))], tensor);
  }
  for (const auto& [name, tensor] : expected) {
    if (name.rfind("grad.", 0) == 0 || name == "loss") continue;
    const std::string param = graft_name(name);
    ASSERT_TRUE(params.contains(param)) << model_name << ": the model has no parameter " << param;
    ASSERT_TRUE(grads.count(param)) << model_name << ": the fixture has no grad." << name;
    expect_step_close(model_name, param, params[param], tensor, grads[param], expected.at("grad." + name));
  }
}

void check_adamw_step(const std::string& model_name, torch::nn::Module& model,
                      const std::function<torch::Tensor()>& forward_loss) {
  check_adamw_step(model_name, read_map(fixture_dir(model_name) + "/expected_after_step.safetensors"), model,
                   forward_loss, [](const std::string& name) { return name; });
}

// ---------------------------------------------------------------------------------------------------
// BERT

TextInputs bert_inputs(const std::map<std::string, torch::Tensor>& io) {
  TextInputs inputs;
  inputs.input_ids = io.at("input_ids");
  inputs.attention_mask = io.at("attention_mask");
  inputs.token_type_ids = io.at("token_type_ids");
  inputs.labels = io.at("labels");
  inputs.output_hidden_states = true;
  return inputs;
}

TEST(HfBert, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("bert");
  ASSERT_EQ(loaded.architecture, "BertForSequenceClassification");
  auto model = loaded.as<BertForSequenceClassificationImpl>();
  EXPECT_EQ(count_parameters(*model), 47362);  // stats.json params
  EXPECT_EQ(model->config().num_labels(), 2);
  EXPECT_EQ(model->config().hidden_act, "gelu");
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const ClassifierOutput out = model->forward(bert_inputs(io));
  ASSERT_EQ(out.base.hidden_states.size(), 4u);
  for (size_t i = 0; i < out.base.hidden_states.size(); ++i) {
    const std::string name = "hidden_states." + std::to_string(i);
    expect_close("bert", name, out.base.hidden_states[i], io.at(name));
  }
  expect_close("bert", "last_hidden_state", out.base.last_hidden_state, io.at("last_hidden_state"));
  expect_close("bert", "pooler_output", out.base.pooler_output, io.at("pooler_output"));
  expect_close("bert", "logits", out.logits, io.at("logits"));
  expect_close("bert", "loss", out.loss, io.at("loss"));
}

TEST(HfBert, AdamWStepMatchesTransformers) {
  auto model = load_fixture("bert").as<BertForSequenceClassificationImpl>();
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  check_adamw_step("bert", *model, [&] { return model->forward(bert_inputs(io)).loss; });
}

// The base model from the classification checkpoint: "bert." is dropped, the classifier skipped.
TEST(HfBert, BaseModelLoadsFromCheckpointWithHead) {
  HfLoadOptions options;
  options.architecture = "BertModel";
  HfModel loaded = load_hf_model(fixture_dir("bert"), options);
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  EXPECT_EQ(loaded.report.skipped, (std::vector<std::string>{"classifier.bias", "classifier.weight"}));
  auto model = loaded.as<BertModelImpl>();
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const EncoderOutput out = model->forward(bert_inputs(io));
  expect_close("bert base", "last_hidden_state", out.last_hidden_state, io.at("last_hidden_state"));
  expect_close("bert base", "pooler_output", out.pooler_output, io.at("pooler_output"));
  EXPECT_THROW(loaded.as<BertForSequenceClassificationImpl>(), Error);
}

// A base-model file (names without "bert.") into a model with a head, as from_pretrained: the prefix is
// added, the new classifier is reported missing (strict) or kept fresh when asked for.
TEST(HfBert, BaseCheckpointLoadsIntoModelWithHead) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_bert_base_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("bert") + "/config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  NamedTensors base;
  for (auto& [name, tensor] : read_safetensors(fixture_dir("bert") + "/model.safetensors")) {
    if (name.rfind("bert.", 0) == 0) base.emplace_back(name.substr(5), tensor);
  }
  write_safetensors((dir / "model.safetensors").string(), base);

  try {
    load_hf_model(dir.string());
    ADD_FAILURE() << "strict loading without classifier weights should throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("classifier.weight [2, 32]"), std::string::npos) << e.what();
  }
  HfLoadOptions options;
  options.num_labels = 5;  // a new head: Hugging Face's fine-tuning start
  HfModel loaded = load_hf_model(dir.string(), options);
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  auto model = loaded.as<BertForSequenceClassificationImpl>();
  EXPECT_EQ(model->classifier->weight.sizes(), torch::IntArrayRef({5, 32}));
  EXPECT_EQ(model->config().id2label.back(), "LABEL_4");
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  expect_close("bert new head", "pooler_output", model->forward(bert_inputs(io)).base.pooler_output,
               io.at("pooler_output"));
  fs::remove_all(dir);
}

// A sharded checkpoint (model-0000x-of-0000y.safetensors + model.safetensors.index.json, as
// save_pretrained writes one past max_shard_size) loads as the single file does; an index that names a
// missing shard, a shard outside the folder, or a tensor its shard lacks is refused by name.
TEST(HfBert, ShardedCheckpointLoadsThroughItsIndex) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_bert_sharded_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("bert") + "/config.json", dir / "config.json");
  const NamedTensors all = read_safetensors(fixture_dir("bert") + "/model.safetensors");
  NamedTensors first(all.begin(), all.begin() + all.size() / 2),
      second(all.begin() + all.size() / 2, all.end());
  write_safetensors((dir / "model-00001-of-00002.safetensors").string(), first);
  write_safetensors((dir / "model-00002-of-00002.safetensors").string(), second);
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (const auto& [name, tensor] : first) index["weight_map"][name] = "model-00001-of-00002.safetensors";
  for (const auto& [name, tensor] : second) index["weight_map"][name] = "model-00002-of-00002.safetensors";
  auto write_index = [&](const nlohmann::json& j) {
    std::ofstream(dir / "model.safetensors.index.json") << j.dump();
  };
  write_index(index);
  HfModel loaded = load_hf_model(dir.string());
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  EXPECT_EQ(loaded.weights_path, (dir / "model.safetensors.index.json").string());
  EXPECT_EQ(loaded.report.loaded.size(), all.size());
  {
    auto model = loaded.as<BertForSequenceClassificationImpl>();
    const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
    model->eval();
    torch::NoGradGuard no_grad;
    expect_close("bert sharded", "logits", model->forward(bert_inputs(io)).logits, io.at("logits"));
  }
  EXPECT_EQ(SafeTensorsSet((dir / "model.safetensors.index.json").string()).files().size(), 2u);

  auto message_of = [&](const nlohmann::json& j) -> std::string {
    write_index(j);
    try {
      load_hf_model(dir.string());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  nlohmann::json missing = index;
  missing["weight_map"][first.front().first] = "model-00003-of-00003.safetensors";
  EXPECT_NE(message_of(missing).find("model-00003-of-00003.safetensors, which is not there"),
            std::string::npos)
      << message_of(missing);
  nlohmann::json outside = index;
  outside["weight_map"][first.front().first] = "../model.safetensors";
  EXPECT_NE(message_of(outside).find("a file name beside the index"), std::string::npos)
      << message_of(outside);
  nlohmann::json misplaced = index;
  misplaced["weight_map"][first.front().first] = "model-00002-of-00002.safetensors";
  EXPECT_NE(message_of(misplaced).find("which does not hold it"), std::string::npos) << message_of(misplaced);
  EXPECT_NE(message_of(nlohmann::json::array()).find("weight_map"), std::string::npos);
  fs::remove_all(dir);
}

TEST(HfBert, LoadReportNamesMismatchedShapes) {
  nlohmann::json config = read_json_file(fixture_dir("bert") + "/config.json");
  config["intermediate_size"] = 48;
  BertForSequenceClassification model(BertConfig::from_json(config));
  try {
    load_hf_weights(*model, fixture_dir("bert") + "/model.safetensors", "bert");
    ADD_FAILURE() << "a wrong intermediate_size should not load";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(
        message.find(
            "bert.encoder.layer.0.intermediate.dense.weight: model expects [48, 32], source has [64, 32]"),
        std::string::npos)
        << message;
  }
  LoadOptions relaxed;
  relaxed.strict = false;
  const LoadReport report =
      load_hf_weights(*model, fixture_dir("bert") + "/model.safetensors", "bert", relaxed);
  EXPECT_EQ(report.mismatched.size(), 9u);  // 3 layers x (intermediate weight, bias, output weight)
}

TEST(HfBert, ConfigErrorsNameFileAndKey) {
  const std::string source = "some/config.json";
  nlohmann::json config = read_json_file(fixture_dir("bert") + "/config.json");
  auto message_of = [&](const nlohmann::json& j) -> std::string {
    try {
      BertConfig::from_json(j, source);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  nlohmann::json bad = config;
  bad["hidden_size"] = "large";
  EXPECT_NE(message_of(bad).find("some/config.json: key 'hidden_size' must be an integer"), std::string::npos)
      << message_of(bad);
  bad = config;
  bad["hidden_act"] = "gelu_42";
  EXPECT_NE(message_of(bad).find("'hidden_act'"), std::string::npos) << message_of(bad);
  EXPECT_NE(message_of(bad).find("gelu_42"), std::string::npos) << message_of(bad);
  bad = config;
  bad["num_attention_heads"] = 5;
  EXPECT_NE(message_of(bad).find("'hidden_size' (32) must be a multiple of 'num_attention_heads' (5)"),
            std::string::npos)
      << message_of(bad);
  bad = config;
  bad["position_embedding_type"] = "relative_key";
  EXPECT_NE(message_of(bad).find("position_embedding_type"), std::string::npos) << message_of(bad);
  bad = config;
  bad["model_type"] = "distilbert";  // RoBERTa's and XLM-R's configs are BERT's; DistilBERT's are not
  EXPECT_NE(message_of(bad).find("model_type"), std::string::npos) << message_of(bad);
  // A LayerNorm epsilon of 0 or less gave NaN outputs with exit code 0 (#14.16); GPT-2 and ViT read theirs
  // through the same check.
  for (double eps : {0.0, -1e-12}) {
    bad = config;
    bad["layer_norm_eps"] = eps;
    EXPECT_NE(message_of(bad).find("some/config.json: key 'layer_norm_eps' must be LayerNorm's epsilon"),
              std::string::npos)
        << message_of(bad);
  }
  nlohmann::json gpt2 = read_json_file(fixture_dir("gpt2") + "/config.json");
  gpt2["layer_norm_epsilon"] = 0;
  EXPECT_THROW(GPT2Config::from_json(gpt2, source), FormatError);
  nlohmann::json vit = read_json_file(fixture_dir("vit") + "/config.json");
  vit["layer_norm_eps"] = -1;
  EXPECT_THROW(ViTConfig::from_json(vit, source), FormatError);

  // Keys save_pretrained omits take BertConfig's defaults.
  nlohmann::json sparse = {{"model_type", "bert"}, {"hidden_size", 64}, {"num_attention_heads", 4}};
  const BertConfig parsed = BertConfig::from_json(sparse, source);
  EXPECT_EQ(parsed.vocab_size, 30522);
  EXPECT_EQ(parsed.num_hidden_layers, 12);
  EXPECT_EQ(parsed.num_labels(), 2);
  EXPECT_DOUBLE_EQ(parsed.layer_norm_eps, 1e-12);
}

TEST(HfBert, FolderWithoutModelTypeOrWeightsIsExplained) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_bad_" + std::to_string(getpid()));
  fs::create_directories(dir);
  try {
    load_hf_model(dir.string());
    ADD_FAILURE() << "an empty folder should not load";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors"), std::string::npos) << e.what();
  }
  fs::copy_file(fixture_dir("bert") + "/model.safetensors", dir / "model.safetensors");
  std::ofstream(dir / "config.json") << R"({"hidden_size": 32})";
  try {
    load_hf_model(dir.string());
    ADD_FAILURE() << "a config.json without model_type or architectures should not load";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: key 'model_type' is missing"), std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

// A trained text run's config.json is written from the typed values (#14.15): to_json reads back through
// from_json to the same configuration, labels included, and holds none of the source's other keys.
TEST(HfConfig, ToJsonReadsBackToTheSameConfiguration) {
  nlohmann::json source = read_json_file(fixture_dir("bert") + "/config.json");
  source["task_specific_params"] = {{"junk", {1, 2, 3}}};
  BertConfig bert = BertConfig::from_json(source, "bert/config.json");
  bert.id2label = {"negative", "positive", "neutral"};
  const nlohmann::json written = bert.to_json();
  EXPECT_FALSE(written.contains("task_specific_params"));
  const BertConfig again = BertConfig::from_json(written, "written");
  EXPECT_EQ(again.id2label, bert.id2label);
  EXPECT_EQ(again.hidden_size, bert.hidden_size);
  EXPECT_EQ(again.num_hidden_layers, bert.num_hidden_layers);
  EXPECT_EQ(again.max_position_embeddings, bert.max_position_embeddings);
  EXPECT_EQ(again.layer_norm_eps, bert.layer_norm_eps);
  EXPECT_EQ(again.pad_token_id, bert.pad_token_id);
  EXPECT_EQ(written["label2id"]["neutral"], 2);
  const GPT2Config gpt2 = GPT2Config::from_json(read_json_file(fixture_dir("gpt2") + "/config.json"), "gpt2");
  const GPT2Config gpt2_again = GPT2Config::from_json(gpt2.to_json(), "written");
  EXPECT_EQ(gpt2_again.n_positions, gpt2.n_positions);
  EXPECT_EQ(gpt2_again.n_embd, gpt2.n_embd);
  EXPECT_EQ(gpt2_again.n_inner, gpt2.n_inner);
  EXPECT_EQ(gpt2_again.activation_function, gpt2.activation_function);
  EXPECT_EQ(gpt2_again.layer_norm_epsilon, gpt2.layer_norm_epsilon);
  EXPECT_EQ(gpt2_again.eos_token_id, gpt2.eos_token_id);
  nlohmann::json llama_source = read_json_file(fixture_dir("llama") + "/config.json");
  llama_source["rope_scaling"] = {
      {"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 64}};
  llama_source["rope_theta"] = 500000.0;
  const LlamaConfig llama = LlamaConfig::from_json(llama_source, "llama");
  const nlohmann::json llama_written = llama.to_json();
  const LlamaConfig llama_again = LlamaConfig::from_json(llama_written, "written");
  EXPECT_EQ(llama_again.to_json(), llama_written);
  EXPECT_EQ(llama_again.num_key_value_heads, 2);
  EXPECT_EQ(llama_again.rope_scaling_type, "llama3");
  EXPECT_EQ(llama_again.rope_original_max_positions, 64);
  EXPECT_EQ(llama_again.rope_theta, 500000.0);
  EXPECT_EQ(llama_again.pad_token_id, std::optional<int64_t>(0));
  EXPECT_FALSE(llama_again.tie_word_embeddings);
}

// Sizes that would allocate without end are refused by key before the model is built (#14.14): a config
// that disagrees with its weights' header (100,000 layers beside a 2-layer file), a vocabulary of 10^12,
// a billion labels. Each used to take minutes and gigabytes, or end in an allocator's message.
TEST(HfBert, ConfigSizesAreCheckedBeforeAnythingIsAllocated) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_sizes_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("bert") + "/model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  const nlohmann::json config = read_json_file(fixture_dir("bert") + "/config.json");
  auto message_with = [&](const char* key, const nlohmann::json& value) -> std::string {
    nlohmann::json changed = config;
    changed[key] = value;
    std::ofstream(dir / "config.json") << changed.dump();
    const auto start = std::chrono::steady_clock::now();
    std::string message;
    try {
      load_hf_model(dir.string());
    } catch (const Error& e) {
      message = e.what();
    }
    // Refused from the header and the config alone: no model of that size was built.
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0) << key;
    return message;
  };
  const int64_t layers = config["num_hidden_layers"].get<int64_t>();
  const std::string deep = message_with("num_hidden_layers", 100000);
  EXPECT_NE(deep.find("key 'num_hidden_layers' is 100000 but"), std::string::npos) << deep;
  EXPECT_NE(deep.find("holds " + std::to_string(layers) + " layers"), std::string::npos) << deep;
  const std::string wide = message_with("vocab_size", 1000000000000LL);
  EXPECT_NE(wide.find("key 'vocab_size' is 1000000000000 but"), std::string::npos) << wide;
  EXPECT_NE(wide.find("word_embeddings.weight of shape [600, 32]"), std::string::npos) << wide;
  // Without weights (a model from scratch) the sizes have bounds of their own.
  nlohmann::json huge = config;
  huge["vocab_size"] = 1000000000000LL;
  std::ofstream(dir / "scratch.json") << huge.dump();
  try {
    build_hf_model((dir / "scratch.json").string());
    ADD_FAILURE() << "a vocabulary of 10^12 should not be built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key 'vocab_size' must lie in 1..16777216"), std::string::npos)
        << e.what();
  }
  nlohmann::json many = config;
  many.erase("id2label");
  many.erase("label2id");
  many["num_labels"] = 1000000000;
  std::ofstream(dir / "config.json") << many.dump();
  try {
    load_hf_model(dir.string());
    ADD_FAILURE() << "a billion labels should not load";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("key 'num_labels' must be an integer in 0..100000"),
              std::string::npos)
        << e.what();
  }
  fs::remove_all(dir);
}

// Hugging Face's choice of loss: problem_type, else regression for one label, cross-entropy for integer
// labels, binary cross-entropy for float labels. Values by hand; each loss is O(1) and a handful of float32
// operations (exp, log, a mean of 2), so it lies within a few units of float32's last place (1.2e-7):
// 1e-6 leaves 8 of them (1e-7 for the exactly representable MSE of 0.25).
TEST(HfBert, ClassificationLossFollowsProblemType) {
  const torch::Tensor one = torch::tensor({{0.5f}, {1.5f}});
  EXPECT_NEAR(hf_classification_loss(one, torch::tensor({1.0f, 1.0f}), "").item<double>(), 0.25, 1e-7);
  const torch::Tensor two = torch::tensor({{0.0f, 0.0f}, {0.0f, std::log(3.0f)}});
  // Row 0: -log(1/2); row 1 (p = 3/4 for label 1): -log(3/4).
  const double ce = (std::log(2.0) - std::log(0.75)) / 2;
  EXPECT_NEAR(hf_classification_loss(two, torch::tensor({0, 1}), "").item<double>(), ce, 1e-6);
  EXPECT_NEAR(
      hf_classification_loss(two, torch::tensor({0, 1}), "single_label_classification").item<double>(), ce,
      1e-6);
  // Float labels: binary cross-entropy per logit, mean; logit 0 costs log 2 whatever the label.
  const double bce = (3 * std::log(2.0) + std::log(1.0 + 1.0 / 3.0)) / 4;
  EXPECT_NEAR(hf_classification_loss(two, torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}}), "").item<double>(),
              bce, 1e-6);
  EXPECT_NEAR(
      hf_classification_loss(two, torch::tensor({{1.0f, 0.0f}, {0.0f, 1.0f}}), "regression").item<double>(),
      (1.0 + std::pow(std::log(3.0) - 1.0, 2)) / 4, 1e-6);
}

// The forward({ids, mask}) shorthand is Hugging Face's model(input_ids, attention_mask).
TEST(HfBert, ShorthandInputs) {
  HfLoadOptions encoder_only;
  encoder_only.architecture = "BertModel";
  auto model = load_fixture("bert", encoder_only).as<BertModelImpl>();
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const EncoderOutput padded = model->forward({io.at("input_ids"), io.at("attention_mask")});
  TextInputs full = bert_inputs(io);
  full.token_type_ids = torch::zeros_like(io.at("input_ids"));  // what an absent token_type_ids means
  EXPECT_TRUE(torch::equal(padded.last_hidden_state, model->forward(full).last_hidden_state));
  EXPECT_TRUE(padded.hidden_states.empty());
}

// Bad inputs are named where they enter the model (#14.16 and its vague errors): ids outside the vocabulary
// ("index out of range in self"), float ids, an empty sequence, a mask of other values than 0 and 1.
TEST(HfBert, BadInputsAreNamed) {
  HfLoadOptions encoder_only;
  encoder_only.architecture = "BertModel";
  auto model = load_fixture("bert", encoder_only).as<BertModelImpl>();
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t vocab = model->config().vocab_size;
  auto message_of = [&](const TextInputs& inputs) -> std::string {
    try {
      model->forward(inputs);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const torch::Tensor ids = torch::tensor({{1, 2, 3}}, torch::kLong);
  EXPECT_NE(message_of({torch::tensor({{int64_t{1}, vocab, int64_t{3}}}, torch::kLong)})
                .find("input_ids holds id " + std::to_string(vocab) + ", outside the embedding's " +
                      std::to_string(vocab) + " entries"),
            std::string::npos);
  EXPECT_NE(message_of({torch::tensor({{-1, 2}}, torch::kLong)}).find("input_ids holds id -1"),
            std::string::npos);
  EXPECT_NE(message_of({torch::tensor({{1.0, 3.7}})}).find("values; expected integer token ids"),
            std::string::npos);
  EXPECT_NE(message_of({torch::zeros({1, 0}, torch::kLong)}).find("empty sequence"), std::string::npos);
  EXPECT_NE(message_of({ids, torch::tensor({{1, 2, 0}}, torch::kLong)}).find("attention_mask holds values"),
            std::string::npos);
  TextInputs types(ids);
  types.token_type_ids = torch::tensor({{0, 0, 9}}, torch::kLong);
  EXPECT_NE(message_of(types).find("token_type_ids holds id 9"), std::string::npos) << message_of(types);
  EXPECT_EQ(message_of({ids, torch::tensor({{1, 1, 0}}, torch::kLong)}), "");
}

// GPT-2 embeds token_type_ids with wte, as Hugging Face's GPT2Model does (they were ignored by `graft
// forward`): the embedding output is wte[ids] + wpe[positions] + wte[token types], read off the weights.
TEST(HfGpt2, TokenTypeIdsAreEmbeddedByWte) {
  auto model = load_fixture("gpt2").as<GPT2LMHeadModelImpl>();
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs inputs(torch::tensor({{5, 7, 11, 13}}, torch::kLong));
  inputs.token_type_ids = torch::tensor({{1, 1, 2, 2}}, torch::kLong);
  inputs.output_hidden_states = true;
  const CausalLMOutput out = model->forward(inputs);
  const torch::Tensor wte = model->transformer->wte->weight, wpe = model->transformer->wpe->weight;
  const torch::Tensor expected = wte.index_select(0, inputs.input_ids[0]) + wpe.narrow(0, 0, 4) +
                                 wte.index_select(0, inputs.token_type_ids[0]);
  // Three float32 terms below 0.1 summed in another order: within 2 ulp of 0.3 (6e-8); 1e-6 is loose.
  EXPECT_TRUE(torch::allclose(out.hidden_states.at(0)[0], expected, 1e-6, 1e-6));
  CausalLMInputs plain(inputs.input_ids);
  EXPECT_FALSE(torch::allclose(model->forward(plain).logits, out.logits));
  inputs.token_type_ids = torch::tensor({{1, 1, 2, 100000}}, torch::kLong);
  EXPECT_THROW(model->forward(inputs), Error);
}

// Freezing on a text model: one optimiser step moves exactly the trainable parameters.
std::set<std::string> moved_by_one_step(BertForSequenceClassificationImpl& model,
                                        const std::map<std::string, torch::Tensor>& io) {
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : model.named_parameters()) before[p.key()] = p.value().detach().clone();
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  model.train();
  torch::manual_seed(0);
  auto optimizer = fixture_adamw(trainable);
  optimizer.zero_grad();
  model.forward(bert_inputs(io)).loss.backward();
  optimizer.step();
  std::set<std::string> moved;
  for (const auto& p : model.named_parameters()) {
    if (!torch::equal(p.value(), before[p.key()])) moved.insert(p.key());
  }
  return moved;
}

TEST(HfBert, FreezeSpecsOnTextModel) {
  const auto io = read_map(fixture_dir("bert") + "/expected.safetensors");
  {
    auto model = load_fixture("bert").as<BertForSequenceClassificationImpl>();
    const FreezeReport report = apply_freeze(*model, "bert.embeddings.*", "classifier");
    EXPECT_EQ(report.frozen_parameters, 5);  // three embedding tables, LayerNorm weight and bias
    for (const auto& name : moved_by_one_step(*model, io)) {
      EXPECT_NE(name.rfind("bert.embeddings.", 0), 0u) << name << " is frozen but moved";
    }
    for (const auto& p : model->named_parameters()) {
      EXPECT_EQ(p.value().requires_grad(), p.key().rfind("bert.embeddings.", 0) != 0) << p.key();
    }
  }
  {
    auto model = load_fixture("bert").as<BertForSequenceClassificationImpl>();
    const FreezeReport report = apply_freeze(*model, "until:bert.encoder.layer.1", "classifier");
    const auto moved = moved_by_one_step(*model, io);
    for (const auto& p : model->named_parameters()) {
      const std::string& name = p.key();
      const bool frozen =
          name.rfind("bert.embeddings.", 0) == 0 || name.rfind("bert.encoder.layer.0.", 0) == 0;
      EXPECT_EQ(p.value().requires_grad(), !frozen) << name;
      if (frozen) {
        EXPECT_EQ(moved.count(name), 0u) << name << " is frozen but moved";
      }
    }
    // Layer 1 and 2, the pooler and the classifier train (the unused word embeddings would not move anyway).
    for (const char* name :
         {"bert.encoder.layer.1.attention.self.query.weight", "bert.encoder.layer.2.output.dense.bias",
          "bert.pooler.dense.weight", "classifier.weight"}) {
      EXPECT_EQ(moved.count(name), 1u) << name << " is trainable but did not move";
    }
    EXPECT_EQ(report.frozen_parameters, 5 + 16);
    EXPECT_THROW(apply_freeze(*model, "until:bert.encoder.layer.7", "classifier"), SpecError);
  }
}

// ---------------------------------------------------------------------------------------------------
// RoBERTa and DistilBERT (shared/fixtures/hf/roberta, distilbert: *ForSequenceClassification, 3 labels;
// row 1 of each is padded). The fixtures have no token_type_ids: RoBERTa's are zeros, DistilBERT has none.

TextInputs fixture_inputs(const std::map<std::string, torch::Tensor>& io) {
  TextInputs inputs(io.at("input_ids"), io.at("attention_mask"));
  inputs.labels = io.at("labels");
  inputs.output_hidden_states = true;
  return inputs;
}

// Every hidden state, the logits and the loss of a classifier against the fixture's.
void check_classifier_forward(const std::string& name, SequenceClassifierImpl& model) {
  const auto io = read_map(fixture_dir(name) + "/expected.safetensors");
  model.eval();
  torch::NoGradGuard no_grad;
  const ClassifierOutput out = model.forward(fixture_inputs(io));
  ASSERT_EQ(out.base.hidden_states.size(), 3u);
  for (size_t i = 0; i < out.base.hidden_states.size(); ++i) {
    const std::string key = "hidden_states." + std::to_string(i);
    expect_close(name, key, out.base.hidden_states[i], io.at(key));
  }
  expect_close(name, "logits", out.logits, io.at("logits"));
  expect_close(name, "loss", out.loss, io.at("loss"));
  // features(): the first token's last hidden state, what the head reads.
  expect_close(name, "features", model.features(fixture_inputs(io)), io.at("hidden_states.2").select(1, 0));
}

TEST(HfRoberta, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("roberta");
  ASSERT_EQ(loaded.architecture, "RobertaForSequenceClassification");
  auto model = loaded.as<RobertaForSequenceClassificationImpl>();
  EXPECT_EQ(count_parameters(*model), 140227);  // the fixture file's elements
  EXPECT_EQ(model->config().pad_token_id, std::optional<int64_t>(1));
  EXPECT_EQ(model->position_limit(), 74 - 2);  // positions 2 .. 73 for real tokens
  check_classifier_forward("roberta", *model);
}

TEST(HfRoberta, AdamWStepMatchesTransformers) {
  auto model = load_fixture("roberta").as<RobertaForSequenceClassificationImpl>();
  const auto io = read_map(fixture_dir("roberta") + "/expected.safetensors");
  check_adamw_step("roberta", *model, [&] { return model->forward(fixture_inputs(io)).loss; });
}

// RoBERTa numbers real tokens from pad_token_id + 1 and puts pad tokens at pad_token_id: the same tokens
// give the same states wherever the padding is, and a longer input than the table allows is refused.
TEST(HfRoberta, PositionsCountFromThePaddingIndex) {
  HfLoadOptions options;
  options.architecture = "RobertaModel";
  HfModel loaded = load_hf_model(fixture_dir("roberta"), options);
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  EXPECT_EQ(loaded.report.skipped,
            (std::vector<std::string>{"classifier.dense.bias", "classifier.dense.weight",
                                      "classifier.out_proj.bias", "classifier.out_proj.weight"}));
  auto model = loaded.as<BertModelImpl>();
  EXPECT_FALSE(model->pooler) << "the checkpoint has no pooler: none rather than a random one";
  model->eval();
  torch::NoGradGuard no_grad;
  const auto io = read_map(fixture_dir("roberta") + "/expected.safetensors");
  // The fixture's numbering, written out: positions 2, 3, ... for real tokens, 1 for pads.
  const torch::Tensor ids = io.at("input_ids");
  const torch::Tensor real = ids.ne(1).to(torch::kLong);
  TextInputs explicit_positions(ids, io.at("attention_mask"));
  explicit_positions.position_ids = real.cumsum(1) * real + 1;
  expect_close("roberta base", "last_hidden_state (positions given)",
               model->forward(explicit_positions).last_hidden_state, io.at("hidden_states.2"));
  expect_close("roberta base", "last_hidden_state", model->forward(fixture_inputs(io)).last_hidden_state,
               io.at("hidden_states.2"));
  try {
    model->forward(torch::full({1, 73}, 5, torch::kLong));
    ADD_FAILURE() << "73 tokens need position 74 of a 74-row table";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("allows 72"), std::string::npos) << e.what();
  }
}

// roberta-base's files hold a pooler that RobertaForSequenceClassification has none of: it is skipped by
// name (transformers lists it as unused), not an error of a strict load.
TEST(HfRoberta, CheckpointPoolerIsSkippedByTheClassifier) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_roberta_pooler_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("roberta") + "/config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  NamedTensors tensors = read_safetensors(fixture_dir("roberta") + "/model.safetensors");
  tensors.emplace_back("roberta.pooler.dense.weight", torch::randn({64, 64}));
  tensors.emplace_back("roberta.pooler.dense.bias", torch::randn({64}));
  write_safetensors((dir / "model.safetensors").string(), tensors);
  HfModel loaded = load_hf_model(dir.string());
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  const std::set<std::string> skipped(loaded.report.skipped.begin(), loaded.report.skipped.end());
  EXPECT_EQ(skipped, (std::set<std::string>{"roberta.pooler.dense.bias", "roberta.pooler.dense.weight"}));
  check_classifier_forward("roberta", *loaded.as<RobertaForSequenceClassificationImpl>());
  fs::remove_all(dir);
}

TEST(HfDistilBert, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("distilbert");
  ASSERT_EQ(loaded.architecture, "DistilBertForSequenceClassification");
  auto model = loaded.as<DistilBertForSequenceClassificationImpl>();
  EXPECT_EQ(count_parameters(*model), 139523);  // the fixture file's elements
  EXPECT_EQ(model->config().n_layers, 2);
  EXPECT_EQ(model->config().dim, 64);
  check_classifier_forward("distilbert", *model);
}

TEST(HfDistilBert, AdamWStepMatchesTransformers) {
  auto model = load_fixture("distilbert").as<DistilBertForSequenceClassificationImpl>();
  const auto io = read_map(fixture_dir("distilbert") + "/expected.safetensors");
  check_adamw_step("distilbert", *model, [&] { return model->forward(fixture_inputs(io)).loss; });
}

// DistilBERT's own inputs and keys: token_type_ids are refused (its forward has none), the base model loads
// from the classifier's file, sinusoidal position tables and odd head counts are refused by key, and
// to_json reads back to the same configuration.
TEST(HfDistilBert, InputsAndConfigErrorsAreNamed) {
  auto model = load_fixture("distilbert").as<DistilBertForSequenceClassificationImpl>();
  TextInputs with_types(torch::tensor({{5, 6, 7}}, torch::kLong));
  with_types.token_type_ids = torch::zeros({1, 3}, torch::kLong);
  try {
    model->forward(with_types);
    ADD_FAILURE() << "DistilBERT has no token types";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_type_ids"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(model->reads_token_types());

  HfLoadOptions options;
  options.architecture = "DistilBertModel";
  HfModel base = load_hf_model(fixture_dir("distilbert"), options);
  EXPECT_TRUE(base.report.ok()) << base.report.to_string();
  const auto io = read_map(fixture_dir("distilbert") + "/expected.safetensors");
  {
    torch::NoGradGuard no_grad;
    auto encoder = base.as<DistilBertModelImpl>();
    encoder->eval();
    expect_close("distilbert base", "last_hidden_state",
                 encoder->forward({io.at("input_ids"), io.at("attention_mask")}).last_hidden_state,
                 io.at("hidden_states.2"));
  }

  const nlohmann::json source = read_json_file(fixture_dir("distilbert") + "/config.json");
  auto message_of = [](const nlohmann::json& config) -> std::string {
    try {
      DistilBertConfig::from_json(config, "distilbert/config.json");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  nlohmann::json sinusoidal = source;
  sinusoidal["sinusoidal_pos_embds"] = true;
  EXPECT_NE(message_of(sinusoidal).find("sinusoidal_pos_embds"), std::string::npos) << message_of(sinusoidal);
  nlohmann::json heads = source;
  heads["n_heads"] = 5;
  EXPECT_NE(message_of(heads).find("n_heads"), std::string::npos) << message_of(heads);
  nlohmann::json act = source;
  act["activation"] = "swoosh";
  EXPECT_NE(message_of(act).find("activation"), std::string::npos) << message_of(act);

  DistilBertConfig config = DistilBertConfig::from_json(source, "distilbert/config.json");
  config.id2label = {"negative", "positive"};
  const nlohmann::json written = model->config_json(config.id2label);
  const DistilBertConfig again = DistilBertConfig::from_json(written, "written");
  EXPECT_EQ(again.to_json(), written);
  EXPECT_EQ(again.id2label, config.id2label);
  EXPECT_EQ(again.hidden_dim, 128);
  EXPECT_EQ(again.seq_classif_dropout, 0.2);
  EXPECT_EQ(written["problem_type"], "single_label_classification");
}

// distilbert-base-uncased is a DistilBertForMaskedLM: a classifier built from it gets a fresh two-layer
// head (pre_classifier and classifier, neither in the file), and the masked-LM head is skipped, as
// from_pretrained does it.
TEST(HfDistilBert, MaskedLmCheckpointStartsAFreshTwoLayerHead) {
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_distilbert_mlm_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json config = read_json_file(fixture_dir("distilbert") + "/config.json");
  config["architectures"] = {"DistilBertForMaskedLM"};
  std::ofstream(dir / "config.json") << config.dump();
  NamedTensors tensors;
  for (auto& [name, tensor] : read_safetensors(fixture_dir("distilbert") + "/model.safetensors"))
    if (name.rfind("distilbert.", 0) == 0) tensors.emplace_back(name, tensor);
  tensors.emplace_back("vocab_transform.weight", torch::randn({64, 64}));
  tensors.emplace_back("vocab_projector.weight", torch::randn({1000, 64}));
  write_safetensors((dir / "model.safetensors").string(), tensors);
  HfLoadOptions options;
  options.architecture = "DistilBertForSequenceClassification";
  options.num_labels = 2;
  HfModel loaded = load_hf_model(dir.string(), options);
  EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
  const std::set<std::string> skipped(loaded.report.skipped.begin(), loaded.report.skipped.end());
  for (const char* name :
       {"vocab_transform.weight", "vocab_projector.weight", "pre_classifier.weight", "classifier.weight"})
    EXPECT_TRUE(skipped.count(name)) << name << " is not among " << loaded.report.to_string();
  auto model = loaded.as<DistilBertForSequenceClassificationImpl>();
  EXPECT_EQ(model->classifier->weight.size(0), 2);
  const auto io = read_map(fixture_dir("distilbert") + "/expected.safetensors");
  torch::NoGradGuard no_grad;
  model->eval();
  expect_close("distilbert from masked LM", "hidden_states.2",
               model->forward({io.at("input_ids"), io.at("attention_mask")}).base.last_hidden_state,
               io.at("hidden_states.2"));
  fs::remove_all(dir);
}

// A RoBERTa config reads RobertaConfig's defaults and writes back to the same; one whose positions would
// not fit after the padding index is refused by key.
TEST(HfRoberta, ConfigDefaultsAndRoundTrip) {
  nlohmann::json source = read_json_file(fixture_dir("roberta") + "/config.json");
  const BertConfig config = BertConfig::from_json(source, "roberta/config.json");
  EXPECT_TRUE(config.positions_after_padding());
  EXPECT_EQ(config.type_vocab_size, 1);
  const BertConfig again = BertConfig::from_json(config.to_json(), "written");
  EXPECT_EQ(again.to_json(), config.to_json());
  EXPECT_EQ(again.model_type, "roberta");
  nlohmann::json bare = {{"model_type", "roberta"}};
  const BertConfig defaults = BertConfig::from_json(bare, "bare");
  EXPECT_EQ(defaults.vocab_size, 50265);
  EXPECT_EQ(defaults.pad_token_id, std::optional<int64_t>(1));
  source["max_position_embeddings"] = 2;
  try {
    BertConfig::from_json(source, "roberta/config.json");
    ADD_FAILURE() << "2 positions cannot hold one after pad_token_id 1";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------------
// GPT-2

TEST(HfGpt2, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("gpt2");
  ASSERT_EQ(loaded.architecture, "GPT2LMHeadModel");
  // The fixture holds lm_head.weight (tied, same data as wte): read as the tied head, not loaded twice.
  EXPECT_EQ(loaded.report.skipped, std::vector<std::string>{"lm_head.weight"});
  auto model = loaded.as<GPT2LMHeadModelImpl>();
  EXPECT_EQ(count_parameters(*model), 58656);  // stats.json params: wte counted once
  EXPECT_TRUE(model->lm_head_weight().is_same(model->transformer->wte->weight));
  const auto io = read_map(fixture_dir("gpt2") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs inputs;
  inputs.input_ids = io.at("input_ids");
  inputs.labels = io.at("labels");
  inputs.output_hidden_states = true;
  const CausalLMOutput out = model->forward(inputs);
  ASSERT_EQ(out.hidden_states.size(), 4u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    const std::string name = "hidden_states." + std::to_string(i);
    expect_close("gpt2", name, out.hidden_states[i], io.at(name));
  }
  expect_close("gpt2", "logits", out.logits, io.at("logits"));
  expect_close("gpt2", "loss", out.loss, io.at("loss"));
}

TEST(HfGpt2, AdamWStepMatchesTransformers) {
  auto model = load_fixture("gpt2").as<GPT2LMHeadModelImpl>();
  const auto io = read_map(fixture_dir("gpt2") + "/expected.safetensors");
  check_adamw_step("gpt2", *model, [&] {
    CausalLMInputs inputs;
    inputs.input_ids = io.at("input_ids");
    inputs.labels = io.at("labels");
    return model->forward(inputs).loss;
  });
}

// save_pretrained's form: no lm_head.weight, and a GPT2Model file (no "transformer." prefix) with the old
// attention buffers h.N.attn.bias / masked_bias, as the hub's gpt2 checkpoint.
TEST(HfGpt2, LoadsWithoutLmHeadAndFromBaseCheckpoint) {
  const auto io = read_map(fixture_dir("gpt2") + "/expected.safetensors");
  const fs::path dir = fs::temp_directory_path() / ("graft_hf_gpt2_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(fixture_dir("gpt2") + "/config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  NamedTensors without_head, base;
  for (auto& [name, tensor] : read_safetensors(fixture_dir("gpt2") + "/model.safetensors")) {
    if (name == "lm_head.weight") continue;
    without_head.emplace_back(name, tensor);
    base.emplace_back(name.substr(std::string("transformer.").size()), tensor);
  }
  for (int layer = 0; layer < 3; ++layer) {
    base.emplace_back("h." + std::to_string(layer) + ".attn.bias", torch::ones({1, 1, 40, 40}).tril());
    base.emplace_back("h." + std::to_string(layer) + ".attn.masked_bias", torch::tensor(-1e4));
  }
  for (const auto& tensors : {without_head, base}) {
    write_safetensors((dir / "model.safetensors").string(), tensors);
    HfModel loaded = load_hf_model(dir.string());
    EXPECT_TRUE(loaded.report.ok()) << loaded.report.to_string();
    auto model = loaded.as<GPT2LMHeadModelImpl>();
    model->eval();
    torch::NoGradGuard no_grad;
    expect_close("gpt2 variant", "logits", model->forward(io.at("input_ids")).logits, io.at("logits"));
  }
  fs::remove_all(dir);
}

// Generation is not quadratic: feeding tokens one at a time with the cache gives the full pass's logits.
TEST(HfGpt2, KeyValueCacheMatchesFullForward) {
  auto model = load_fixture("gpt2").as<GPT2LMHeadModelImpl>();
  const auto io = read_map(fixture_dir("gpt2") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = io.at("input_ids");  // (3, 9)
  const torch::Tensor full = model->forward(ids).logits;

  // Prompt of 5 with the cache, then 4 single tokens.
  CausalLMInputs step;
  step.input_ids = ids.narrow(1, 0, 5);
  step.use_cache = true;
  CausalLMOutput out = model->forward(step);
  ASSERT_EQ(out.present.size(), 3u);
  EXPECT_EQ(out.present[0].key.sizes(), torch::IntArrayRef({3, 2, 5, 16}));
  expect_close("gpt2 cache", "logits[:, :5]", out.logits, full.narrow(1, 0, 5));
  for (int64_t t = 5; t < ids.size(1); ++t) {
    step.input_ids = ids.narrow(1, t, 1);
    step.past_key_values = out.present;
    out = model->forward(step);
    expect_close("gpt2 cache", "logits[:, " + std::to_string(t) + "]", out.logits.select(1, 0),
                 full.select(1, t));
  }
  EXPECT_EQ(out.present[2].value.size(2), ids.size(1));
  expect_close("gpt2 cache", "last token logits", out.logits.select(1, 0), io.at("logits").select(1, -1));

  // A padding mask over past + new tokens: left-padded row 0 with position ids that skip the pads gives
  // the unpadded row's logits.
  const torch::Tensor row = ids.narrow(0, 0, 1).narrow(1, 0, 6);  // (1, 6)
  const torch::Tensor padded = torch::cat({torch::zeros({1, 3}, row.options()), row}, 1);
  CausalLMInputs masked;
  masked.input_ids = padded;
  masked.attention_mask =
      torch::cat({torch::zeros({1, 3}, row.options()), torch::ones({1, 6}, row.options())}, 1);
  masked.position_ids =
      torch::cat({torch::zeros({1, 3}, row.options()), torch::arange(6, row.options()).unsqueeze(0)}, 1);
  expect_close("gpt2 padding", "logits (left-padded)", model->forward(masked).logits.narrow(1, 3, 6),
               full.narrow(0, 0, 1).narrow(1, 0, 6));

  GenerateOptions five;
  five.max_new_tokens = 5;
  const torch::Tensor greedy = model->generate(ids.narrow(1, 0, 4), five);
  ASSERT_EQ(greedy.sizes(), torch::IntArrayRef({3, 9}));
  // Greedy with the cache picks what the full forward of the result argmaxes.
  const torch::Tensor check = model->forward(greedy).logits.narrow(1, 3, 5).argmax(-1);
  EXPECT_TRUE(torch::equal(check, greedy.narrow(1, 4, 5)));
}

// ---------------------------------------------------------------------------------------------------
// ViT

TEST(HfVit, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("vit");
  ASSERT_EQ(loaded.architecture, "ViTForImageClassification");
  auto model = loaded.as<ViTForImageClassificationImpl>();
  EXPECT_EQ(count_parameters(*model), 27939);
  const auto io = read_map(fixture_dir("vit") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const ClassifierOutput out =
      model->forward(io.at("pixel_values"), io.at("labels"), /*output_hidden_states=*/true);
  ASSERT_EQ(out.base.hidden_states.size(), 4u);
  for (size_t i = 0; i < out.base.hidden_states.size(); ++i) {
    const std::string name = "hidden_states." + std::to_string(i);
    expect_close("vit", name, out.base.hidden_states[i], io.at(name));
  }
  expect_close("vit", "last_hidden_state", out.base.last_hidden_state, io.at("last_hidden_state"));
  expect_close("vit", "logits", out.logits, io.at("logits"));
  expect_close("vit", "loss", out.loss, io.at("loss"));
  // The backbone path (steps, as graft's image tools run it) gives the same logits.
  expect_close("vit", "logits (backbone forward)", model->forward(io.at("pixel_values")), io.at("logits"));
}

TEST(HfVit, AdamWStepMatchesTransformers) {
  auto model = load_fixture("vit").as<ViTForImageClassificationImpl>();
  const auto io = read_map(fixture_dir("vit") + "/expected.safetensors");
  check_adamw_step("vit", *model,
                   [&] { return model->forward(io.at("pixel_values"), io.at("labels")).loss; });
}

TEST(HfVit, ImageBackboneInterface) {
  auto model = load_fixture("vit").as<ViTForImageClassificationImpl>();
  const auto io = read_map(fixture_dir("vit") + "/expected.safetensors");
  const torch::Tensor pixels = io.at("pixel_values");
  model->eval();
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor features = model->forward_features(pixels);
    EXPECT_EQ(features.sizes(), torch::IntArrayRef({2, 32, 1, 1}));
    expect_close("vit backbone", "forward_features ([CLS] after layernorm)", features.flatten(1),
                 io.at("last_hidden_state").select(1, 0));
    EXPECT_EQ(model->forward_head(features, /*pre_logits=*/true).sizes(), torch::IntArrayRef({2, 32}));
    std::set<std::string> modules;
    for (const auto& item : model->named_modules()) modules.insert(item.key());
    for (const auto& step : model->all_steps()) {
      EXPECT_TRUE(step.name == "cls_token" || step.name == "flatten" || modules.count(step.name))
          << step.name;
    }
  }
  EXPECT_EQ(head_module_name(*model), "classifier");
  const FreezeReport report = apply_freeze(*model, "until:vit.encoder.layer.2");
  for (const auto& p : model->named_parameters()) {
    const bool frozen = p.key().rfind("vit.embeddings.", 0) == 0 ||
                        p.key().rfind("vit.encoder.layer.0.", 0) == 0 ||
                        p.key().rfind("vit.encoder.layer.1.", 0) == 0;
    EXPECT_EQ(p.value().requires_grad(), !frozen) << p.key();
  }
  EXPECT_EQ(report.frozen_parameters, 4 + 2 * 16);

  const ModelSummary summary = summarize(*model);
  EXPECT_EQ(summary.total_params, 27939);
  EXPECT_EQ(summary.rows.front().name, "vit.embeddings");
  EXPECT_EQ(summary.rows.front().output_shape, (std::vector<int64_t>{17, 32}));
  EXPECT_NE(summary.to_string().find("vit.encoder.layer.2"), std::string::npos) << summary.to_string();

  model->set_head(HeadSpec::parse("avg,dense:16:relu,dense:4"));
  EXPECT_EQ(model->forward(pixels).sizes(), torch::IntArrayRef({2, 4}));
  EXPECT_EQ(model->forward(pixels, torch::tensor({0, 3})).loss.dim(), 0);
  model->reset_classifier(7);
  EXPECT_EQ(model->num_classes(), 7);
  EXPECT_EQ(model->forward(pixels).sizes(), torch::IntArrayRef({2, 7}));
  EXPECT_THROW(model->forward(torch::zeros({1, 3, 32, 32})), ShapeMismatch);
}

// Decoding options against a reference loop written from Hugging Face's logits processors
// (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper) over full
// forward passes without the cache, drawing from an identically seeded generator.
torch::Tensor reference_generate(GPT2LMHeadModelImpl& model, torch::Tensor ids, const GenerateOptions& o) {
  torch::NoGradGuard no_grad;
  std::optional<at::Generator> generator;
  if (o.seed) generator = at::make_generator<at::CPUGeneratorImpl>(*o.seed);
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    torch::Tensor scores = model.forward(ids).logits.select(1, -1).clone();  // (B, V)
    for (int64_t b = 0; b < scores.size(0); ++b) {
      std::set<int64_t> seen;
      for (int64_t t = 0; t < ids.size(1); ++t) seen.insert(ids[b][t].item<int64_t>());
      for (int64_t token : seen) {
        const double v = scores[b][token].item<double>();
        scores[b][token] = v < 0 ? v * o.repetition_penalty : v / o.repetition_penalty;
      }
    }
    torch::Tensor next;
    if (o.temperature <= 0) {
      next = scores.argmax(-1);
    } else {
      scores = scores / o.temperature;
      for (int64_t b = 0; b < scores.size(0); ++b) {
        torch::Tensor row = scores[b];
        if (o.top_k > 0) {
          const double kth = std::get<0>(row.topk(o.top_k)).min().item<double>();
          row.masked_fill_(row < kth, -INFINITY);
        }
        // Keep the most likely tokens until their probability reaches top_p (at least one).
        auto [sorted, order] = row.sort(-1, /*descending=*/true);
        const torch::Tensor probs = torch::softmax(sorted, -1);
        double before = 0;
        for (int64_t i = 0; i < row.size(0); ++i) {
          if (before >= o.top_p && i > 0) row[order[i].item<int64_t>()] = -INFINITY;
          before += probs[i].item<double>();
        }
      }
      next = torch::multinomial(torch::softmax(scores, -1), 1, false, *generator).squeeze(-1);
    }
    ids = torch::cat({ids, next.unsqueeze(1)}, 1);
  }
  return ids;
}

TEST(HfGpt2, GenerateFollowsHuggingFaceProcessors) {
  auto model = load_fixture("gpt2").as<GPT2LMHeadModelImpl>();
  model->eval();
  const auto io = read_map(fixture_dir("gpt2") + "/expected.safetensors");
  const torch::Tensor prompt = io.at("input_ids").narrow(1, 0, 4);
  GenerateOptions greedy;
  greedy.max_new_tokens = 8;
  greedy.repetition_penalty = 1.7;
  const torch::Tensor got = model->generate(prompt, greedy);
  EXPECT_TRUE(torch::equal(got, reference_generate(*model, prompt, greedy))) << got;
  // The penalty changes the choice somewhere (else this test would not test it).
  GenerateOptions plain = greedy;
  plain.repetition_penalty = 1.0;
  EXPECT_FALSE(torch::equal(got, model->generate(prompt, plain)));

  GenerateOptions sample;
  sample.max_new_tokens = 8;
  sample.temperature = 0.8;
  sample.top_k = 50;
  sample.top_p = 0.9;
  sample.repetition_penalty = 1.2;
  sample.seed = 1234;
  const torch::Tensor sampled = model->generate(prompt, sample);
  EXPECT_TRUE(torch::equal(sampled, reference_generate(*model, prompt, sample))) << sampled;
  EXPECT_TRUE(torch::equal(sampled, model->generate(prompt, sample)));  // the seed reproduces it
  sample.seed = 99;
  EXPECT_FALSE(torch::equal(sampled, model->generate(prompt, sample)));

  // A stop callback ends generation early; the context limit is checked before any work.
  GenerateOptions stop = greedy;
  int calls = 0;
  stop.on_token = [&calls](const torch::Tensor&) { return ++calls < 3; };
  EXPECT_EQ(model->generate(prompt, stop).size(1), 4 + 3);
  GenerateOptions too_long;
  too_long.max_new_tokens = 40;
  EXPECT_THROW(model->generate(prompt, too_long), Error);
  too_long.max_new_tokens = 2;
  too_long.top_p = 0;
  EXPECT_THROW(model->generate(prompt, too_long), Error);
  // Each setting is refused by its flag (a NaN temperature ended in a libtorch multinomial message).
  const auto refused = [&](GenerateOptions bad, const std::string& expected) {
    bad.max_new_tokens = 2;
    try {
      model->generate(prompt, bad);
      ADD_FAILURE() << "no error; expected " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  GenerateOptions nan_temperature;
  nan_temperature.temperature = std::nan("");
  refused(nan_temperature, "--temperature must be a finite number >= 0 (0: greedy), got nan");
  GenerateOptions negative_k;
  negative_k.top_k = -1;
  refused(negative_k, "--top-k must be >= 0");
  GenerateOptions infinite_penalty;
  infinite_penalty.repetition_penalty = INFINITY;
  refused(infinite_penalty, "--repetition-penalty must be a finite number > 0");
}

// ---------------------------------------------------------------------------------------------------
// Llama (shared/fixtures/hf/llama: LlamaForCausalLM, 4 heads sharing 2 key/value heads, untied head; row 1
// left-padded by 3 with attention_mask 0 there; labels = input_ids; position ids 0..T-1 whatever the mask).

CausalLMInputs llama_inputs(const std::map<std::string, torch::Tensor>& io) {
  CausalLMInputs inputs(io.at("input_ids"),
                        io.count("attention_mask") ? io.at("attention_mask") : torch::Tensor());
  inputs.labels = io.at("input_ids");
  return inputs;
}

TEST(HfLlama, ForwardMatchesTransformers) {
  HfModel loaded = load_fixture("llama");
  ASSERT_EQ(loaded.architecture, "LlamaForCausalLM");
  auto model = loaded.as<LlamaForCausalLMImpl>();
  EXPECT_EQ(model->config().kv_groups(), 2);
  EXPECT_FALSE(model->tied_head());
  const auto io = read_map(fixture_dir("llama") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs inputs = llama_inputs(io);
  inputs.output_hidden_states = true;
  const CausalLMOutput out = model->forward(inputs);
  ASSERT_EQ(out.hidden_states.size(), 3u);  // embeddings, after layer 0, after the final norm
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    const std::string name = "hidden_states." + std::to_string(i);
    expect_close("llama", name, out.hidden_states[i], io.at(name));
  }
  expect_close("llama", "logits", out.logits, io.at("logits"));
  expect_close("llama", "loss", out.loss, io.at("loss"));
}

TEST(HfLlama, AdamWStepMatchesTransformers) {
  auto model = load_fixture("llama").as<LlamaForCausalLMImpl>();
  const auto io = read_map(fixture_dir("llama") + "/expected.safetensors");
  check_adamw_step("llama", *model, [&] { return model->forward(llama_inputs(io)).loss; });
}

// The cache holds keys and values per key/value head (half the query heads here), and feeding tokens one
// at a time gives the full pass's logits, padded row included.
TEST(HfLlama, KeyValueCacheMatchesFullForward) {
  auto model = load_fixture("llama").as<LlamaForCausalLMImpl>();
  const auto io = read_map(fixture_dir("llama") + "/expected.safetensors");
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = io.at("input_ids"), mask = io.at("attention_mask");  // (2, 16)
  CausalLMInputs step(ids.narrow(1, 0, 6), mask.narrow(1, 0, 6));
  step.use_cache = true;
  CausalLMOutput out = model->forward(step);
  ASSERT_EQ(out.present.size(), 2u);
  EXPECT_EQ(out.present[0].key.sizes(), torch::IntArrayRef({2, 2, 6, 16}));
  for (int64_t t = 6; t < ids.size(1); ++t) {
    step.input_ids = ids.narrow(1, t, 1);
    step.attention_mask = mask.narrow(1, 0, t + 1);
    step.past_key_values = out.present;
    out = model->forward(step);
    // Row 0 has no padding; row 1's real tokens attend to the same keys as in the full pass.
    expect_close("llama cache", "logits[:, " + std::to_string(t) + "]", out.logits.select(1, 0),
                 io.at("logits").select(1, t));
  }
  GenerateOptions five;
  five.max_new_tokens = 5;
  const torch::Tensor greedy = model->generate(ids.narrow(0, 0, 1).narrow(1, 0, 4), five);
  ASSERT_EQ(greedy.sizes(), torch::IntArrayRef({1, 9}));
  const torch::Tensor check = model->forward(greedy).logits.narrow(1, 3, 5).argmax(-1);
  EXPECT_TRUE(torch::equal(check, greedy.narrow(1, 4, 5)));
  five.max_new_tokens = 200;  // 4 + 200 > max_position_embeddings 128: refused by key
  try {
    model->generate(ids.narrow(1, 0, 4), five);
    ADD_FAILURE() << "a generation past max_position_embeddings was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
  }
}

// What the fixture cannot show: Qwen2's q/k/v bias, a rope_theta other than 10000, linear scaling, tied
// embeddings. A one-layer model against the same forward written out here from the papers' formulas with
// plain tensor operations: RMSNorm, rotation of feature pairs (i, i + d/2) by position * theta^(-2i/d),
// grouped heads, causal softmax, SwiGLU.
TEST(HfLlama, Qwen2BiasAndRopeThetaMatchAHandWrittenForward) {
  const fs::path dir = fs::temp_directory_path() / ("graft_qwen2_" + std::to_string(getpid()));
  fs::create_directories(dir);
  for (const bool linear_scaling : {false, true}) {
    nlohmann::json config = {{"model_type", "qwen2"},
                             {"architectures", {"Qwen2ForCausalLM"}},
                             {"vocab_size", 11},
                             {"hidden_size", 8},
                             {"intermediate_size", 12},
                             {"num_hidden_layers", 1},
                             {"num_attention_heads", 2},
                             {"num_key_value_heads", 1},
                             {"rope_theta", 1000000.0},
                             {"rms_norm_eps", 1e-6},
                             {"tie_word_embeddings", true},
                             {"max_position_embeddings", 32}};
    if (linear_scaling) config["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
    write_file_atomic((dir / "config.json").string(), config.dump());
    HfModel built = build_hf_model((dir / "config.json").string());
    auto model = built.as<LlamaForCausalLMImpl>();
    EXPECT_TRUE(model->tied_head());
    auto& attn = *model->model->layers->ptr<LlamaDecoderLayerImpl>(0)->self_attn;
    ASSERT_TRUE(attn.q_proj->bias.defined() && attn.k_proj->bias.defined() && attn.v_proj->bias.defined());
    EXPECT_FALSE(attn.o_proj->bias.defined());
    torch::manual_seed(5);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters()) p.normal_(0, 0.5);  // biases and norms away from 0 and 1
    }
    model->eval();
    const torch::Tensor ids = torch::tensor({{3, 1, 4, 1, 5, 9, 2}}, torch::kLong);
    torch::NoGradGuard no_grad;
    const torch::Tensor got = model->forward(ids).logits;

    auto& layer = *model->model->layers->ptr<LlamaDecoderLayerImpl>(0);
    const auto rms = [](const torch::Tensor& x, const torch::Tensor& w) {
      return w * x / (x.pow(2).mean(-1, true) + 1e-6).sqrt();
    };
    const auto dense = [](const torch::Tensor& x, const torch::nn::Linear& l) {
      torch::Tensor y = torch::matmul(x, l->weight.t());
      return l->bias.defined() ? y + l->bias : y;
    };
    const int64_t T = 7, d = 4;
    const torch::Tensor x = model->model->embed_tokens->weight.index_select(0, ids[0]);  // (T, 8)
    const torch::Tensor h = rms(x, layer.input_layernorm->weight);
    const torch::Tensor q = dense(h, attn.q_proj).view({T, 2, d}), k = dense(h, attn.k_proj),
                        v = dense(h, attn.v_proj);     // one key/value head for both query heads
    const auto rotate = [&](const torch::Tensor& t) {  // (T, d): pairs (i, i + 2) turned by angle[pos][i]
      torch::Tensor out = t.clone();
      for (int64_t pos = 0; pos < T; ++pos) {
        for (int64_t i = 0; i < d / 2; ++i) {
          const double p = linear_scaling ? pos / 4.0 : static_cast<double>(pos);
          const double angle = p * std::pow(1000000.0, -2.0 * static_cast<double>(i) / d);
          const double a = t[pos][i].item<double>(), b = t[pos][i + d / 2].item<double>();
          out[pos][i] = a * std::cos(angle) - b * std::sin(angle);
          out[pos][i + d / 2] = b * std::cos(angle) + a * std::sin(angle);
        }
      }
      return out;
    };
    const torch::Tensor kr = rotate(k);
    std::vector<torch::Tensor> heads;
    for (int64_t head = 0; head < 2; ++head) {
      const torch::Tensor scores = torch::matmul(rotate(q.select(1, head)), kr.t()) / std::sqrt(double(d));
      const torch::Tensor causal = torch::ones({T, T}).triu(1).to(torch::kBool);
      heads.push_back(torch::matmul(torch::softmax(scores.masked_fill(causal, -INFINITY), -1), v));
    }
    const torch::Tensor a = x + dense(torch::cat(heads, 1), attn.o_proj);
    const torch::Tensor m = rms(a, layer.post_attention_layernorm->weight);
    auto& mlp = *layer.mlp;
    const torch::Tensor y =
        a + dense(torch::silu(dense(m, mlp.gate_proj)) * dense(m, mlp.up_proj), mlp.down_proj);
    // Tied: the head is the embedding matrix.
    const torch::Tensor expected =
        torch::matmul(rms(y, model->model->norm->weight), model->model->embed_tokens->weight.t());
    expect_close(linear_scaling ? "qwen2 (linear rope scaling)" : "qwen2", "logits", got[0], expected);
  }
  fs::remove_all(dir);
}

TEST(HfLlama, ConfigErrorsNameFileAndKey) {
  const fs::path dir = fs::temp_directory_path() / ("graft_llama_cfg_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const nlohmann::json base = read_json_file(fixture_dir("llama") + "/config.json");
  const auto refused = [&](const nlohmann::json& config, const std::string& expected) {
    write_file_atomic((dir / "config.json").string(), config.dump());
    try {
      build_hf_model((dir / "config.json").string());
      ADD_FAILURE() << "accepted a config with " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    }
  };
  nlohmann::json c = base;
  c["num_key_value_heads"] = 3;
  refused(c, "num_key_value_heads");
  c = base;
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  refused(c, "yarn");
  c = base;
  c["rope_theta"] = -1;
  refused(c, "rope_theta");
  c = base;
  c["rms_norm_eps"] = 0;
  refused(c, "rms_norm_eps");
  c = base;
  c["model_type"] = "mistral";
  refused(c, "model_type");
  c = base;
  c["pad_token_id"] = 512;
  refused(c, "pad_token_id");
  // A config whose sizes disagree with the weights: refused by key before anything is built.
  c = base;
  c["num_hidden_layers"] = 3;
  write_file_atomic((dir / "config.json").string(), c.dump());
  fs::copy_file(fixture_dir("llama") + "/model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  try {
    load_hf_model(dir.string());
    ADD_FAILURE() << "a 3-layer config beside 2-layer weights loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_hidden_layers"), std::string::npos) << e.what();
  }
  // Llama 3's list of end tokens and its rope scaling read as they are.
  c = base;
  c["eos_token_id"] = {7, 9};
  c["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  write_file_atomic((dir / "config.json").string(), c.dump());
  const LlamaConfig read = LlamaConfig::from_file((dir / "config.json").string());
  EXPECT_EQ(read.eos_token_id, 7);
  EXPECT_EQ(read.rope_scaling_type, "llama3");
  fs::remove_all(dir);
}

// A classification head reads each row at its last token that is not padding.
TEST(HfLlama, SequenceClassificationReadsTheLastRealToken) {
  HfLoadOptions options;
  options.architecture = "LlamaForSequenceClassification";
  options.num_labels = 3;
  HfModel loaded = load_fixture("llama", options);
  // The causal LM's head is left out, the new head starts fresh; the file's rotary_emb.inv_freq buffers
  // (transformers 4.31 still wrote them) are not weights.
  const std::set<std::string> skipped(loaded.report.skipped.begin(), loaded.report.skipped.end());
  EXPECT_EQ(skipped, (std::set<std::string>{"lm_head.weight", "score.weight",
                                            "model.layers.0.self_attn.rotary_emb.inv_freq",
                                            "model.layers.1.self_attn.rotary_emb.inv_freq"}));
  auto model = loaded.as<LlamaForSequenceClassificationImpl>();
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor ids = torch::tensor({{5, 6, 7, 8}, {5, 6, 0, 0}}, torch::kLong);  // pad_token_id 0
  TextInputs inputs(ids, torch::tensor({{1, 1, 1, 1}, {1, 1, 0, 0}}, torch::kLong));
  inputs.labels = torch::tensor({2, 0}, torch::kLong);
  const ClassifierOutput out = model->forward(inputs);
  ASSERT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 3}));
  const torch::Tensor per_token = torch::matmul(out.base.last_hidden_state, model->score->weight.t());
  expect_close("llama seq-cls", "row 0 at position 3", out.logits[0], per_token[0][3]);
  expect_close("llama seq-cls", "row 1 at position 1", out.logits[1], per_token[1][1]);
  expect_close("llama seq-cls", "loss", out.loss,
               torch::nn::functional::cross_entropy(out.logits, inputs.labels));
  // Without a mask: pad_token_id decides (the same tokens here); the mask wins where a real token equals it.
  expect_close("llama seq-cls", "by pad_token_id", model->forward(ids).logits, out.logits);
  const torch::Tensor ends_in_pad_id = torch::tensor({{5, 6, 0}}, torch::kLong);
  expect_close(
      "llama seq-cls", "a real last token equal to pad_token_id",
      model->forward({ends_in_pad_id, torch::ones({1, 3}, torch::kLong)}).logits[0],
      torch::matmul(
          model->forward({ends_in_pad_id, torch::ones({1, 3}, torch::kLong)}).base.last_hidden_state[0][2],
          model->score->weight.t()));
}

// ---------------------------------------------------------------------------------------------------
// LoRA adapters: shared/fixtures/peft, made by PEFT v0.5 on tiny BERT, ViT and GPT-2 (Conv1D,
// fan_in_fan_out). Each base loads from base.safetensors, takes PEFT's adapter, and must give PEFT's
// outputs with it, PEFT's merged weights and outputs, the base back after unmerging, and PEFT's AdamW
// step of the adapter's parameters; graft's own save names and shapes every tensor as PEFT's file does.

std::string peft_dir(const std::string& name) {
  return std::string(GRAFT_SHARED_DIR) + "/fixtures/peft/" + name;
}

HfModel load_peft_base(const std::string& name, const std::string& architecture) {
  HfLoadOptions options;
  options.architecture = architecture;
  return load_hf_model(peft_dir(name) + "/base.safetensors", options);
}

// PEFT's in-memory names (base_model.model.<path>.lora_A.default.weight, <path>.modules_to_save.default.
// weight) as the model's.
std::string from_peft_name(std::string name) {
  const std::string prefix = "base_model.model.";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (const auto& [from, to] :
       std::vector<std::pair<std::string, std::string>>{{".lora_A.default.", ".lora_A."},
                                                        {".lora_B.default.", ".lora_B."},
                                                        {".modules_to_save.default.", "."}}) {
    const size_t at = name.find(from);
    if (at != std::string::npos) name.replace(at, from.size(), to);
  }
  return name;
}

// graft's save of the adapter names and shapes every tensor as the fixture's PEFT file does, and its
// adapter_config.json reads back to the same configuration.
void expect_saved_as_peft_saves(const std::string& name, torch::nn::Module& model, const LoraConfig& config) {
  const fs::path out = fs::temp_directory_path() / ("graft_peft_" + name + "_" + std::to_string(getpid()));
  save_lora_adapter(model, config, out.string());
  std::map<std::string, std::vector<int64_t>> ours, theirs;
  for (const auto& [key, tensor] : read_safetensors((out / "adapter_model.safetensors").string()))
    ours[key] = tensor.sizes().vec();
  for (const auto& [key, tensor] : read_safetensors(peft_dir(name) + "/adapter_model.safetensors"))
    theirs[key] = tensor.sizes().vec();
  EXPECT_EQ(ours, theirs) << name << ": graft's adapter file names or shapes its tensors otherwise than PEFT";
  const LoraConfig again = LoraConfig::from_json(read_json_file((out / "adapter_config.json").string()),
                                                 "saved adapter_config.json");
  EXPECT_EQ(again.to_json(), config.to_json());
  fs::remove_all(out);
}

// With the adapter: PEFT's outputs; graft's saved adapter: PEFT's names and shapes; merged: PEFT's weights
// and outputs; unmerged: the base weights again. `logits` runs the model (eval mode, no grad).
void check_peft_case(const std::string& name, torch::nn::Module& model,
                     const std::function<torch::Tensor()>& logits) {
  const auto io = read_map(peft_dir(name) + "/expected.safetensors");
  model.eval();
  {
    torch::NoGradGuard no_grad;
    expect_close(name, "base.logits", logits(), io.at("base.logits"));
  }
  const LoraConfig config = load_lora_adapter(model, peft_dir(name));
  EXPECT_EQ(config.r, 4);
  EXPECT_DOUBLE_EQ(config.scaling(), 2.0);  // alpha 8 / r 4
  {
    torch::NoGradGuard no_grad;
    expect_close(name, "logits (adapter)", logits(), io.at("logits"));
  }
  expect_saved_as_peft_saves(name, model, config);

  const auto base = read_map(peft_dir(name) + "/base.safetensors");
  const auto merged = read_map(peft_dir(name) + "/merged.safetensors");
  const auto merged_io = read_map(peft_dir(name) + "/merged_outputs.safetensors");
  EXPECT_FALSE(merge_lora(model).empty());
  auto params = model.named_parameters();
  for (const auto& [key, tensor] : merged) {
    ASSERT_TRUE(params.contains(key)) << name << ": no parameter " << key;
    expect_close(name, "merged " + key, params[key], tensor);
  }
  {
    torch::NoGradGuard no_grad;
    expect_close(name, "merged.logits", logits(), merged_io.at("merged.logits"));
  }
  unmerge_lora(model);
  for (const auto& [key, tensor] : merged)
    if (base.count(key) && key.find("classifier") == std::string::npos)  // the head is the adapter's
      expect_close(name, "unmerged " + key, params[key], base.at(key));
  {
    torch::NoGradGuard no_grad;
    expect_close(name, "logits (unmerged)", logits(), io.at("logits"));
  }
}

TEST(Peft, BertAdapterMatchesPeft) {
  auto model =
      load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
  const auto io = read_map(peft_dir("bert_lora") + "/expected.safetensors");
  check_peft_case("bert_lora", *model, [&] {
    return model->forward({io.at("input_ids"), io.at("attention_mask")}).logits;
  });
}

TEST(Peft, VitAdapterMatchesPeft) {
  auto model = load_peft_base("vit_lora", "ViTForImageClassification").as<ViTForImageClassificationImpl>();
  const auto io = read_map(peft_dir("vit_lora") + "/expected.safetensors");
  check_peft_case("vit_lora", *model, [&] { return model->forward(io.at("pixel_values")); });
}

TEST(Peft, Gpt2Conv1DAdapterMatchesPeft) {
  auto model = load_peft_base("gpt2_lora", "GPT2LMHeadModel").as<GPT2LMHeadModelImpl>();
  const auto io = read_map(peft_dir("gpt2_lora") + "/expected.safetensors");
  check_peft_case("gpt2_lora", *model, [&] { return model->forward(io.at("input_ids")).logits; });
}

TEST(Peft, LlamaAdapterMatchesPeft) {
  auto model = load_peft_base("llama_lora", "LlamaForCausalLM").as<LlamaForCausalLMImpl>();
  const auto io = read_map(peft_dir("llama_lora") + "/expected.safetensors");
  check_peft_case("llama_lora", *model, [&] { return model->forward(io.at("input_ids")).logits; });
}

// torchvision's ResNet-18 with LoRA on a 3x3 (layer4.1.conv2) and a 1x1 (layer4.0.downsample.0)
// convolution, fc trained whole. PEFT v0.5 replaces an adapted Conv2d by its own nn.Conv2d subclass, which
// keeps nn.Conv2d's randomly drawn bias where the base has none (torchvision's convolutions) and saves it
// nowhere but in merge_and_unload's output; the fixture's outputs include those two stray biases. graft adds
// no bias (as PEFT's later versions, which wrap the base layer instead of replacing it), so the test gives
// the two convolutions PEFT's biases from merged.safetensors before comparing outputs.
TEST(Peft, ResNetConvolutionAdapterMatchesPeft) {
  const std::string name = "resnet18_conv_lora";
  const auto io = read_map(peft_dir(name) + "/expected.safetensors");
  const auto base = read_map(peft_dir(name) + "/base.safetensors");
  const auto merged = read_map(peft_dir(name) + "/merged.safetensors");
  Backbone model = create_model("resnet18", 5);
  load_weights(*model, peft_dir(name) + "/base.safetensors");
  model->eval();
  const auto logits = [&] {
    torch::NoGradGuard no_grad;
    BatchNormFolding folding;  // as predict runs it: an adapted convolution is not folded until merged
    return model->forward(io.at("pixel_values"));
  };
  expect_close(name, "base.logits", logits(), io.at("base.logits"));
  const LoraConfig config = load_lora_adapter(*model, peft_dir(name));
  auto modules = model->named_modules();
  const std::vector<std::string> adapted = {"layer4.0.downsample.0", "layer4.1.conv2"};
  for (const auto& conv_name : adapted) {
    auto* conv = modules[conv_name]->as<torch::nn::Conv2d>();
    ASSERT_NE(conv, nullptr) << conv_name;
    EXPECT_FALSE(conv->bias.defined()) << conv_name << ": graft gave an adapted convolution a bias";
    conv->bias = merged.at(conv_name + ".bias").clone();  // what Conv2dImpl::forward adds
  }
  expect_close(name, "logits (adapter)", logits(), io.at("logits"));
  expect_close(name, "loss (adapter)", torch::nn::functional::cross_entropy(logits(), io.at("labels")),
               io.at("loss"));

  expect_saved_as_peft_saves(name, *model, config);

  EXPECT_EQ(merge_lora(*model), adapted);
  auto params = model->named_parameters();
  for (const auto& [key, tensor] : merged) {
    if (ends_with(key, "conv2.bias") || ends_with(key, "downsample.0.bias")) continue;  // PEFT's stray biases
    ASSERT_TRUE(params.contains(key)) << name << ": no parameter " << key;
    expect_close(name, "merged " + key, params[key], tensor);
  }
  expect_close(name, "merged.logits (folded)", logits(),
               read_map(peft_dir(name) + "/merged_outputs.safetensors").at("merged.logits"));
  unmerge_lora(*model);
  for (const auto& conv_name : adapted)
    expect_close(name, "unmerged " + conv_name, params[conv_name + ".weight"],
                 base.at(conv_name + ".weight"));
  expect_close(name, "logits (unmerged)", logits(), io.at("logits"));

  check_adamw_step(
      name, read_map(peft_dir(name) + "/expected_after_step.safetensors"), *model,
      [&] {
        return torch::nn::functional::cross_entropy(model->forward(io.at("pixel_values")), io.at("labels"));
      },
      from_peft_name);
}

// graft's new head (`avg,dense:5`: fc = Sequential(Linear)) is named in the adapter file as PEFT names
// torchvision's fc replaced by a Linear: PEFT's file loads into it, and graft saves it under PEFT's names.
TEST(Peft, OneLayerHeadIsNamedAsTorchvisionsLinear) {
  const std::string name = "resnet18_conv_lora";
  const auto io = read_map(peft_dir(name) + "/expected.safetensors");
  Backbone torchvision_fc = create_model("resnet18", 5);
  load_weights(*torchvision_fc, peft_dir(name) + "/base.safetensors");
  Backbone graft_head = create_model("resnet18", 5);
  load_weights(*graft_head, peft_dir(name) + "/base.safetensors");
  graft_head->set_head(HeadSpec::parse("avg,dense:5"));
  ASSERT_TRUE(graft_head->named_parameters().contains("fc.0.weight"));
  load_lora_adapter(*torchvision_fc, peft_dir(name));
  const LoraConfig config = load_lora_adapter(*graft_head, peft_dir(name));
  const auto adapter = read_map(peft_dir(name) + "/adapter_model.safetensors");
  EXPECT_TRUE(
      torch::equal(graft_head->named_parameters()["fc.0.weight"], adapter.at("base_model.model.fc.weight")));
  EXPECT_TRUE(
      torch::equal(graft_head->named_parameters()["fc.0.bias"], adapter.at("base_model.model.fc.bias")));
  torchvision_fc->eval();
  graft_head->eval();
  torch::NoGradGuard no_grad;
  // The same layers and weights: only summation order may differ (none here: the same kernels run).
  expect_close(name, "logits (graft's head)", graft_head->forward(io.at("pixel_values")),
               torchvision_fc->forward(io.at("pixel_values")));
  expect_saved_as_peft_saves(name, *graft_head, config);
}

// LoRA on a convolution graft cannot adapt as PEFT does is refused by name: a depthwise one, and one whose
// model does not run the branch (MobileNetV2's).
TEST(Peft, ConvolutionsGraftCannotAdaptAreRefusedByName) {
  Backbone mobilenet = create_model("mobilenet_v2", 3);
  try {
    apply_lora(*mobilenet, LoraConfig::parse("r=2,targets=features.1.conv.0.0"));
    ADD_FAILURE() << "LoRA on MobileNetV2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'features.1.conv.0.0'"), std::string::npos) << e.what();
  }
  Backbone resnet = create_model("resnet18", 3);
  const LoraReport report = apply_lora(*resnet, LoraConfig::parse("r=2,targets=re:layer4\\..*conv[12]"));
  EXPECT_EQ(report.adapted, (std::vector<std::string>{"layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1",
                                                      "layer4.1.conv2"}));
  // PEFT's shapes: A (r, in, kh, kw) with the base's stride, B (out, r, 1, 1), B zero so the base is kept.
  auto params = resnet->named_parameters();
  EXPECT_EQ(params["layer4.0.conv1.lora_A.weight"].sizes().vec(), (std::vector<int64_t>{2, 256, 3, 3}));
  EXPECT_EQ(params["layer4.0.conv1.lora_B.weight"].sizes().vec(), (std::vector<int64_t>{512, 2, 1, 1}));
  EXPECT_EQ(params["layer4.0.conv1.lora_B.weight"].abs().sum().item<double>(), 0.0);
  torch::NoGradGuard no_grad;
  resnet->eval();
  EXPECT_EQ(resnet->forward(torch::randn({1, 3, 64, 64})).sizes().vec(), (std::vector<int64_t>{1, 3}));
}

TEST(Peft, AdamWStepOfTheAdapterMatchesPeft) {
  {
    auto model =
        load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
    load_lora_adapter(*model, peft_dir("bert_lora"));
    const auto io = read_map(peft_dir("bert_lora") + "/expected.safetensors");
    TextInputs inputs(io.at("input_ids"), io.at("attention_mask"));
    inputs.labels = io.at("labels");
    check_adamw_step(
        "bert_lora", read_map(peft_dir("bert_lora") + "/expected_after_step.safetensors"), *model,
        [&] { return model->forward(inputs).loss; }, from_peft_name);
  }
  {
    auto model = load_peft_base("vit_lora", "ViTForImageClassification").as<ViTForImageClassificationImpl>();
    load_lora_adapter(*model, peft_dir("vit_lora"));
    const auto io = read_map(peft_dir("vit_lora") + "/expected.safetensors");
    check_adamw_step(
        "vit_lora", read_map(peft_dir("vit_lora") + "/expected_after_step.safetensors"), *model,
        [&] { return model->forward(io.at("pixel_values"), io.at("labels")).loss; }, from_peft_name);
  }
  {
    auto model = load_peft_base("gpt2_lora", "GPT2LMHeadModel").as<GPT2LMHeadModelImpl>();
    load_lora_adapter(*model, peft_dir("gpt2_lora"));
    const auto io = read_map(peft_dir("gpt2_lora") + "/expected.safetensors");
    CausalLMInputs inputs(io.at("input_ids"));
    inputs.labels = io.at("input_ids");
    check_adamw_step(
        "gpt2_lora", read_map(peft_dir("gpt2_lora") + "/expected_after_step.safetensors"), *model,
        [&] { return model->forward(inputs).loss; }, from_peft_name);
  }
  {
    auto model = load_peft_base("llama_lora", "LlamaForCausalLM").as<LlamaForCausalLMImpl>();
    load_lora_adapter(*model, peft_dir("llama_lora"));
    const auto io = read_map(peft_dir("llama_lora") + "/expected.safetensors");
    CausalLMInputs inputs(io.at("input_ids"));
    inputs.labels = io.at("input_ids");
    check_adamw_step(
        "llama_lora", read_map(peft_dir("llama_lora") + "/expected_after_step.safetensors"), *model,
        [&] { return model->forward(inputs).loss; }, from_peft_name);
  }
}

// What trains under an adapter: the branches and the head PEFT saves whole, nothing else; a new branch
// starts as PEFT's does (B = 0, so the model's outputs are the base's).
TEST(Peft, ApplyLoraFreezesTheBaseAndStartsAtTheBase) {
  auto model =
      load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
  const auto io = read_map(peft_dir("bert_lora") + "/expected.safetensors");
  model->eval();
  LoraConfig config = LoraConfig::parse("r=4,alpha=8,targets=query,value");
  config.task_type = "SEQ_CLS";
  const LoraReport report = apply_lora(*model, config);
  EXPECT_EQ(report.adapted.size(), 4u);  // query and value of two layers
  int64_t expected_trainable = 0;
  for (const auto& item : model->named_parameters()) {
    const bool trains =
        item.key().find(".lora_") != std::string::npos || item.key().rfind("classifier.", 0) == 0;
    EXPECT_EQ(item.value().requires_grad(), trains) << item.key();
    if (trains) expected_trainable += item.value().numel();
  }
  EXPECT_EQ(report.trainable, expected_trainable);
  torch::NoGradGuard no_grad;
  expect_close("bert_lora", "logits (fresh adapter: the base's)",
               model->forward({io.at("input_ids"), io.at("attention_mask")}).logits, io.at("base.logits"));
}

TEST(Peft, BadConfigurationsAreRefusedByName) {
  const auto refused = [](const std::function<void()>& make, const std::string& words) {
    try {
      make();
      ADD_FAILURE() << "accepted; expected an error with: " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused([] { LoraConfig::parse("r=0,targets=query"); }, "r must be positive");
  refused([] { LoraConfig::parse("r=4,alpha=-1,targets=query"); }, "alpha must be positive");
  refused([] { LoraConfig::parse("r=4,dropout=1,targets=query"); }, "dropout must be in [0, 1)");
  refused([] { LoraConfig::parse("r=4,targets=query,bias=some"); }, "bias 'some'");
  refused([] { LoraConfig::parse("r=4,rank=3,targets=query"); }, "unknown key 'rank'");
  refused([] { LoraConfig::parse("r=4"); }, "no targets");
  auto model =
      load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
  refused([&] { apply_lora(*model, LoraConfig::parse("r=4,targets=quer")); }, "'quer' matches no module");
  refused([&] { apply_lora(*model, LoraConfig::parse("r=4,targets=LayerNorm")); },
          "graft adapts Linear, Conv2d");
  auto vit = load_peft_base("vit_lora", "ViTForImageClassification").as<ViTForImageClassificationImpl>();
  refused([&] { apply_lora(*vit, LoraConfig::parse("r=4,targets=classifier")); }, "train it whole instead");
  nlohmann::json newer = read_json_file(peft_dir("bert_lora") + "/adapter_config.json");
  newer["use_dora"] = true;
  refused([&] { LoraConfig::from_json(newer, "a.json"); }, "DoRA is not supported");
  newer.erase("use_dora");
  newer["exotic_option"] = 1;
  refused([&] { LoraConfig::from_json(newer, "a.json"); }, "field 'exotic_option'");
}

// An adapter made for another base (ViT's, on BERT, whose layers have the same target names) is refused
// naming the tensor, and the model is left as it was: no branch, the same parameters training.
TEST(Peft, AnAdapterOfAnotherBaseIsRefusedAndLeavesTheModelAsItWas) {
  auto model =
      load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
  const auto io = read_map(peft_dir("bert_lora") + "/expected.safetensors");
  model->eval();
  const size_t params_before = model->named_parameters().size();
  try {
    load_lora_adapter(*model, peft_dir("vit_lora"));
    ADD_FAILURE() << "ViT's adapter was loaded into BERT";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("an adapter of another base?"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("adapter_model.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->named_parameters().size(), params_before);
  for (const auto& item : model->named_parameters()) EXPECT_TRUE(item.value().requires_grad()) << item.key();
  torch::NoGradGuard no_grad;
  expect_close("bert_lora", "logits (after a refused adapter: the base's)",
               model->forward({io.at("input_ids"), io.at("attention_mask")}).logits, io.at("base.logits"));
}

// PEFT's target matching: a list entry is the whole name or its last dotted parts; a single string is a
// regular expression the whole name matches.
TEST(Peft, TargetsMatchAsPeftMatchesThem) {
  LoraConfig list = LoraConfig::parse("r=4,targets=query,attention.self.value");
  EXPECT_TRUE(lora_targets(list, "bert.encoder.layer.0.attention.self.query"));
  EXPECT_TRUE(lora_targets(list, "query"));
  EXPECT_TRUE(lora_targets(list, "bert.encoder.layer.0.attention.self.value"));
  EXPECT_FALSE(lora_targets(list, "bert.encoder.layer.0.attention.self.query_proj"));
  EXPECT_FALSE(lora_targets(list, "bert.encoder.layer.0.attention.output.value"));
  LoraConfig regex = LoraConfig::parse("r=4,targets=re:.*layer\\.1\\..*(query|value)");
  EXPECT_TRUE(lora_targets(regex, "bert.encoder.layer.1.attention.self.value"));
  EXPECT_FALSE(lora_targets(regex, "bert.encoder.layer.0.attention.self.value"));
  EXPECT_FALSE(lora_targets(regex, "bert.encoder.layer.1.attention.self.value.extra"));  // a full match
  auto model =
      load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
  const LoraReport all = apply_lora(*model, LoraConfig::parse("r=2,targets=all-linear"));
  EXPECT_EQ(std::count(all.adapted.begin(), all.adapted.end(), "classifier"), 0);  // the output layer
  EXPECT_EQ(std::count(all.adapted.begin(), all.adapted.end(), "bert.pooler.dense"), 1);
  EXPECT_EQ(all.adapted.size(), 13u);  // 6 Linear layers in each of 2 blocks, and the pooler
}

// PEFT's options: rsLoRA scales by alpha / sqrt(r) (PEFT's use_rslora), init=gaussian draws A from
// N(0, (1/r)^2) (PEFT's init_lora_weights="gaussian"), the default A is nn.Linear's Kaiming-uniform
// (bound 1/sqrt(in)) and B starts at zero; bias chooses which biases train and are saved; dropout acts on
// the branch's input in training only; each survives adapter_config.json.
TEST(Peft, ScalingInitBiasAndDropoutAreAsPeftHasThem) {
  EXPECT_DOUBLE_EQ(LoraConfig::parse("r=16,alpha=8,targets=query").scaling(), 0.5);
  EXPECT_DOUBLE_EQ(LoraConfig::parse("r=16,alpha=8,targets=query,rslora").scaling(), 2.0);
  const auto fresh = [] {
    return load_peft_base("bert_lora", "BertForSequenceClassification")
        .as<BertForSequenceClassificationImpl>();
  };
  {
    auto model = fresh();
    torch::manual_seed(0);
    apply_lora(*model, LoraConfig::parse("r=64,alpha=8,targets=all-linear,init=gaussian"));
    std::vector<torch::Tensor> a;
    for (const auto& item : model->named_parameters())
      if (item.key().find(".lora_A.") != std::string::npos) a.push_back(item.value().detach().flatten());
    const torch::Tensor all = torch::cat(a);
    // N(0, 1/64^2) over ~10^4 draws: the sample std is within 5% of 1/64 (its relative error ~0.7%).
    EXPECT_NEAR(all.std().item<double>(), 1.0 / 64, 0.05 / 64);
  }
  {
    auto model = fresh();
    apply_lora(*model, LoraConfig::parse("r=4,targets=query"));
    auto params = model->named_parameters();
    const torch::Tensor a = params["bert.encoder.layer.0.attention.self.query.lora_A.weight"];
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.size(1)));  // kaiming_uniform, a = sqrt(5)
    EXPECT_LE(a.abs().max().item<double>(), bound);
    EXPECT_GT(a.abs().max().item<double>(), 0.8 * bound);
    EXPECT_EQ(params["bert.encoder.layer.0.attention.self.query.lora_B.weight"].abs().sum().item<double>(),
              0.0);
  }
  for (const auto& [bias, trained] : std::vector<std::pair<std::string, size_t>>{
           {"none", 0}, {"lora_only", 4}, {"all", 0 /* every bias */}}) {
    auto model = fresh();
    LoraConfig config = LoraConfig::parse("r=4,targets=query,value,bias=" + bias);
    apply_lora(*model, config);
    size_t biases = 0, all_biases = 0;
    for (const auto& item : model->named_parameters()) {
      if (!ends_with(item.key(), ".bias")) continue;
      ++all_biases;
      biases += item.value().requires_grad();
    }
    EXPECT_EQ(biases, bias == "all" ? all_biases : trained) << bias;
    size_t saved = 0;
    for (const auto& [name, tensor] : lora_adapter_tensors(*model, config)) saved += ends_with(name, ".bias");
    EXPECT_EQ(saved, biases) << bias;
    EXPECT_EQ(LoraConfig::from_json(config.to_json(), "x").bias, bias);
  }
  EXPECT_TRUE(LoraConfig::from_json(LoraConfig::parse("r=2,targets=q,rslora,init=gaussian").to_json(), "x")
                  .use_rslora);
  EXPECT_EQ(LoraConfig::from_json(LoraConfig::parse("r=2,targets=q,init=gaussian").to_json(), "x").init,
            "gaussian");
  {
    torch::manual_seed(1);
    auto linear = torch::nn::Linear(8, 8);
    linear->register_module("lora_A", LoraDown(8, 2, 0.5));
    linear->register_module("lora_B", LoraUp(2, 8, 1.0));
    torch::NoGradGuard no_grad;
    for (auto& p : linear->named_parameters())
      if (p.key().find("lora_B") != std::string::npos) p.value().fill_(1.0);
    const torch::Tensor x = torch::ones({4, 8});
    linear->eval();
    const torch::Tensor eval_out = graft::linear(linear, x);
    EXPECT_TRUE(torch::equal(eval_out, graft::linear(linear, x))) << "dropout ran in eval mode";
    linear->train();
    EXPECT_FALSE(torch::equal(eval_out, graft::linear(linear, x))) << "no dropout on the branch in training";
  }
}

// Every branch runs: with non-zero B matrices on every Linear, the outputs with the branches equal those
// of the merged weights (a branch the forward skipped would make them differ), and differ from the base's.
TEST(Peft, EveryAdaptedLayerRunsItsBranch) {
  const auto with_random_branches = [](torch::nn::Module& model) {
    torch::NoGradGuard no_grad;
    torch::manual_seed(3);
    for (auto& item : model.named_parameters())
      if (item.key().find(".lora_B.") != std::string::npos) item.value().normal_(0.0, 0.1);
  };
  {
    auto model =
        load_peft_base("bert_lora", "BertForSequenceClassification").as<BertForSequenceClassificationImpl>();
    const auto io = read_map(peft_dir("bert_lora") + "/expected.safetensors");
    model->eval();
    apply_lora(*model, LoraConfig::parse("r=4,targets=all-linear"));
    with_random_branches(*model);
    torch::NoGradGuard no_grad;
    const torch::Tensor branches = model->forward({io.at("input_ids"), io.at("attention_mask")}).logits;
    EXPECT_FALSE(torch::allclose(branches, io.at("base.logits"), 1e-4, 1e-5));
    EXPECT_EQ(merge_lora(*model).size(), 13u);
    expect_close("bert_lora", "all-linear merged = branches",
                 model->forward({io.at("input_ids"), io.at("attention_mask")}).logits, branches);
  }
  {
    auto model = load_peft_base("vit_lora", "ViTForImageClassification").as<ViTForImageClassificationImpl>();
    const auto io = read_map(peft_dir("vit_lora") + "/expected.safetensors");
    model->eval();
    apply_lora(*model, LoraConfig::parse("r=4,targets=all-linear"));
    with_random_branches(*model);
    torch::NoGradGuard no_grad;
    const torch::Tensor branches = model->forward(io.at("pixel_values"));
    EXPECT_FALSE(torch::allclose(branches, io.at("base.logits"), 1e-4, 1e-5));
    merge_lora(*model);
    expect_close("vit_lora", "all-linear merged = branches", model->forward(io.at("pixel_values")), branches);
  }
}

}  // namespace
}  // namespace graft
