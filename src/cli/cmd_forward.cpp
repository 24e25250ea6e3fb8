// `graft forward MODEL --weights W --inputs IN.safetensors --out OUT.safetensors`: runs the model in
// eval mode on named inputs and writes named outputs; the generic tool behind parity checks.
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/runtime.h"
#include "graft/weights.h"

namespace graft::cli {

void add_forward_command(CLI::App& app) {
  auto* command = app.add_subcommand("forward", "run a model on tensors from a safetensors file");
  auto args = std::make_shared<ModelArgs>();
  auto inputs = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("cpu");
  args->add_to(*command, /*with_freeze=*/false);
  command->add_option("--inputs", *inputs, "safetensors file holding pixel_values (N, 3, H, W), normalised")
      ->required()
      ->check(CLI::ExistingFile);
  command->add_option("--out", *out, "safetensors file to write: logits, features (pooled)")->required();
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([args, inputs, out, device] {
    Backbone model = build_model(*args);
    const torch::Device dev = parse_device(*device);
    SafeTensorsReader reader(*inputs);
    if (!reader.contains("pixel_values")) {
      std::string names;
      for (const auto& t : reader.tensors()) names += (names.empty() ? "" : ", ") + t.name;
      throw Error(*inputs + ": no tensor named 'pixel_values' (found: " + (names.empty() ? "none" : names) +
                  "); expected (N, 3, H, W) float32 pixels normalised with the model's mean/std");
    }
    torch::Tensor pixels = reader.load("pixel_values");
    if (pixels.dim() != 4 || pixels.size(1) != 3) {
      throw ShapeMismatch(*inputs, "pixel_values", {-1, 3, -1, -1}, pixels.sizes().vec());
    }
    model->to(dev);
    model->eval();
    torch::NoGradGuard no_grad;
    pixels = pixels.to(dev, torch::kFloat32);
    torch::Tensor features = model->forward_features(pixels);
    torch::Tensor logits = model->forward_head(features);
    write_safetensors(*out, {{"logits", logits.cpu()}, {"features", features.mean({2, 3}).cpu()}},
                      {{"model", args->model}, {"producer", "graft " GRAFT_VERSION}});
    std::cout << "wrote " << *out << ": logits " << shape_str(logits.sizes().vec()) << ", features "
              << shape_str({features.size(0), features.size(1)}) << "\n";
  });
}

}  // namespace graft::cli
