// Video end to end on real video files that the test writes itself through FFmpeg's libraries: a square
// that grows or shrinks over the clip. Every single frame of one class could belong to the other (the same
// sizes occur in both), so a model that averages frame features stays near chance, while ConvNet + LSTM
// reads the order and must clear a high floor. Then the tutorial's recipe: the trained clip model as the
// starting point (--init-from) of a new 3-class task with the CNN and LSTM frozen.
#include <gtest/gtest.h>
#include <png.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>

#include "e2e/run_graft.h"
#include "graft/errors.h"
#include "graft/video.h"
#include "graft/weights.h"

namespace graft {
namespace {

namespace fs = std::filesystem;
using testing::fresh_dir;
using testing::graft;

// A 32x32 clip: background, and a square of side 4 + 2t (grow), its reverse (shrink), or a constant
// size (still), at a random place and colour.
std::vector<Image> square_clip(const std::string& kind, std::mt19937& rng) {
  std::uniform_int_distribution<int> colour(150, 255), background(0, 60), centre(12, 20);
  const int r = colour(rng), g = colour(rng), b = colour(rng), bg = background(rng);
  const int cx = centre(rng), cy = centre(rng);
  const int still_side = 4 + 2 * std::uniform_int_distribution<int>(0, 7)(rng);
  std::vector<Image> frames;
  for (int t = 0; t < 8; ++t) {
    const int side = kind == "grow" ? 4 + 2 * t : kind == "shrink" ? 18 - 2 * t : still_side;
    Image image;
    image.width = image.height = 32;
    image.rgb.assign(32 * 32 * 3, static_cast<uint8_t>(bg));
    for (int y = cy - side / 2; y < cy + side / 2; ++y)
      for (int x = cx - side / 2; x < cx + side / 2; ++x) {
        if (x < 0 || y < 0 || x >= 32 || y >= 32) continue;
        uint8_t* p = &image.rgb[(size_t(y) * 32 + x) * 3];
        p[0] = static_cast<uint8_t>(r), p[1] = static_cast<uint8_t>(g), p[2] = static_cast<uint8_t>(b);
      }
    frames.push_back(std::move(image));
  }
  return frames;
}

void write_set(const fs::path& root, const std::vector<std::string>& kinds, int train, int val,
               unsigned seed) {
  std::mt19937 rng(seed);
  for (const auto& [split, count] : {std::pair<std::string, int>{"train", train}, {"val", val}}) {
    for (const auto& kind : kinds) {
      fs::create_directories(root / split / kind);
      for (int i = 0; i < count; ++i)
        write_video((root / split / kind / (std::to_string(i) + ".mkv")).string(), square_clip(kind, rng), 8);
    }
  }
}

double number_after(const std::string& text, const std::string& label) {
  std::smatch match;
  if (!std::regex_search(text, match, std::regex(label + R"(\s*([0-9.eE+-]+))"))) return -1;
  return std::stod(match[1]);
}

TEST(VideoE2E, FramesFolderAndVideoFilesGiveTheSameClip) {
  const auto dir = fresh_dir("video_io");
  std::mt19937 rng(1);
  const std::vector<Image> frames = square_clip("grow", rng);
  write_video((dir / "clip.mkv").string(), frames, 8);
  write_video((dir / "clip.mp4").string(), frames, 8);
  // The same clip as a folder of PNG frames (libpng's simplified writer).
  fs::create_directories(dir / "frames");
  for (size_t t = 0; t < frames.size(); ++t) {
    png_image png{};
    png.version = PNG_IMAGE_VERSION;
    png.width = png.height = 32;
    png.format = PNG_FORMAT_RGB;
    const std::string name = (dir / "frames" / ("frame_" + std::to_string(t) + ".png")).string();
    ASSERT_TRUE(png_image_write_to_file(&png, name.c_str(), 0, frames[t].rgb.data(), 0, nullptr)) << name;
  }
  const std::vector<Image> folder = load_clip((dir / "frames").string());
  ASSERT_EQ(folder.size(), frames.size());
  const std::vector<Image> mkv = load_clip((dir / "clip.mkv").string());
  ASSERT_EQ(mkv.size(), frames.size());
  for (size_t t = 0; t < frames.size(); ++t) {
    EXPECT_EQ(mkv[t].rgb, frames[t].rgb) << "FFV1 is lossless, frame " << t;
    EXPECT_EQ(folder[t].rgb, frames[t].rgb) << "PNG is lossless, frame " << t;
  }
  const std::vector<Image> mp4 = load_clip((dir / "clip.mp4").string());
  ASSERT_EQ(mp4.size(), frames.size());
  double total = 0;
  for (size_t t = 0; t < frames.size(); ++t)
    for (size_t i = 0; i < frames[t].rgb.size(); ++i)
      total += std::abs(int(mp4[t].rgb[i]) - int(frames[t].rgb[i]));
  const double mean_error = total / double(frames.size() * frames[0].rgb.size());
  std::cout << "[video io] mp4 (MPEG-4, 4:2:0) mean |error| " << mean_error << " levels\n";
  EXPECT_LT(mean_error, 12.0);

  ClipConfig config;
  config.frames = 8;
  config.transform.size = 32;
  config.transform.crop_pct = 1.0;
  std::mt19937_64 a(0), b(0);
  EXPECT_TRUE(torch::equal(transform_clip(mkv, config, a), transform_clip(folder, config, b)));
  // Training transforms crop and flip the whole clip alike: frames equal before stay equal after.
  config.transform.train = true;
  std::vector<Image> same(8, frames[3]);
  const torch::Tensor augmented = transform_clip(same, config, a);
  for (int64_t t = 1; t < 8; ++t) EXPECT_TRUE(torch::equal(augmented[t], augmented[0])) << t;
  config.transform.train = false;
  // Too short for 16 frames: a clear error; an unreadable file: a FormatError naming it.
  config.frames = 16;
  EXPECT_THROW(transform_clip(mkv, config, a), Error);
  std::ofstream(dir / "broken.mp4") << "not a video";
  try {
    decode_video((dir / "broken.mp4").string());
    ADD_FAILURE() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.mp4"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(VideoE2E, LstmReadsMotionOrderFrameAveragingCannot) {
  const auto dir = fresh_dir("video_train");
  write_set(dir / "clips", {"grow", "shrink"}, 40, 16, 7);
  // One unreadable clip: skipped with a warning and counted, not a crash.
  std::ofstream(dir / "clips" / "train" / "grow" / "zz_broken.mp4") << "garbage";
  const std::string common =
      "train --task video-classify --model resnet18 --frames 8 --image-size 32 --data " +
      (dir / "clips").string() + " --epochs 25 --optimizer adam --lr 0.003 --batch-size 8";
  auto lstm = graft(common + " --temporal lstm:64 --out " + (dir / "lstm").string());
  ASSERT_EQ(lstm.status, 0) << lstm.output;
  auto average = graft(common + " --temporal avg --out " + (dir / "avg").string());
  ASSERT_EQ(average.status, 0) << average.output;
  const double lstm_acc = number_after(lstm.output, "final validation accuracy:");
  const double avg_acc = number_after(average.output, "final validation accuracy:");
  std::cout << "[video e2e] grow vs shrink: CNN+LSTM " << lstm_acc << ", frame averaging " << avg_acc << "\n";
  EXPECT_GE(lstm_acc, 0.85) << lstm.output;
  EXPECT_LE(avg_acc, 0.7) << average.output;
  EXPECT_NE(lstm.output.find("feature cache"), std::string::npos) << lstm.output;
  EXPECT_NE(lstm.output.find("skipped 1 unreadable"), std::string::npos) << lstm.output;

  auto eval = graft("eval " + (dir / "lstm").string() + " --data " + (dir / "clips").string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_NEAR(number_after(eval.output, "accuracy:"), lstm_acc, 1e-6) << eval.output;
  // features: what the classifier reads (the LSTM's last output) for the clips eval reads; the run's fc on
  // them gives eval's accuracy.
  const fs::path features_file = dir / "lstm_features.safetensors";
  auto features = graft("features " + (dir / "lstm").string() + " --data " + (dir / "clips").string() +
                        " --out " + features_file.string());
  ASSERT_EQ(features.status, 0) << features.output;
  {
    const SafeTensorsReader reader(features_file.string()),
        model((dir / "lstm" / "model.safetensors").string());
    const torch::Tensor x = reader.load("features"), labels = reader.load("labels");
    ASSERT_EQ(x.dim(), 2);
    EXPECT_EQ(x.size(1), 64);  // lstm:64
    const torch::Tensor logits = torch::addmm(model.load("fc.bias"), x, model.load("fc.weight").t());
    const double accuracy = logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(accuracy, number_after(eval.output, "accuracy:"), 1e-6) << features.output;
  }
  auto limited = graft("features " + (dir / "lstm").string() + " --limit 3 --data " +
                       (dir / "clips").string() + " --out " + (dir / "limited.safetensors").string());
  EXPECT_EQ(limited.status, 1) << limited.output;
  EXPECT_NE(limited.output.find("--limit applies to image runs"), std::string::npos) << limited.output;

  auto predict = graft("predict " + (dir / "lstm").string() + " --json " +
                       (dir / "clips" / "val" / "shrink" / "0.mkv").string());
  ASSERT_EQ(predict.status, 0) << predict.output;
  const auto top = nlohmann::json::parse(predict.output.substr(predict.output.find('[')))[0]["top"][0];
  EXPECT_EQ(top["label"], "shrink") << predict.output;

  // The tutorial's recipe: that clip model, CNN and LSTM frozen, a new 3-class head.
  write_set(dir / "clips3", {"grow", "shrink", "still"}, 12, 6, 11);
  auto recipe =
      graft("train --task video-classify --init-from " + (dir / "lstm").string() +
            " --freeze backbone,temporal --frames 8 --image-size 32 --data " + (dir / "clips3").string() +
            " --epochs 30 --optimizer adam --lr 0.01 --batch-size 8 --out " + (dir / "recipe").string());
  ASSERT_EQ(recipe.status, 0) << recipe.output;
  EXPECT_NE(recipe.output.find("a new classifier for 3 classes"), std::string::npos) << recipe.output;
  const double recipe_acc = number_after(recipe.output, "final validation accuracy:");
  std::cout << "[video e2e] 3 classes from the 2-class clip model, CNN + LSTM frozen: " << recipe_acc << "\n";
  EXPECT_GE(recipe_acc, 0.6) << recipe.output;
  // Only the new classifier changed: the LSTM's weights equal the starting run's.
  const SafeTensorsReader before((dir / "lstm" / "model.safetensors").string()),
      after((dir / "recipe" / "model.safetensors").string());
  EXPECT_TRUE(torch::equal(before.load("temporal.weight_hh_l0"), after.load("temporal.weight_hh_l0")));
  EXPECT_FALSE(after.load("fc.weight").size(0) == before.load("fc.weight").size(0));

  // A 3D CNN (torchvision's mc3_18) takes whole clips: train its top, evaluate and predict through the CLI.
  auto cnn3d = graft(
      "train --task video-classify --model mc3_18 --freeze until:layer4 --frames 8 --image-size 32 "
      "--data " +
      (dir / "clips").string() +
      " --epochs 1 --optimizer adam --lr 0.001 --batch-size 8 "
      "--out " +
      (dir / "mc3").string());
  ASSERT_EQ(cnn3d.status, 0) << cnn3d.output;
  EXPECT_NE(cnn3d.output.find("final validation accuracy:"), std::string::npos) << cnn3d.output;
  EXPECT_NE(cnn3d.output.find("mc3_18"), std::string::npos) << cnn3d.output;
  auto predict3d = graft("predict " + (dir / "mc3").string() + " --json " +
                         (dir / "clips" / "val" / "grow" / "1.mkv").string());
  ASSERT_EQ(predict3d.status, 0) << predict3d.output;
  const auto top3d = nlohmann::json::parse(predict3d.output.substr(predict3d.output.find('[')))[0]["top"];
  ASSERT_EQ(top3d.size(), 2u) << predict3d.output;
  EXPECT_NEAR(top3d[0]["probability"].get<double>() + top3d[1]["probability"].get<double>(), 1.0, 1e-5);
  EXPECT_NE(top3d[0]["label"], top3d[1]["label"]);

  auto bad = graft("train --task video-classify --model resnet18 --temporal lstm:x --data " +
                   (dir / "clips").string() + " --out " + (dir / "bad").string());
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("cannot read 'x'"), std::string::npos) << bad.output;
  fs::remove_all(dir);
}

// The clip count in val_report.txt's accuracy row (metrics_report: "accuracy ... ACC  N").
int64_t report_samples(const fs::path& report) {
  std::ifstream in(report);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::smatch match;
  if (!std::regex_search(text, match, std::regex(R"(\naccuracy\s+[0-9.]+\s+([0-9]+))"))) return -1;
  return std::stoll(match[1]);
}

// The seed's video recipe (#13): a per-frame CNN with pretrained image weights, from a tag (the nsfwjs
// MobileNetV2, whose own 5-class head is dropped), from a weights file of another format (the ml5 Tiny
// Darknet's TF.js files), and from an image run; the align-corners preprocessing of the nsfwjs tag is
// stored and used again by eval and predict; the final report counts the validation clips only.
TEST(VideoE2E, PretrainedImageBackbonesStartVideoModels) {
  const auto dir = fresh_dir("video_pretrained");
  write_set(dir / "clips", {"grow", "shrink"}, 6, 3, 5);
  const std::string common =
      " --frames 8 --image-size 32 --epochs 2 --optimizer adam --lr 0.003 --batch-size 4 ";
  auto tag = graft(
      "train --task video-classify --model mobilenet_v2.nsfwjs --temporal lstm:16 --freeze backbone "
      "--data " +
      (dir / "clips").string() + common + "--out " + (dir / "tag").string());
  ASSERT_EQ(tag.status, 0) << tag.output;
  EXPECT_NE(tag.output.find("backbone tensors from"), std::string::npos) << tag.output;
  EXPECT_NE(tag.output.find("nsfwjs-4.4.0/mobilenet_v2.safetensors"), std::string::npos) << tag.output;
  EXPECT_NE(tag.output.find("(bilinear-align-corners)"), std::string::npos) << tag.output;
  // The frozen backbone holds the pretrained weights themselves.
  const char* home = std::getenv("HOME");
  const fs::path cache = std::getenv("GRAFT_CACHE") ? fs::path(std::getenv("GRAFT_CACHE"))
                         : std::getenv("XDG_CACHE_HOME")
                             ? fs::path(std::getenv("XDG_CACHE_HOME")) / "graft"
                             : fs::path(home ? home : "/root") / ".cache" / "graft";
  const SafeTensorsReader pretrained((cache / "nsfwjs-4.4.0" / "mobilenet_v2.safetensors").string()),
      saved((dir / "tag" / "model.safetensors").string());
  EXPECT_TRUE(
      torch::equal(pretrained.load("features.0.0.weight"), saved.load("backbone.features.0.0.weight")));
  const auto spec = nlohmann::json::parse(std::ifstream(dir / "tag" / "graft.json"));
  EXPECT_EQ(spec["preprocessing"]["interpolation"], "bilinear-align-corners") << spec.dump();
  EXPECT_EQ(report_samples(dir / "tag" / "val_report.txt"), 6);
  // eval and predict read the run's preprocessing back: the same accuracy as the run's final evaluation.
  auto eval = graft("eval " + (dir / "tag").string() + " --data " + (dir / "clips").string());
  ASSERT_EQ(eval.status, 0) << eval.output;
  EXPECT_NEAR(number_after(eval.output, "accuracy:"), number_after(tag.output, "final validation accuracy:"),
              1e-6)
      << eval.output << tag.output;
  auto predict =
      graft("predict " + (dir / "tag").string() + " " + (dir / "clips" / "val" / "grow" / "0.mkv").string());
  EXPECT_EQ(predict.status, 0) << predict.output;

  // A weights file in TF.js layers format (ml5's Tiny Darknet), mapped by the architecture's name table.
  auto file = graft(
      "train --task video-classify --model darknet_tiny.ml5 --temporal avg --freeze backbone --weights " +
      std::string(GRAFT_SHARED_DIR) + "/weights/tiny_darknet_tfjs --data " + (dir / "clips").string() +
      common + "--out " + (dir / "darknet").string());
  ASSERT_EQ(file.status, 0) << file.output;
  EXPECT_NE(file.output.find("backbone tensors from"), std::string::npos) << file.output;

  // An image run's model: its backbone (not its classifier) and its preprocessing.
  fs::create_directories(dir / "images");
  for (const char* kind : {"grow", "shrink"}) {
    std::mt19937 rng(kind[0]);
    for (int i = 0; i < 4; ++i) {
      const std::vector<Image> frames = square_clip(kind, rng);
      fs::create_directories(dir / "images" / kind);
      const fs::path png = dir / "images" / kind / (std::to_string(i) + ".png");
      png_image image{};
      image.version = PNG_IMAGE_VERSION;
      image.width = image.height = 32;
      image.format = PNG_FORMAT_RGB;
      ASSERT_TRUE(png_image_write_to_file(&image, png.c_str(), 0, frames[static_cast<size_t>(i)].rgb.data(),
                                          0, nullptr));
    }
  }
  auto image_run = graft("train --model resnet18 --image-size 32 --epochs 1 --batch-size 4 --data " +
                         (dir / "images").string() + " --out " + (dir / "image_run").string());
  ASSERT_EQ(image_run.status, 0) << image_run.output;
  auto from_image =
      graft("train --task video-classify --init-from " + (dir / "image_run").string() +
            " --temporal lstm:16 --freeze backbone --frames 8 --epochs 1 --batch-size 4 --data " +
            (dir / "clips").string() + " --out " + (dir / "from_image").string());
  ASSERT_EQ(from_image.status, 0) << from_image.output;
  EXPECT_NE(from_image.output.find("init from image run"), std::string::npos) << from_image.output;
  EXPECT_NE(from_image.output.find("frames of 32 px"), std::string::npos)
      << from_image.output;  // the run's size
  const SafeTensorsReader image_weights((dir / "image_run" / "model.safetensors").string()),
      video_weights((dir / "from_image" / "model.safetensors").string());
  EXPECT_TRUE(torch::equal(image_weights.load("layer4.1.conv2.weight"),
                           video_weights.load("backbone.layer4.1.conv2.weight")));

  // --lora with the image run's weights as the base: branches beside a layer4 convolution of the per-frame
  // ResNet, the LSTM and the classifier trained whole; eval rebuilds the model from the base file and the
  // adapter and gives the run's own final accuracy.
  const std::string base_file = (dir / "image_run" / "model.safetensors").string();
  auto lora = graft("train --task video-classify --model resnet18 --weights " + base_file +
                    " --temporal lstm:16 --lora r=2,alpha=4,targets=layer4.1.conv2 --data " +
                    (dir / "clips").string() + common + "--out " + (dir / "lora").string());
  ASSERT_EQ(lora.status, 0) << lora.output;
  EXPECT_NE(lora.output.find("on 1 layers (backbone.layer4.1.conv2), trained whole: temporal, fc"),
            std::string::npos)
      << lora.output;
  EXPECT_FALSE(fs::exists(dir / "lora" / "model.safetensors"));
  const SafeTensorsReader adapter((dir / "lora" / "adapter_model.safetensors").string());
  std::set<std::string> names;
  for (const auto& t : adapter.tensors()) names.insert(t.name);
  EXPECT_TRUE(names.count("base_model.model.backbone.layer4.1.conv2.lora_A.weight"));
  EXPECT_TRUE(names.count("base_model.model.temporal.weight_ih_l0"));
  EXPECT_TRUE(names.count("base_model.model.fc.weight"));
  EXPECT_FALSE(names.count("base_model.model.backbone.layer4.1.conv2.weight"));  // the base stays out
  auto lora_eval = graft("eval " + (dir / "lora").string() + " --data " + (dir / "clips").string());
  ASSERT_EQ(lora_eval.status, 0) << lora_eval.output;
  EXPECT_NEAR(number_after(lora_eval.output, "accuracy:"),
              number_after(lora.output, "final validation accuracy:"), 1e-6)
      << lora_eval.output << lora.output;
  auto merged = graft("export " + (dir / "lora").string() + " --merge --out " + (dir / "merged").string());
  ASSERT_EQ(merged.status, 0) << merged.output;
  auto merged_eval = graft("eval " + (dir / "merged").string() + " --data " + (dir / "clips").string());
  ASSERT_EQ(merged_eval.status, 0) << merged_eval.output;
  EXPECT_NEAR(number_after(merged_eval.output, "accuracy:"), number_after(lora_eval.output, "accuracy:"),
              1e-6)
      << merged_eval.output << lora_eval.output;
  auto lora_freeze = graft("train --task video-classify --model resnet18 --weights " + base_file +
                           " --freeze none --lora r=2,targets=conv1 --data " + (dir / "clips").string() +
                           common + "--out " + (dir / "lora2").string());
  EXPECT_EQ(lora_freeze.status, 1) << lora_freeze.output;
  EXPECT_NE(lora_freeze.output.find("--freeze none does not apply to --lora"), std::string::npos)
      << lora_freeze.output;

  // No val/ folder: a seeded split, and the final report is on its validation clips only (2 of 6 per class).
  fs::create_directories(dir / "flat");
  for (const char* kind : {"grow", "shrink"}) fs::copy(dir / "clips" / "train" / kind, dir / "flat" / kind);
  auto flat = graft("train --task video-classify --model resnet18 --temporal avg --val-split 0.34 --data " +
                    (dir / "flat").string() + common + "--out " + (dir / "flat_run").string());
  ASSERT_EQ(flat.status, 0) << flat.output;
  EXPECT_EQ(report_samples(dir / "flat_run" / "val_report.txt"), 4) << flat.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
