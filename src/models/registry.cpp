// The registry's table: every architecture graft builds, with its pretrained tags as data.
// Sources name where the reference weights live; torchvision's own .pth files are pickles, which graft
// never loads, so tags point at safetensors copies with identical names where one exists (timm's).
#include "graft/registry.h"

#include <cstdlib>
#include <filesystem>

#include "graft/errors.h"
#include "graft/head.h"
#include "models/darknet.h"
#include "models/efficientnet.h"
#include "models/inception_v3.h"
#include "models/mobilenet_v1.h"
#include "models/mobilenet_v2.h"
#include "models/resnet.h"
#include "models/vgg.h"
#include "models/video_resnet.h"

namespace graft {
namespace {

// torchvision's ImageNet-1k recipe: resize shorter side to 256, centre crop 224, bilinear.
PretrainedCfg torchvision_in1k(const std::string& tag, const std::string& source, const std::string& what) {
  PretrainedCfg cfg;
  cfg.tag = tag;
  cfg.source = source;
  cfg.license = "BSD-3-Clause (torchvision)";
  cfg.description = what;
  return cfg;
}

// npm nsfwjs@4.4.0 (MIT, Infinite Red): TF.js layers models that scripts/fetch-weights unwraps and converts.
// Their preprocessing (nsfwjs infer): pixels / 255, bilinear resize with align_corners of the whole image.
PretrainedCfg nsfwjs_cfg(const std::string& model, int64_t size) {
  PretrainedCfg cfg;
  cfg.tag = "nsfwjs";
  cfg.source = "npm:nsfwjs@4.4.0 package/dist/models/" + model + " (TF.js layers model bundled as .min.js)";
  cfg.file_format = "tfjs-layers";
  cfg.input_size = {3, size, size};
  cfg.mean = {0.0, 0.0, 0.0};
  cfg.std = {1.0, 1.0, 1.0};
  cfg.crop_pct = 1.0;
  cfg.interpolation = "bilinear-align-corners";
  cfg.num_classes = 5;
  cfg.labels = "nsfwjs";  // Drawing, Hentai, Neutral, Porn, Sexy
  cfg.license = "MIT (nsfwjs, Infinite Red)";
  cfg.cache_file = "nsfwjs-4.4.0/" + model + ".safetensors";
  cfg.fetch_command = "scripts/fetch-weights nsfwjs";
  return cfg;
}

// torchvision's Kinetics-400 video weights (R3D_18_Weights.KINETICS400_V1 etc.): 16-frame clips, each
// frame resized to 128 x 171 (bilinear) and centre-cropped to 112 x 112; their own mean and std.
// torchvision resizes to a fixed 128 x 171 whatever the aspect ratio; graft's "shorter side to
// size / crop_pct" gives the same 128 x 171 on 4:3 video, hence crop_pct 112 / 128.
PretrainedCfg torchvision_kinetics400(const std::string& weights, const std::string& what) {
  PretrainedCfg cfg;
  cfg.tag = "tv_k400";
  cfg.source = "torchvision:" + weights + ".KINETICS400_V1 (convert to safetensors)";
  cfg.input_size = {3, 16, 112, 112};  // (C, T, H, W)
  cfg.mean = {0.43216, 0.394666, 0.37645};
  cfg.std = {0.22803, 0.22145, 0.216989};
  cfg.crop_pct = 112.0 / 128.0;
  cfg.num_classes = 400;
  cfg.labels = "kinetics-400";
  cfg.license = "BSD-3-Clause (torchvision)";
  cfg.description = what;
  return cfg;
}

std::vector<ModelEntry> build_table() {
  const std::string tv = "torchvision ImageNet-1k weights";
  std::vector<ModelEntry> table;
  auto add_resnet = [&](const std::string& arch, std::function<Backbone(int64_t)> build,
                        const std::string& what) {
    table.push_back({arch,
                     "resnet",
                     what,
                     std::move(build),
                     {torchvision_in1k("tv_in1k", "hf-hub:timm/" + arch + ".tv_in1k", tv + " (V1)")}});
  };
  add_resnet("resnet18", resnet18, "ResNet-18 (He et al. 2015), torchvision layout");
  add_resnet("resnet34", resnet34, "ResNet-34, torchvision layout");
  add_resnet("resnet50", resnet50, "ResNet-50 v1.5 (stride on the 3x3 conv), torchvision layout");
  add_resnet("resnet101", resnet101, "ResNet-101 v1.5, torchvision layout");
  add_resnet("resnet152", resnet152, "ResNet-152 v1.5, torchvision layout");
  {
    // torchvision's IMAGENET1K_V2 recipe evaluates at 232 -> 224.
    PretrainedCfg v2 = torchvision_in1k("tv2_in1k", "hf-hub:timm/resnet50.tv2_in1k", tv + " (V2 recipe)");
    v2.crop_pct = 224.0 / 232.0;
    table[2].tags.push_back(v2);
  }
  {
    // Keras applications' ResNet50 ("v1"; keras/applications/resnet.py): its own build, torchvision names.
    PretrainedCfg keras;
    keras.tag = "keras";
    keras.source =
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5";
    keras.file_format = "keras-h5";
    // 'caffe' preprocessing: BGR (the model flips the channels itself), ImageNet means subtracted from
    // 0..255 pixels, no scaling. On graft's [0, 1] pixels: mean / 255 and std 1 / 255.
    keras.mean = {123.68 / 255, 116.779 / 255, 103.939 / 255};
    keras.std = {1.0 / 255, 1.0 / 255, 1.0 / 255};
    keras.license = "MIT (Keras Applications; weights from Kaiming He's release)";
    keras.description = "Keras Applications ImageNet ResNet50 (v1: stride on the 1x1, biased convolutions)";
    keras.build = resnet50_keras;
    table[2].tags.push_back(keras);
  }
  auto add_vgg = [&](const std::string& arch, std::function<Backbone(int64_t)> build,
                     const std::string& what) {
    table.push_back({arch,
                     "vgg",
                     what,
                     std::move(build),
                     {torchvision_in1k(
                         "tv_in1k", "torchvision:" + arch + " IMAGENET1K_V1 (convert to safetensors)", tv)}});
  };
  add_vgg("vgg16", vgg16, "VGG-16 (Simonyan & Zisserman 2014), configuration D");
  add_vgg("vgg16_bn", vgg16_bn, "VGG-16 with batch normalisation");
  add_vgg("vgg19", vgg19, "VGG-19, configuration E");
  add_vgg("vgg19_bn", vgg19_bn, "VGG-19 with batch normalisation");
  {
    // nsfwjs' MobileNetV2 is Keras' (TF padding, BN eps 1e-3) with its own 5-class head; torchvision
    // names, loaded through the Keras name map.
    PretrainedCfg nsfwjs = nsfwjs_cfg("mobilenet_v2", 224);
    nsfwjs.build = mobilenet_v2_keras;
    nsfwjs.head = "avg,dense:256:relu,dropout:0.5,dense:128:relu,dropout:0.25,dense:5";
    nsfwjs.description = "nsfwjs 4.4.0 MobileNetV2 (Keras 2.2.4, uint8-quantised TF.js), 5 classes";
    // Keras applications' own ImageNet weights (.h5) load into the same Keras build.
    PretrainedCfg keras;
    keras.tag = "keras";
    keras.source =
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5";
    keras.file_format = "keras-h5";
    keras.mean = {0.5, 0.5, 0.5};  // Keras mobilenet_v2.preprocess_input: x / 127.5 - 1
    keras.std = {0.5, 0.5, 0.5};
    keras.license = "Apache-2.0 (Keras Applications)";
    keras.description =
        "Keras Applications ImageNet weights, alpha 1.0 (Keras build: TF padding, BN eps 1e-3)";
    keras.build = mobilenet_v2_keras;
    table.push_back(
        {"mobilenet_v2",
         "mobilenet",
         "MobileNetV2 (Sandler et al. 2018), torchvision layout",
         mobilenet_v2,
         {torchvision_in1k("tv_in1k", "torchvision:mobilenet_v2 IMAGENET1K_V1 (convert to safetensors)", tv),
          nsfwjs, keras}});
  }
  {
    // torchvision's names; timm's efficientnet_b0 is another module tree (conv_stem, blocks.N.M, conv_head).
    // torchvision evaluates these weights at resize 256 (bicubic), centre crop 224.
    PretrainedCfg b0 =
        torchvision_in1k("tv_in1k", "torchvision:efficientnet_b0 IMAGENET1K_V1 (convert to safetensors)",
                         tv + " (ported from timm)");
    b0.interpolation = "bicubic";
    b0.crop_pct = 224.0 / 256.0;
    table.push_back({"efficientnet_b0",
                     "efficientnet",
                     "EfficientNet-B0 (Tan & Le 2019), torchvision layout",
                     efficientnet_b0,
                     {b0}});
  }
  {
    // torchvision's IMAGENET1K_V1 (ported from TensorFlow): resize 342, centre crop 299, bilinear. Its state
    // dict carries AuxLogits.* and the weights expect transform_input, so the tag builds both
    // (inception_v3_torchvision_pretrained) and the file loads strictly. It is the default tag, so
    // create_model("inception_v3") builds them too; the builder inception_v3() has neither, as
    // torchvision's inception_v3(weights=None, aux_logits=False).
    PretrainedCfg tv_in1k = torchvision_in1k(
        "tv_in1k", "torchvision:inception_v3 IMAGENET1K_V1 (convert to safetensors; has AuxLogits.*)", tv);
    tv_in1k.input_size = {3, 299, 299};
    tv_in1k.crop_pct = 299.0 / 342.0;
    tv_in1k.build = inception_v3_torchvision_pretrained;
    // nsfwjs' InceptionV3 is Keras' (BatchNorm without gamma, average pools that exclude padding) with its
    // own 5-class head; torchvision names, loaded through the Keras name map.
    PretrainedCfg nsfwjs = nsfwjs_cfg("inception_v3", 299);
    nsfwjs.build = inception_v3_keras;
    nsfwjs.head = "avg,dense:256:relu,dropout:0.5,dense:128:relu,dropout:0.25,dense:5";
    nsfwjs.description = "nsfwjs 4.4.0 InceptionV3 (Keras 2.2.4, uint8-quantised TF.js), 5 classes";
    const std::string what = "Inception-v3 (Szegedy et al. 2015), torchvision layout";
    table.push_back({"inception_v3", "inception", what, inception_v3, {tv_in1k, nsfwjs}});
  }
  // Keras / TF.js imports (graft/keras.h): weights in foreign formats, loaded through name maps.
  {
    PretrainedCfg ml5;
    ml5.tag = "ml5";
    ml5.source = "ml5: github.com/ml5js/ml5-data-and-models models/darknetclassifier/darknettiny/model.json";
    ml5.file_format = "tfjs-layers";
    ml5.mean = {0.0, 0.0, 0.0};  // ml5 feeds pixel / 255, no normalisation
    ml5.std = {1.0, 1.0, 1.0};
    ml5.crop_pct = 1.0;                  // the whole image, resized (bilinear, align_corners=true) to 224
    ml5.labels = "imagenet-1k-darknet";  // darknet's own class order (kit fox, English setter, ...)
    ml5.license = "MIT (ml5)";
    ml5.description = "ml5 Tiny Darknet ImageNet classifier (TF.js layers model; outputs logits)";
    table.push_back({"darknet_tiny",
                     "darknet",
                     "Tiny Darknet (darknet tiny.cfg), ml5 TF.js layout",
                     darknet_tiny,
                     {ml5}});
  }
  auto add_mobilenet_v1 = [&](const std::string& arch, const std::string& alpha, const std::string& file,
                              std::function<Backbone(int64_t)> build) {
    PretrainedCfg keras;
    keras.tag = "keras";
    keras.source = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/" + file;
    keras.file_format = "keras-h5";
    keras.mean = {0.5, 0.5, 0.5};  // Keras mobilenet.preprocess_input: x / 127.5 - 1
    keras.std = {0.5, 0.5, 0.5};
    keras.crop_pct = 1.0;
    keras.license = "Apache-2.0 (Keras Applications)";
    keras.description = "Keras Applications ImageNet weights, alpha " + alpha;
    table.push_back({arch,
                     "mobilenet",
                     "MobileNet v1 (Howard et al. 2017), alpha " + alpha + ", Keras layout",
                     std::move(build),
                     {keras}});
  };
  add_mobilenet_v1("mobilenet_v1_025", "0.25", "mobilenet_2_5_224_tf.h5", mobilenet_v1_025);
  add_mobilenet_v1("mobilenet_v1_050", "0.5", "mobilenet_5_0_224_tf.h5", mobilenet_v1_050);
  add_mobilenet_v1("mobilenet_v1_075", "0.75", "mobilenet_7_5_224_tf.h5", mobilenet_v1_075);
  add_mobilenet_v1("mobilenet_v1_100", "1.0", "mobilenet_1_0_224_tf.h5", mobilenet_v1_100);
  // Video: (N, 3, T, H, W) clips.
  const std::string k400 = "torchvision Kinetics-400 weights (16 x 112 x 112 clips)";
  table.push_back({"r3d_18",
                   "video_resnet",
                   "R3D-18 (Tran et al. 2018), 3D ResNet-18 for video, torchvision layout",
                   r3d_18,
                   {torchvision_kinetics400("R3D_18_Weights", k400 + ", acc@1 63.2")}});
  table.push_back({"mc3_18",
                   "video_resnet",
                   "MC3-18 (Tran et al. 2018), 3D convs in layer1 and 2D above, torchvision layout",
                   mc3_18,
                   {torchvision_kinetics400("MC3_18_Weights", k400 + ", acc@1 64.0")}});
  table.push_back({"r2plus1d_18",
                   "video_resnet",
                   "R(2+1)D-18 (Tran et al. 2018), spatial then temporal convs, torchvision layout",
                   r2plus1d_18,
                   {torchvision_kinetics400("R2Plus1D_18_Weights", k400 + ", acc@1 67.5")}});
  return table;
}

// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

ModelName ModelName::parse(const std::string& text) {
  ModelName name;
  const size_t dot = text.find('.');
  name.arch = text.substr(0, dot);
  if (dot != std::string::npos) name.tag = text.substr(dot + 1);
  if (name.arch.empty() || (dot != std::string::npos && name.tag.empty())) {
    throw SpecError("model name '" + text + "': expected ARCH or ARCH.TAG, e.g. resnet50.tv_in1k");
  }
  return name;
}

const std::vector<ModelEntry>& model_entries() {
  static const std::vector<ModelEntry> table = build_table();
  return table;
}

const ModelEntry& find_model(const std::string& arch) {
  const auto& table = model_entries();
  for (const auto& entry : table) {
    if (entry.arch == arch) return entry;
  }
  std::string best;
  size_t best_distance = 4;
  for (const auto& entry : table) {
    const size_t d = edit_distance(arch, entry.arch);
    if (d < best_distance) best_distance = d, best = entry.arch;
  }
  throw SpecError("unknown architecture '" + arch + "'" +
                  (best.empty() ? "" : "; did you mean '" + best + "'?") + " (`graft models` lists them)");
}

Backbone create_model(const std::string& name, int64_t num_classes) {
  const ModelName parsed = ModelName::parse(name);
  const ModelEntry& entry = find_model(parsed.arch);
  const PretrainedCfg* cfg = &entry.tags.front();
  if (!parsed.tag.empty()) {
    cfg = nullptr;
    std::string known;
    for (const auto& tag : entry.tags) {
      if (tag.tag == parsed.tag) cfg = &tag;
      known += (known.empty() ? "" : ", ") + tag.tag;
    }
    if (!cfg) {
      throw SpecError("model '" + name + "': architecture " + entry.arch + " has no tag '" + parsed.tag +
                      "'; its tags are: " + known);
    }
  }
  const auto& build = cfg->build ? cfg->build : entry.build;
  Backbone model;
  if (!cfg->head.empty() && num_classes < 0) {
    model = build(0);  // the tag's head replaces the architecture's classifier
    model->set_default_cfg(*cfg);
    model->set_head(HeadSpec::parse(cfg->head));
  } else {
    model = build(num_classes < 0 ? cfg->num_classes : num_classes);
    model->set_default_cfg(*cfg);
  }
  return model;
}

std::string cache_dir() {
  const char* graft = std::getenv("GRAFT_CACHE");
  if (graft && *graft) return graft;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return (std::filesystem::path(xdg) / "graft").string();
  const char* home = std::getenv("HOME");
  if (!home || !*home) {
    throw Error("cannot find the weights cache: none of GRAFT_CACHE, XDG_CACHE_HOME or HOME is set");
  }
  return (std::filesystem::path(home) / ".cache" / "graft").string();
}

std::string pretrained_file(const PretrainedCfg& cfg) {
  if (cfg.cache_file.empty()) return "";
  return (std::filesystem::path(cache_dir()) / cfg.cache_file).string();
}

}  // namespace graft
