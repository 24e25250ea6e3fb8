// `graft forward MODEL --weights W --inputs IN.safetensors --out OUT.safetensors`: runs the model in
// eval mode on named inputs and writes named outputs; the generic tool behind parity checks. MODEL may
// also be a Hugging Face model folder (config.json + model.safetensors or its shards: BERT, RoBERTa, XLM-R,
// DistilBERT, GPT-2, Llama, Qwen2, ViT), fed with input_ids / attention_mask / token_type_ids or
// pixel_values.
#include <filesystem>
#include <iostream>
#include <numeric>

#include "cli/commands.h"
#include "graft/bert.h"
#include "graft/distilbert.h"
#include "graft/errors.h"
#include "graft/gpt2.h"
#include "graft/hub.h"
#include "graft/llama.h"
#include "graft/runtime.h"
#include "graft/strings.h"
#include "graft/transformers.h"
#include "graft/video_model.h"
#include "graft/vit.h"
#include "graft/weights.h"

namespace graft::cli {
namespace {

std::string tensor_names(const SafeTensorsReader& reader) {
  std::string names;
  for (const auto& t : reader.tensors()) names += (names.empty() ? "" : ", ") + t.name;
  return names.empty() ? "none" : names;
}

// An optional (B, T) integer input; undefined when absent.
torch::Tensor token_input(const SafeTensorsReader& reader, const std::string& name, bool required,
                          torch::Device device) {
  if (!reader.contains(name)) {
    if (required) {
      throw Error(reader.path() + ": no tensor named '" + name + "' (found: " + tensor_names(reader) +
                  "); expected (batch, length) int64 token ids");
    }
    return {};
  }
  torch::Tensor t = reader.load(name);
  if (t.dim() != 2) throw ShapeMismatch(reader.path(), name, {-1, -1}, t.sizes().vec());
  // 3.7 would run as token 3: ids are integers, and a float tensor is a mistake in the inputs.
  if (!c10::isIntegralType(t.scalar_type(), /*includeBool=*/false))
    throw Error(reader.path() + ": tensor '" + name + "' holds " +
                std::string(c10::toString(t.scalar_type())) +
                " values; expected (batch, length) integer token ids (I64 or I32)");
  return t.to(device, torch::kLong);
}

// Runs a Hugging Face model folder: every output the model computes, under Hugging Face's names.
NamedTensors forward_hf(const ModelArgs& args, const SafeTensorsReader& reader, torch::Device device) {
  HfLoadOptions options;
  options.strict = args.strict;
  HfModel hf = load_hf_model(args.model, options);
  if (!hf.report.ok()) std::cerr << "graft: warning: " << hf.report.to_string() << "\n";
  apply_adapter_args(args, *hf.module);
  hf.module->to(device);
  hf.module->eval();
  torch::NoGradGuard no_grad;
  NamedTensors out;
  auto add = [&](const char* name, const torch::Tensor& t) {
    if (t.defined()) out.emplace_back(name, t.cpu());
  };
  // Text encoders and classifiers: a model without segments refuses token_type_ids by name.
  auto text_inputs = [&] {
    TextInputs inputs;
    inputs.input_ids = token_input(reader, "input_ids", true, device);
    inputs.attention_mask = token_input(reader, "attention_mask", false, device);
    inputs.token_type_ids = token_input(reader, "token_type_ids", false, device);
    return inputs;
  };
  if (auto classifier = std::dynamic_pointer_cast<SequenceClassifierImpl>(hf.module)) {
    ClassifierOutput result = classifier->forward(text_inputs());
    add("logits", result.logits);
    add("last_hidden_state", result.base.last_hidden_state);
    add("pooler_output", result.base.pooler_output);
  } else if (auto distilbert = std::dynamic_pointer_cast<DistilBertModelImpl>(hf.module)) {
    add("last_hidden_state", distilbert->forward(text_inputs()).last_hidden_state);
  } else if (auto bert = std::dynamic_pointer_cast<BertModelImpl>(hf.module)) {  // BERT, RoBERTa, XLM-R
    EncoderOutput result = bert->forward(text_inputs());
    add("last_hidden_state", result.last_hidden_state);
    add("pooler_output", result.pooler_output);
  } else if (hf.model_type == "gpt2" || hf.model_type == "llama" || hf.model_type == "qwen2") {
    CausalLMInputs inputs;
    inputs.input_ids = token_input(reader, "input_ids", true, device);
    inputs.attention_mask = token_input(reader, "attention_mask", false, device);
    if (hf.model_type == "gpt2")
      inputs.token_type_ids = token_input(reader, "token_type_ids", false, device);  // added through wte
    if (auto model = std::dynamic_pointer_cast<CausalLMImpl>(hf.module)) {
      CausalLMOutput result = model->forward(inputs);
      add("logits", result.logits);
      add("last_hidden_state", result.last_hidden_state);
    } else if (auto llama = std::dynamic_pointer_cast<LlamaModelImpl>(hf.module)) {
      add("last_hidden_state", llama->forward(inputs).last_hidden_state);
    } else {
      add("last_hidden_state", hf.as<GPT2ModelImpl>()->forward(inputs).last_hidden_state);
    }
  } else {
    if (!reader.contains("pixel_values")) {
      throw Error(reader.path() + ": no tensor named 'pixel_values' (found: " + tensor_names(reader) +
                  "); expected (N, C, H, W) float32 pixels as the model's image processor makes them");
    }
    const torch::Tensor pixels = reader.load("pixel_values").to(device, torch::kFloat32);
    if (auto model = std::dynamic_pointer_cast<ViTForImageClassificationImpl>(hf.module)) {
      ClassifierOutput result = model->forward(pixels, torch::Tensor());
      add("logits", result.logits);
      add("last_hidden_state", result.base.last_hidden_state);
    } else {
      EncoderOutput result = hf.as<ViTModelImpl>()->forward(pixels);
      add("last_hidden_state", result.last_hidden_state);
      add("pooler_output", result.pooler_output);
    }
  }
  return out;
}

// The output never replaces what is read: `--inputs F --out F` used to overwrite the inputs.
void check_out_is_new(const std::string& out, const std::string& inputs, const ModelArgs& args) {
  namespace fs = std::filesystem;
  std::error_code ignored;
  const fs::path model_weights = fs::path(args.model) / "model.safetensors";
  for (const auto& [flag, path] : {std::pair<std::string, std::string>{"--inputs", inputs},
                                   {"--weights", args.weights},
                                   {"MODEL", model_weights.string()}})
    if (!path.empty() && fs::equivalent(out, path, ignored))
      throw Error("--out " + out + " is the file " + flag + " names (" + path +
                  "); write the outputs to another file");
}

// MODEL may name a Hugging Face Hub repository (ORG/NAME[@REV]): its snapshot folder in the cache.
std::string resolve_hub_model(const std::string& model) {
  if (!looks_like_hub_repo(model) || std::filesystem::exists(model)) return model;
  const std::filesystem::path resolved = resolve_weights(model);
  const std::filesystem::path folder =
      std::filesystem::is_directory(resolved) ? resolved : resolved.parent_path();
  if (!std::filesystem::is_regular_file(folder / "config.json")) {
    throw Error(model + " (" + folder.string() +
                ") has no config.json, so it names no Hugging Face "
                "model: give the architecture as MODEL and the repository as --weights");
  }
  return folder.string();
}

// An image or video backbone on pixel_values: its logits and pooled features.
void forward_backbone(const ModelArgs& args, const std::string& inputs, const std::string& out,
                      torch::Device dev) {
  Backbone model = build_model(args);
  SafeTensorsReader reader(inputs);
  if (!reader.contains("pixel_values")) {
    std::string names;
    for (const auto& t : reader.tensors()) names += (names.empty() ? "" : ", ") + t.name;
    throw Error(inputs + ": no tensor named 'pixel_values' (found: " + (names.empty() ? "none" : names) +
                "); expected (N, 3, H, W) float32 pixels normalised with the model's mean/std");
  }
  torch::Tensor pixels = reader.load("pixel_values");
  // Video backbones take clips (N, C, T, H, W), as torchvision's video models do.
  const bool video = is_video_backbone(*model);
  if (video ? pixels.dim() != 5 || pixels.size(1) != 3 : pixels.dim() != 4 || pixels.size(1) != 3) {
    throw ShapeMismatch(inputs, "pixel_values",
                        video ? std::vector<int64_t>{-1, 3, -1, -1, -1} : std::vector<int64_t>{-1, 3, -1, -1},
                        pixels.sizes().vec());
  }
  model->to(dev);
  model->eval();
  torch::NoGradGuard no_grad;
  pixels = pixels.to(dev, torch::kFloat32);
  torch::Tensor features = model->forward_features(pixels);
  torch::Tensor logits = model->forward_head(features);
  std::vector<int64_t> spatial(static_cast<size_t>(features.dim() - 2));
  std::iota(spatial.begin(), spatial.end(), int64_t{2});  // pooled over (T,) H, W
  write_safetensors(out, {{"logits", logits.cpu()}, {"features", features.mean(spatial).cpu()}},
                    {{"model", args.model}, {"producer", "graft " GRAFT_VERSION}});
  std::cout << "wrote " << out << ": logits " << shape_str(logits.sizes().vec()) << ", features "
            << shape_str({features.size(0), features.size(1)}) << "\n";
}

}  // namespace

void add_forward_command(CLI::App& app) {
  auto* command = app.add_subcommand("forward", "run a model on tensors from a safetensors file");
  auto args = std::make_shared<ModelArgs>();
  auto inputs = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("cpu");
  args->add_to(*command, /*with_freeze=*/false);
  command
      ->add_option("--inputs", *inputs,
                   "safetensors file holding pixel_values (N, 3, H, W), normalised (video models: clips "
                   "(N, 3, T, H, W)); for a Hugging Face "
                   "text model folder input_ids (and optionally attention_mask, token_type_ids)")
      ->required()
      ->check(CLI::ExistingFile);
  command
      ->add_option("--out", *out,
                   "safetensors file to write: logits, features (pooled); for a Hugging Face model folder "
                   "logits, last_hidden_state, pooler_output (what the model computes)")
      ->required();
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([args, inputs, out, device] {
    check_out_is_new(*out, *inputs, *args);
    args->model = resolve_hub_model(args->model);
    // A folder names a Hugging Face model: its config.json must be a file (a folder there was reported as
    // "unknown architecture").
    if (std::filesystem::is_directory(args->model))
      regular_file_size((std::filesystem::path(args->model) / "config.json").string(),
                        "config.json of a Hugging Face model folder");
    if (std::filesystem::is_regular_file(std::filesystem::path(args->model) / "config.json")) {
      const SafeTensorsReader reader(*inputs);
      const NamedTensors outputs = forward_hf(*args, reader, parse_device(*device));
      write_safetensors(*out, outputs, {{"model", args->model}, {"producer", "graft " GRAFT_VERSION}});
      std::cout << "wrote " << *out << ":";
      for (const auto& [name, tensor] : outputs)
        std::cout << " " << name << " " << shape_str(tensor.sizes().vec());
      std::cout << "\n";
      return;
    }
    forward_backbone(*args, *inputs, *out, parse_device(*device));
  });
}

}  // namespace graft::cli
