// The classic "NBA plays" video recipe (dunks, 3-pointers, blocks) through graft's C++ API:
//   cnn = TimeDistributed(pretrained CNN); lstm = LSTM(256)(cnn)          # a clip model trained before
//   cnn.trainable = False; lstm.trainable = False                         # keep what it learned
//   out = Dense(3, activation="softmax")(lstm)                             # a new head for 3 plays
//   model.fit(clips, epochs=...)
//
// Usage: nba_plays PRETRAINED_RUN DATA_DIR [--epochs N]  (--help)
//   PRETRAINED_RUN  a video run directory (graft train --task video-classify ...), e.g. trained on a
//                   large action data set;
//   DATA_DIR        DATA_DIR/<play>/<clip>.mp4 (or frame folders), or DATA_DIR/train + DATA_DIR/val.
// Or: nba_plays --demo WORK_DIR: writes synthetic clips (a square growing, shrinking or still), trains the
// "pretrained" 2-class clip model on the first two, then runs the recipe on all three.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <random>

#include "example_args.h"
#include "graft/transfer.h"
#include "graft/video.h"
#include "graft/video_model.h"
#include "graft/video_task.h"

namespace fs = std::filesystem;

namespace {

void write_demo_clips(const fs::path& root, const std::vector<std::string>& kinds, int per_class,
                      unsigned seed) {
  std::mt19937 rng(seed);
  for (const auto& kind : kinds) {
    fs::create_directories(root / kind);
    for (int i = 0; i < per_class; ++i) {
      const int cx = 12 + static_cast<int>(rng() % 9), cy = 12 + static_cast<int>(rng() % 9);
      const int still = 4 + 2 * static_cast<int>(rng() % 8);
      std::vector<graft::Image> frames;
      for (int t = 0; t < 8; ++t) {
        const int side = kind == "grow" ? 4 + 2 * t : kind == "shrink" ? 18 - 2 * t : still;
        graft::Image image;
        image.width = image.height = 32;
        image.rgb.assign(32 * 32 * 3, 20);
        for (int y = std::max(0, cy - side / 2); y < std::min(32, cy + side / 2); ++y)
          for (int x = std::max(0, cx - side / 2); x < std::min(32, cx + side / 2); ++x)
            for (int c = 0; c < 3; ++c) image.rgb[(size_t(y) * 32 + x) * 3 + c] = 230;
        frames.push_back(std::move(image));
      }
      graft::write_video((root / kind / (std::to_string(i) + ".mkv")).string(), frames, 8);
    }
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const bool demo =
      std::any_of(argv + 1, argv + argc, [](const char* a) { return std::string(a) == "--demo"; });
  std::vector<example::Argument> positional;
  if (!demo)
    positional = {
        {"PRETRAINED_RUN", "", "a video run directory (CNN + LSTM) trained before"},
        {"DATA_DIR", "", "DATA_DIR/<play>/<clip>.mp4 or frame folders, or DATA_DIR/train + DATA_DIR/val"}};
  const example::Args args(
      argc, argv, "nba_plays PRETRAINED_RUN DATA_DIR [options] | nba_plays --demo WORK_DIR", positional,
      {{"--epochs", "20", "epochs of the new head"},
       {"--demo", "", "WORK_DIR: synthetic clips, a clip model trained on them, then the recipe"}});
  std::string pretrained = demo ? "" : args["PRETRAINED_RUN"], data = demo ? "" : args["DATA_DIR"];
  const int64_t epochs = args.integer("--epochs");
  if (demo) {
    const fs::path work = args["--demo"];
    write_demo_clips(work / "pretrain", {"grow", "shrink"}, 24, 1);
    write_demo_clips(work / "plays", {"grow", "shrink", "still"}, 12, 2);
    graft::VideoTrainOptions options;  // the "pretrained" clip model: a frozen CNN per frame + LSTM(64)
    options.model = "resnet18";
    options.temporal = "lstm:64";
    options.image_size = 32;
    options.data = (work / "pretrain").string();
    options.out = (work / "clip_model").string();
    options.train.epochs = 20;
    options.train.optimizer.name = "adam";
    options.train.optimizer.lr = 3e-3;
    options.train.progress = false;
    graft::train_video_classifier(options, std::cout);
    pretrained = options.out;
    data = (work / "plays").string();
  }

  // 1. The pretrained clip model: the CNN applied to every frame, the LSTM over the frame features.
  graft::VideoRun run = graft::load_video_run(pretrained);
  auto model = std::dynamic_pointer_cast<graft::TimeDistributedClassifierImpl>(run.module);
  if (!model) throw graft::Error(pretrained + " is a 3D CNN run; this recipe freezes a CNN + LSTM");

  // 2. A new head for the plays, the CNN and the LSTM frozen.
  graft::ClipList clips = graft::scan_clip_folder(data);
  model->reset_classifier(static_cast<int64_t>(clips.classes.size()));
  const graft::FreezeReport frozen = graft::apply_freeze(*model, "backbone.*,temporal.*", "fc");
  std::cout << frozen.frozen_parameters << " tensors frozen, " << frozen.trainable_parameters
            << " trainable (the new head)\n";

  // 3. The clips, sampled and normalised as the pretrained model saw them; a quarter held out.
  std::mt19937 rng(0);
  std::shuffle(clips.clips.begin(), clips.clips.end(), rng);
  graft::ClipList train = clips, val = clips;
  const size_t held_out = clips.clips.size() / 4;
  val.clips.assign(clips.clips.begin(), clips.clips.begin() + static_cast<std::ptrdiff_t>(held_out));
  train.clips.assign(clips.clips.begin() + static_cast<std::ptrdiff_t>(held_out), clips.clips.end());
  graft::LoaderOptions loader_options;
  loader_options.batch_size = 8;
  graft::DataLoader train_loader(std::make_shared<graft::ClipFolder>(train, run.clip), loader_options);
  loader_options.shuffle = false;
  graft::DataLoader val_loader(std::make_shared<graft::ClipFolder>(val, run.clip), loader_options);
  graft::LoaderBatchSource train_source(train_loader), val_source(val_loader);

  // 4. Train the head.
  graft::TrainConfig config;
  config.epochs = epochs;
  config.optimizer.name = "adam";
  config.optimizer.lr = 1e-2;
  config.class_names = clips.classes;
  config.sample_unit = "clip";
  config.progress = false;
  graft::Trainer trainer(
      model, [model](const torch::Tensor& x) { return model->forward(x); }, config);
  trainer.fit(train_source, &val_source);
  const graft::Metrics metrics = trainer.evaluate(val_source, "val");
  std::cout << graft::metrics_report(metrics, clips.classes) << "held-out accuracy: " << metrics.accuracy
            << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "nba_plays: " << e.what() << "\n";
  return 1;
}
