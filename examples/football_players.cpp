// The classic Keras transfer-learning recipe, through graft's C++ API:
//   base = ResNet50(weights="imagenet", include_top=False); base.trainable = False
//   model = Sequential([base, Flatten(), Dense(512, activation="relu"), Dense(10)])
//   model.fit(...)                                   # stage 1: the new head only
//   for layer in base.layers[-N:]: layer.trainable = True
//   model.compile(optimizer=Adam(1e-5)); model.fit(...)  # stage 2: the top of the backbone, low rate
//
// Usage: football_players DATA_DIR [--weights FILE] [--out RUN_DIR] [--epochs N]  (--help)
//   DATA_DIR holds one folder per player (DATA_DIR/<player>/*.jpg), or train/ + val/.
//   --weights: ResNet-50 weights with torchvision names (e.g. timm's resnet50.tv_in1k model.safetensors);
//   without it, the tag's own (pulled from the Hugging Face Hub on first use).
#include <iostream>

#include "example_args.h"
#include "graft/data.h"
#include "graft/image_task.h"
#include "graft/registry.h"
#include "graft/trainer.h"
#include "graft/transfer.h"

int main(int argc, char** argv) try {
  const example::Args args(argc, argv, "football_players DATA_DIR [options]",
                           {{"DATA_DIR", "", "DATA_DIR/<player>/*.jpg, or DATA_DIR/train + DATA_DIR/val"}},
                           {{"--weights", "", "ResNet-50 weights with torchvision names (safetensors)"},
                            {"--out", "football_run", "run directory to write (new or empty)"},
                            {"--epochs", "5", "epochs of each stage"}});
  const std::string data_dir = args["DATA_DIR"], weights = args["--weights"], run_dir = args["--out"];
  const int64_t epochs = args.integer("--epochs");
  // A folder of the user's is never written into.
  graft::check_out_folder(run_dir, {data_dir}, {weights}, /*resume=*/false, /*overwrite=*/false);

  // 1. The pretrained backbone, its top cut off.
  graft::Backbone model = graft::create_model("resnet50.tv_in1k");
  if (!weights.empty()) {
    graft::WeightsOptions skip_head;
    skip_head.skip_classifier = true;  // the classifier is replaced by the new head
    graft::load_weights(*model, weights, skip_head);
  } else {
    try {  // the tag's own weights: the Hugging Face cache, pulled from timm/resnet50.tv_in1k on first use
      graft::WeightsOptions skip_head;
      skip_head.skip_classifier = true;
      graft::load_pretrained(*model, skip_head);
    } catch (const graft::Error& e) {
      std::cerr << "football_players: no pretrained weights (" << e.what()
                << "); resnet50 runs from RANDOM weights, which is no transfer learning: pass --weights\n";
    }
  }

  // 2. The data: images resized and normalised the way the weights were trained.
  const graft::Preprocessing pre = graft::Preprocessing::from_cfg(model->default_cfg());
  graft::ImageData data = graft::open_image_data(data_dir, graft::transform_for(pre, /*train=*/true),
                                                 graft::transform_for(pre, /*train=*/false),
                                                 /*val_split=*/0.2, /*seed=*/42, /*limit=*/0);
  const auto classes = static_cast<int64_t>(data.classes.size());

  // 3. A new head (Flatten, Dense(512, relu), Dense(classes)), and the backbone frozen.
  model->set_head(graft::HeadSpec::parse("flatten,dense:512:relu,dense:" + std::to_string(classes)));
  graft::apply_freeze(*model, "all");

  graft::LoaderOptions loader_options;
  loader_options.batch_size = 16;
  graft::DataLoader train_loader(data.train, loader_options);
  loader_options.shuffle = false;
  graft::DataLoader val_loader(data.val, loader_options);
  graft::LoaderBatchSource train(train_loader), val(val_loader);

  // 4. Stage 1: train the head.
  graft::TrainConfig config;
  config.epochs = epochs;
  config.optimizer.name = "adam";
  config.optimizer.lr = 1e-3;
  config.out_dir = run_dir + "/stage1";
  config.class_names = data.classes;
  graft::Trainer stage1(
      model, [&](const torch::Tensor& x) { return model->forward(x); }, config);
  stage1.fit(train, &val);

  // 5. Stage 2: unfreeze the last 10 layers of the backbone and continue at a low rate.
  graft::apply_freeze(*model, "last:10");
  config.epochs = epochs;
  config.optimizer.lr = 1e-5;
  config.out_dir = run_dir + "/stage2";
  graft::Trainer stage2(
      model, [&](const torch::Tensor& x) { return model->forward(x); }, config);
  graft::TrainHistory history = stage2.fit(train, &val);

  const auto& last = history.epochs.back();
  std::cout << "validation accuracy after fine-tuning: " << last.val_accuracy.value_or(0.0) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "football_players: " << e.what() << "\n";
  return 1;
}
