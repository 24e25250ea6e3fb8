// The registry's table: every architecture graft builds, with its pretrained tags as data. Each
// architecture file registers its own entries (register_X, models/model_table.h); build_table() below
// calls them in order, and the PretrainedCfg helpers several of them share are defined here.
// Sources name where the reference weights live; torchvision's own .pth files are pickles, which graft
// never loads, so tags point at safetensors copies with identical names where one exists (timm's).
#include "graft/registry.h"

#include <cstdlib>
#include <filesystem>

#include "graft/errors.h"
#include "graft/head.h"
#include "models/model_table.h"

namespace graft {

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

namespace {

// One call per architecture family, in the order model_entries() (and `graft models`) lists them.
std::vector<ModelEntry> build_table() {
  std::vector<ModelEntry> table;
  register_resnet(table);
  register_vgg(table);
  register_mobilenet_v2(table);
  register_efficientnet(table);
  register_inception_v3(table);
  // Keras / TF.js imports (graft/keras.h): weights in foreign formats, loaded through name maps.
  register_darknet(table);
  register_mobilenet_v1(table);
  // Video: (N, 3, T, H, W) clips.
  register_video_resnet(table);
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
