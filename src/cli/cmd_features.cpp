// `graft features MODEL_OR_RUN_DIR --data DATA --out FILE.safetensors`: pooled features (embeddings) of
// every sample, with their names and labels, computed the fast frozen way: images for a model name, the
// run's kind of data for a run directory of any task.
#include <iostream>
#include <map>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/image_task.h"
#include "graft/run.h"
#include "graft/runtime.h"
#include "graft/task.h"
#include "graft/weights.h"

namespace graft::cli {

void add_features_command(CLI::App& app) {
  auto* command =
      app.add_subcommand("features", "write pooled features of images (embeddings) to safetensors");
  auto source = std::make_shared<std::string>();
  auto weights = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto options = std::make_shared<UseOptions>();
  auto device = std::make_shared<std::string>("auto");
  command->add_option("model", *source, "run directory, or ARCH[.TAG]")->required();
  command
      ->add_option("--weights", *weights,
                   "weights for ARCH (safetensors, or a Hub repository ORG/NAME[@REV])")
      ->check(weights_source());
  command
      ->add_option(
          "--data", *data,
          "images: DATA/<class>/*.jpg (train/ and val/ both, each row's part named), or IDX files; a run of "
          "another task: its kind of data")
      ->required();
  command->add_option("--out", *out, "safetensors file: features (N, D), labels (N); file names in metadata")
      ->required();
  command->add_option("--batch-size", options->batch_size, "samples per batch")->check(CLI::PositiveNumber);
  command->add_option("--limit", options->limit,
                      "images per part of the data (train, val) to use, a seeded subset (0: all)");
  auto args = std::make_shared<ModelArgs>();
  add_adapter_options(*command, args->adapters, args->merge, "the weights or the run's model");
  command->add_option("--num-classes", args->num_classes,
                      "ARCH: the classifier's classes, as the adapter's head has them");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  auto precision = std::make_shared<std::string>("fp32");
  add_precision_option(*command, *precision);
  command->callback([source, weights, data, out, options, device, precision, args] {
    options->device = parse_device(*device);
    const Precision mixed = resolve_precision(*precision, options->device, std::cerr);
    FeatureSet set;
    if (is_run_dir(*source)) {
      if (!weights->empty() || args->num_classes >= 0)
        throw Error(std::string(!weights->empty() ? "--weights" : "--num-classes") +
                    " applies to a model name; " + *source + " is a run directory with its own weights");
      const std::unique_ptr<Run> run = open_run(*source);
      apply_run_adapters(run->model(), run->classes(), args->adapters, args->merge);
      Autocast autocast(mixed, options->device);
      set = run->features(*data, *options, std::cerr);
      set.classes = run->classes();
    } else {
      // The model as every command builds one: --weights, else the tag's weights (or how to get them),
      // else random weights, said; then the adapters.
      args->model = *source;
      args->weights = *weights;
      Backbone model = build_model(*args);
      Autocast autocast(mixed, options->device);
      set = model_features(*model, *data, *options, std::cerr);
    }
    nlohmann::json ids = set.ids, names = set.classes;
    std::map<std::string, std::string> metadata = {
        {"ids", ids.dump()}, {"classes", names.dump()}, {"model", *source}};
    std::string parts;
    if (!set.splits.empty()) {
      metadata["splits"] = nlohmann::json(set.splits).dump();
      std::map<std::string, int64_t> counts;
      for (const auto& split : set.splits) ++counts[split];
      for (const auto& [split, count] : counts)
        parts += (parts.empty() ? "" : ", ") + split + " " + std::to_string(count);
      parts = " (" + parts + "; metadata 'splits' names each row's)";
    }
    write_safetensors(*out, {{"features", set.features}, {"labels", set.labels}}, metadata);
    std::cout << "wrote " << *out << ": features " << shape_str(set.features.sizes().vec()) << parts << "\n";
  });
}

}  // namespace graft::cli
