// `graft convert IN --to OUT.safetensors --model ARCH[.TAG]`: a Keras .h5 or TF.js model.json to a
// safetensors file with graft's names and layouts, which --weights then loads with no conversion.
// The weights go through the model (strict load), so a file of another architecture is refused here
// rather than when the safetensors file is used.
#include <iostream>

#include "cli/commands.h"
#include "graft/keras.h"
#include "graft/registry.h"
#include "graft/weights.h"

namespace graft::cli {

void add_convert_command(CLI::App& app) {
  struct Args {
    std::string input;
    std::string output;
    std::string model;
    bool strict = true;
  };
  auto args = std::make_shared<Args>();
  auto* command = app.add_subcommand(
      "convert", "convert Keras .h5 or TF.js layers-model weights to safetensors with graft names");
  command
      ->add_option("input", args->input,
                   "Keras .h5 file (full model or weights), TF.js model.json / model.min.js, or its folder")
      ->required()
      ->check(CLI::ExistingPath);
  command->add_option("--to", args->output, "output safetensors file")->required();
  command->add_option("--model", args->model, "architecture the weights are for, e.g. mobilenet_v1_025.keras")
      ->required();
  command->add_flag("!--no-strict", args->strict,
                    "write what fits even when names or shapes do not all match");
  command->callback([args] {
    Backbone model = create_model(args->model);
    const KerasModel keras = read_keras_file(args->input);
    WeightsOptions options;
    options.strict = args->strict;
    options.hint = "--no-strict writes what fits";
    const LoadReport report = load_keras_weights(*model, keras, options);
    if (!report.ok()) std::cerr << "graft: warning: " << report.to_string() << "\n";
    const NamedTensors tensors = state_dict(*model);
    int64_t values = 0;
    for (const auto& item : tensors) values += item.second.numel();
    write_safetensors(args->output, tensors,
                      {{"format", "pt"},
                       {"graft_arch", model->arch()},
                       {"source", args->input},
                       {"source_format", keras.format},
                       {"keras_version", keras.keras_version}});
    std::cout << "converted " << args->input << " (" << keras.format
              << (keras.keras_version.empty() ? "" : ", Keras " + keras.keras_version) << ") -> "
              << args->output << ": " << tensors.size() << " tensors, " << values << " values, "
              << model->arch() << " with " << model->num_classes() << " classes\n";
  });
}

}  // namespace graft::cli
