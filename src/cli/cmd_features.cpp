// `graft features MODEL_OR_RUN_DIR --data DIR --out FILE.safetensors`: pooled features (embeddings) of
// every image, with file names and labels, computed the fast frozen way.
#include <iostream>

#include "cli/commands.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/image_task.h"
#include "graft/registry.h"
#include "graft/runtime.h"
#include "graft/weights.h"

namespace graft::cli {

void add_features_command(CLI::App& app) {
  auto* command =
      app.add_subcommand("features", "write pooled features of images (embeddings) to safetensors");
  auto source = std::make_shared<std::string>();
  auto weights = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto batch = std::make_shared<int64_t>(32);
  auto limit = std::make_shared<size_t>(0);
  auto device = std::make_shared<std::string>("auto");
  command->add_option("model", *source, "run directory, or ARCH[.TAG]")->required();
  command
      ->add_option("--weights", *weights,
                   "weights for ARCH (safetensors, or a Hub repository ORG/NAME[@REV])")
      ->check(weights_source());
  command->add_option("--data", *data, "image folder DATA/<class>/*.jpg, or IDX files")->required();
  command->add_option("--out", *out, "safetensors file: features (N, D), labels (N); file names in metadata")
      ->required();
  command->add_option("--batch-size", *batch, "images per batch");
  command->add_option("--limit", *limit, "IDX data: images to use (0: all)");
  command->add_option("--device", *device, "auto, cpu or cuda[:N]");
  command->callback([source, weights, data, out, batch, limit, device] {
    Backbone model;
    std::vector<std::string> classes;
    Preprocessing pre;
    std::shared_ptr<Dataset> dataset;
    if (is_run_dir(*source)) {
      LoadedRun run = load_run(*source);
      model = run.model;
      pre = run.spec.preprocessing;
      dataset = open_eval_data(*data, run.spec.classes, transform_for(pre, false), *limit);
    } else {
      model = create_model(*source);
      pre = Preprocessing::from_cfg(model->default_cfg());
      if (!weights->empty()) {
        load_weights(*model, resolve_weights(*weights));
      } else if (!ModelName::parse(*source).tag.empty()) {
        load_pretrained(*model);  // a tag's weights, or an error saying how to get them
      } else {
        std::cerr << "graft: random initialisation: features of " << *source
                  << ", which names no pretrained weights (a tag does; see `graft models " << model->arch()
                  << "`)\n";
      }
      ImageData sets =
          open_image_data(*data, transform_for(pre, false), transform_for(pre, false), 0.0, 0, *limit);
      dataset = sets.train;
    }
    classes = dataset->classes();
    LoaderOptions options;
    options.batch_size = *batch;
    options.shuffle = false;
    DataLoader loader(dataset, options);
    FeatureSet set = extract_features(*model, loader, parse_device(*device), std::cerr);
    nlohmann::json ids = set.ids, names = classes;
    write_safetensors(*out, {{"features", set.features}, {"labels", set.labels}},
                      {{"ids", ids.dump()}, {"classes", names.dump()}, {"model", *source}});
    std::cout << "wrote " << *out << ": features " << shape_str(set.features.sizes().vec()) << "\n";
  });
}

}  // namespace graft::cli
