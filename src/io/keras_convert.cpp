// Keras topologies, the Keras -> graft name maps (tables below) and loading Keras weights into graft
// models. Layout rules follow Keras' own converters (keras/utils/conv_utils.py convert_kernel is the
// HWIO <-> OIHW transpose; tf.nn.depthwise_conv2d's output channel c * M + m is PyTorch's grouped
// conv channel order) and timm's TF ports (timm/models/_builder.py + checkpoint_filter_fn).
#include "io/keras_convert.h"

#include <torch/nn/modules/batchnorm.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "graft/errors.h"
#include "graft/head.h"
#include "graft/json_file.h"
#include "graft/keras_h5.h"
#include "graft/strings.h"
#include "graft/tfjs.h"

namespace graft {
namespace keras {

// ---- name maps: data ----------------------------------------------------------------------------

namespace {

// Keras applications' InceptionV3 (keras/applications/inception_v3.py) in torchvision's names. Keras
// names layers by creation order, one conv2d_i / batch_normalization_i pair per conv2d_bn, and each block
// creates its convolutions in torchvision's branch order, so a block's n-th BasicConv2d (from 0) is
// conv2d_(first + n). The shapes check this table: a row off by one fails to load with both shapes.
struct InceptionBlockNames {
  const char* module;              // torchvision block ("" for the stem's BasicConv2d modules)
  int first;                       // Keras index of its first conv2d_bn
  std::vector<const char*> convs;  // its BasicConv2d children in creation order
};

std::vector<NameMapRule> inception_v3_rules() {
  const std::vector<const char*> a{"branch1x1",      "branch5x5_1",    "branch5x5_2", "branch3x3dbl_1",
                                   "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"};
  const std::vector<const char*> b{"branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"};
  const std::vector<const char*> c{"branch1x1",      "branch7x7_1",    "branch7x7_2",    "branch7x7_3",
                                   "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                                   "branch7x7dbl_5", "branch_pool"};
  const std::vector<const char*> d{"branch3x3_1",   "branch3x3_2",   "branch7x7x3_1",
                                   "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"};
  const std::vector<const char*> e{"branch1x1",       "branch3x3_1",     "branch3x3_2a",
                                   "branch3x3_2b",    "branch3x3dbl_1",  "branch3x3dbl_2",
                                   "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"};
  // clang-format off
  const std::vector<InceptionBlockNames> blocks{
      // block      first  convs       Keras
      {"",           1, {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"}},
      {"Mixed_5b",   6, a},        // mixed0
      {"Mixed_5c",  13, a},        // mixed1
      {"Mixed_5d",  20, a},        // mixed2
      {"Mixed_6a",  27, b},        // mixed3
      {"Mixed_6b",  31, c},        // mixed4
      {"Mixed_6c",  41, c},        // mixed5
      {"Mixed_6d",  51, c},        // mixed6
      {"Mixed_6e",  61, c},        // mixed7
      {"Mixed_7a",  71, d},        // mixed8
      {"Mixed_7b",  77, e},        // mixed9
      {"Mixed_7c",  86, e},        // mixed10; its last conv is conv2d_94
  };
  // clang-format on
  std::vector<NameMapRule> rules;
  for (const InceptionBlockNames& block : blocks) {
    for (size_t n = 0; n < block.convs.size(); ++n) {
      const std::string index = std::to_string(block.first + static_cast<int>(n));
      const std::string path =
          *block.module ? std::string(block.module) + "." + block.convs[n] : block.convs[n];
      rules.push_back({"conv2d_" + index, path + ".conv", LayerKind::kConv2D});
      rules.push_back({"batch_normalization_" + index, path + ".bn", LayerKind::kBatchNorm});
    }
  }
  rules.push_back({"predictions", "fc", LayerKind::kDense});
  // nsfwjs' head (tag inception_v3.nsfwjs: avg, dense 256, dropout, dense 128, dropout, dense 5).
  rules.push_back({"dense_1", "fc.0", LayerKind::kDense, 0, 0, 0, true});
  rules.push_back({"dense_2", "fc.2", LayerKind::kDense, 0, 0, 0, true});
  rules.push_back({"dense_3", "fc.4", LayerKind::kDense, 0, 0, 0, true});
  return rules;
}

}  // namespace

// Every name map as data, an entry per model family: a table, long because the families are many.
const std::vector<NameMap>& name_maps() {
  static const std::vector<NameMap> maps{
      // ml5's Tiny Darknet (Keras 2.1.6 automatic names). The graft model uses the same names.
      {"darknet_tiny",
       {
           {"conv2d_%d", "conv2d_%d", LayerKind::kConv2D, 1, 16},
           {"batch_normalization_%d", "batch_normalization_%d", LayerKind::kBatchNorm, 1, 15},
       }},
      // Keras applications' MobileNet v1 (keras/applications/mobilenet.py), every alpha.
      {"mobilenet_v1",
       {
           {"conv1", "conv1", LayerKind::kConv2D},
           {"conv1_bn", "conv1_bn", LayerKind::kBatchNorm},
           {"conv_dw_%d", "conv_dw_%d", LayerKind::kDepthwiseConv2D, 1, 13},
           {"conv_dw_%d_bn", "conv_dw_%d_bn", LayerKind::kBatchNorm, 1, 13},
           {"conv_pw_%d", "conv_pw_%d", LayerKind::kConv2D, 1, 13},
           {"conv_pw_%d_bn", "conv_pw_%d_bn", LayerKind::kBatchNorm, 1, 13},
           {"conv_preds", "conv_preds", LayerKind::kConv2D},
       }},
      // Keras applications' ResNet50 (keras/applications/resnet.py, TF 2 layer names) into torchvision's
      // names: stage convN is layer(N - 1), block k is index k - 1; _0_ is the projection shortcut.
      {"resnet50",
       {
           {"conv1_conv", "conv1", LayerKind::kConv2D},
           {"conv1_bn", "bn1", LayerKind::kBatchNorm},
           {"conv2_block%d_1_conv", "layer1.%d.conv1", LayerKind::kConv2D, 1, 3, -1},
           {"conv2_block%d_1_bn", "layer1.%d.bn1", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv2_block%d_2_conv", "layer1.%d.conv2", LayerKind::kConv2D, 1, 3, -1},
           {"conv2_block%d_2_bn", "layer1.%d.bn2", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv2_block%d_3_conv", "layer1.%d.conv3", LayerKind::kConv2D, 1, 3, -1},
           {"conv2_block%d_3_bn", "layer1.%d.bn3", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv2_block1_0_conv", "layer1.0.downsample.0", LayerKind::kConv2D},
           {"conv2_block1_0_bn", "layer1.0.downsample.1", LayerKind::kBatchNorm},
           {"conv3_block%d_1_conv", "layer2.%d.conv1", LayerKind::kConv2D, 1, 4, -1},
           {"conv3_block%d_1_bn", "layer2.%d.bn1", LayerKind::kBatchNorm, 1, 4, -1},
           {"conv3_block%d_2_conv", "layer2.%d.conv2", LayerKind::kConv2D, 1, 4, -1},
           {"conv3_block%d_2_bn", "layer2.%d.bn2", LayerKind::kBatchNorm, 1, 4, -1},
           {"conv3_block%d_3_conv", "layer2.%d.conv3", LayerKind::kConv2D, 1, 4, -1},
           {"conv3_block%d_3_bn", "layer2.%d.bn3", LayerKind::kBatchNorm, 1, 4, -1},
           {"conv3_block1_0_conv", "layer2.0.downsample.0", LayerKind::kConv2D},
           {"conv3_block1_0_bn", "layer2.0.downsample.1", LayerKind::kBatchNorm},
           {"conv4_block%d_1_conv", "layer3.%d.conv1", LayerKind::kConv2D, 1, 6, -1},
           {"conv4_block%d_1_bn", "layer3.%d.bn1", LayerKind::kBatchNorm, 1, 6, -1},
           {"conv4_block%d_2_conv", "layer3.%d.conv2", LayerKind::kConv2D, 1, 6, -1},
           {"conv4_block%d_2_bn", "layer3.%d.bn2", LayerKind::kBatchNorm, 1, 6, -1},
           {"conv4_block%d_3_conv", "layer3.%d.conv3", LayerKind::kConv2D, 1, 6, -1},
           {"conv4_block%d_3_bn", "layer3.%d.bn3", LayerKind::kBatchNorm, 1, 6, -1},
           {"conv4_block1_0_conv", "layer3.0.downsample.0", LayerKind::kConv2D},
           {"conv4_block1_0_bn", "layer3.0.downsample.1", LayerKind::kBatchNorm},
           {"conv5_block%d_1_conv", "layer4.%d.conv1", LayerKind::kConv2D, 1, 3, -1},
           {"conv5_block%d_1_bn", "layer4.%d.bn1", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv5_block%d_2_conv", "layer4.%d.conv2", LayerKind::kConv2D, 1, 3, -1},
           {"conv5_block%d_2_bn", "layer4.%d.bn2", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv5_block%d_3_conv", "layer4.%d.conv3", LayerKind::kConv2D, 1, 3, -1},
           {"conv5_block%d_3_bn", "layer4.%d.bn3", LayerKind::kBatchNorm, 1, 3, -1},
           {"conv5_block1_0_conv", "layer4.0.downsample.0", LayerKind::kConv2D},
           {"conv5_block1_0_bn", "layer4.0.downsample.1", LayerKind::kBatchNorm},
           {"predictions", "fc", LayerKind::kDense},
       }},
      // Keras applications' MobileNetV2 (keras/applications/mobilenet_v2.py) into torchvision's names:
      // Keras block_i is torchvision features.(i + 1); expanded_conv (block 0) has no expansion.
      {"mobilenet_v2",
       {
           {"Conv1", "features.0.0", LayerKind::kConv2D},
           {"bn_Conv1", "features.0.1", LayerKind::kBatchNorm},
           {"expanded_conv_depthwise", "features.1.conv.0.0", LayerKind::kDepthwiseConv2D},
           {"expanded_conv_depthwise_BN", "features.1.conv.0.1", LayerKind::kBatchNorm},
           {"expanded_conv_project", "features.1.conv.1", LayerKind::kConv2D},
           {"expanded_conv_project_BN", "features.1.conv.2", LayerKind::kBatchNorm},
           {"block_%d_expand", "features.%d.conv.0.0", LayerKind::kConv2D, 1, 16, 1},
           {"block_%d_expand_BN", "features.%d.conv.0.1", LayerKind::kBatchNorm, 1, 16, 1},
           {"block_%d_depthwise", "features.%d.conv.1.0", LayerKind::kDepthwiseConv2D, 1, 16, 1},
           {"block_%d_depthwise_BN", "features.%d.conv.1.1", LayerKind::kBatchNorm, 1, 16, 1},
           {"block_%d_project", "features.%d.conv.2", LayerKind::kConv2D, 1, 16, 1},
           {"block_%d_project_BN", "features.%d.conv.3", LayerKind::kBatchNorm, 1, 16, 1},
           {"Conv_1", "features.18.0", LayerKind::kConv2D},
           {"Conv_1_bn", "features.18.1", LayerKind::kBatchNorm},
           {"Logits", "classifier.1", LayerKind::kDense},
           // nsfwjs' head (tag mobilenet_v2.nsfwjs: avg, dense 256, dropout, dense 128, dropout, dense 5).
           {"dense_1", "classifier.0", LayerKind::kDense, 0, 0, 0, true},
           {"dense_2", "classifier.2", LayerKind::kDense, 0, 0, 0, true},
           {"dense_3", "classifier.4", LayerKind::kDense, 0, 0, 0, true},
       }},
      {"inception_v3", inception_v3_rules()},
  };
  return maps;
}

namespace {

// Weight renames per kind: data as well.
struct WeightRename {
  LayerKind kind;
  const char* keras;
  const char* graft;
};
constexpr WeightRename kWeightRenames[] = {
    {LayerKind::kConv2D, "kernel", "weight"},
    {LayerKind::kConv2D, "bias", "bias"},
    {LayerKind::kDepthwiseConv2D, "depthwise_kernel", "weight"},
    {LayerKind::kDepthwiseConv2D, "bias", "bias"},
    {LayerKind::kDense, "kernel", "weight"},
    {LayerKind::kDense, "bias", "bias"},
    {LayerKind::kBatchNorm, "gamma", "weight"},
    {LayerKind::kBatchNorm, "beta", "bias"},
    {LayerKind::kBatchNorm, "moving_mean", "running_mean"},
    {LayerKind::kBatchNorm, "moving_variance", "running_var"},
};

std::string substitute(const std::string& pattern, int index) {
  const size_t at = pattern.find("%d");
  if (at == std::string::npos) return pattern;
  return pattern.substr(0, at) + std::to_string(index) + pattern.substr(at + 2);
}

bool is_kernel(LayerKind kind, const std::string& short_name) {
  return (kind == LayerKind::kConv2D || kind == LayerKind::kDense)
             ? short_name == "kernel"
             : (kind == LayerKind::kDepthwiseConv2D && short_name == "depthwise_kernel");
}

// A Keras BatchNormalization saves gamma only with scale=True and beta only with center=True (Keras'
// InceptionV3 has scale=False): the one it lacks is the identity, gamma 1 or beta 0, which graft's
// BatchNorm holds as weight / bias. When the topology says the layer has it, the file is incomplete
// instead: nothing is filled in, and strict loading names the missing tensor.
void add_missing_affine(const KerasModel& keras, const KerasLayerWeights& layer, const std::string& module,
                        Converted& out) {
  std::map<std::string, torch::Tensor> present;
  for (const auto& [name, tensor] : layer.tensors) present[short_weight_name(name)] = tensor;
  const auto stats = present.find("moving_mean");
  if (stats == present.end()) return;  // no size to give them; the strict check names what is missing
  const KerasLayer* topo = keras.find_layer(layer.layer);
  struct Affine {
    const char* keras;   // Keras weight
    const char* option;  // Keras config flag that creates it
    const char* graft;   // graft tensor
    double identity;
  };
  for (const Affine& a : {Affine{"gamma", "scale", "weight", 1.0}, Affine{"beta", "center", "bias", 0.0}}) {
    if (present.count(a.keras)) continue;
    // Without a topology (a weights-only .h5) the saved weights are the only declaration there is.
    const bool declared = topo && (!topo->config.contains(a.option) || topo->config.at(a.option) != false);
    if (declared) continue;
    out.tensors.emplace_back(module + "." + a.graft, torch::full_like(stats->second, a.identity));
  }
}

}  // namespace

const char* keras_class_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::kConv2D:
      return "Conv2D";
    case LayerKind::kDepthwiseConv2D:
      return "DepthwiseConv2D";
    case LayerKind::kDense:
      return "Dense";
    case LayerKind::kBatchNorm:
      return "BatchNormalization";
  }
  return "?";
}

const NameMap* find_name_map(const std::string& arch) {
  for (const NameMap& map : name_maps()) {
    if (arch == map.arch || arch.rfind(map.arch + "_", 0) == 0) return &map;
  }
  return nullptr;
}

std::map<std::string, LayerTarget> expand(const NameMap& map) {
  std::map<std::string, LayerTarget> out;
  for (const NameMapRule& rule : map.rules) {
    const bool indexed = rule.keras.find("%d") != std::string::npos;
    const int first = indexed ? rule.first : 0;
    const int last = indexed ? rule.last : 0;
    for (int i = first; i <= last; ++i) {
      const std::string keras = substitute(rule.keras, i);
      if (!out.emplace(keras,
                       LayerTarget{substitute(rule.graft, i + rule.offset), rule.kind, rule.custom_head})
               .second) {
        throw Error("Keras name map '" + map.arch + "': layer '" + keras + "' appears twice");
      }
    }
  }
  return out;
}

std::string short_weight_name(const std::string& keras_name) {
  std::string name = keras_name.substr(keras_name.rfind('/') + 1);  // npos + 1 == 0
  const size_t colon = name.rfind(':');
  if (colon != std::string::npos) name = name.substr(0, colon);
  return name;
}

std::string graft_weight_name(LayerKind kind, const std::string& short_name) {
  for (const WeightRename& rename : kWeightRenames) {
    if (rename.kind == kind && short_name == rename.keras) return rename.graft;
  }
  return "";
}

torch::Tensor to_graft_layout(LayerKind kind, const std::string& short_name, const torch::Tensor& keras,
                              const std::string& what) {
  if (!is_kernel(kind, short_name)) {
    if (keras.dim() != 1) {
      throw Error(what + ": a " + keras_class_name(kind) + " '" + short_name + "' is a vector, got shape " +
                  shape_str(keras.sizes().vec()));
    }
    return keras.contiguous();
  }
  switch (kind) {
    case LayerKind::kConv2D:
      if (keras.dim() != 4) break;
      return keras.permute({3, 2, 0, 1}).contiguous();  // (H, W, in, out) -> (out, in, H, W)
    case LayerKind::kDepthwiseConv2D:
      if (keras.dim() != 4) break;
      // (H, W, C, M) -> (C, M, H, W) -> (C * M, 1, H, W): output channel c * M + m, as TF orders them.
      return keras.permute({2, 3, 0, 1})
          .reshape({keras.size(2) * keras.size(3), 1, keras.size(0), keras.size(1)});
    case LayerKind::kDense:
      if (keras.dim() != 2) break;
      return keras.t().contiguous();  // (in, out) -> (out, in)
    case LayerKind::kBatchNorm:
      break;
  }
  const char* expected = kind == LayerKind::kDense             ? "(in, out)"
                         : kind == LayerKind::kDepthwiseConv2D ? "(H, W, channels, multiplier)"
                                                               : "(H, W, in, out)";
  throw Error(what + ": a " + keras_class_name(kind) + " kernel is " + expected + ", got shape " +
              shape_str(keras.sizes().vec()));
}

std::vector<int64_t> to_keras_shape(LayerKind kind, const std::string& short_name,
                                    const std::vector<int64_t>& s) {
  if (!is_kernel(kind, short_name)) return s;
  if (kind == LayerKind::kConv2D && s.size() == 4) return {s[2], s[3], s[1], s[0]};
  if (kind == LayerKind::kDepthwiseConv2D && s.size() == 4) return {s[2], s[3], s[0], 1};
  if (kind == LayerKind::kDense && s.size() == 2) return {s[1], s[0]};
  return s;
}

Converted convert(const KerasModel& keras, const NameMap& map) {
  const auto targets = expand(map);
  Converted out;
  for (const KerasLayerWeights& layer : keras.weights) {
    auto target = targets.find(layer.layer);
    if (target == targets.end()) target = targets.find(layer.layer.substr(layer.layer.rfind('/') + 1));
    if (target == targets.end()) {
      for (const auto& [name, tensor] : layer.tensors) out.tensors.emplace_back(name, tensor);
      continue;
    }
    const LayerTarget& t = target->second;
    if (const KerasLayer* topo = keras.find_layer(layer.layer);
        topo && topo->class_name != keras_class_name(t.kind)) {
      throw Error(keras.source + ": layer '" + layer.layer + "' is a " + topo->class_name +
                  " in the file, but the " + map.arch + " name map makes it a " + keras_class_name(t.kind) +
                  " ('" + t.module + "'): the file is another architecture");
    }
    for (const auto& [name, tensor] : layer.tensors) {
      const std::string short_name = short_weight_name(name);
      const std::string graft_name = graft_weight_name(t.kind, short_name);
      const std::string what = keras.source + ": layer '" + layer.layer + "' (" + keras_class_name(t.kind) +
                               "), weight '" + name + "'";
      if (graft_name.empty())
        throw Error(what + ": a " + std::string(keras_class_name(t.kind)) + " has no such weight");
      const std::string full = t.module + "." + graft_name;
      out.tensors.emplace_back(full, to_graft_layout(t.kind, short_name, tensor, what));
      out.origin[full] = Origin{layer.layer, name, tensor.sizes().vec(), t.kind};
    }
    if (t.kind == LayerKind::kBatchNorm) {
      add_missing_affine(keras, layer, t.module, out);
      // PyTorch counts batches seen in training; Keras does not. 0 is what a fresh BatchNorm holds.
      out.tensors.emplace_back(t.module + ".num_batches_tracked", torch::zeros({}, torch::kLong));
    }
  }
  return out;
}

}  // namespace keras

// ---- Keras topology ----------------------------------------------------------------------------------

namespace {

using nlohmann::json;

// Keras 3 / TF.js node arguments: {"class_name": "__keras_tensor__", "config": {"keras_history": [name, ..]}}
// anywhere inside (lists of) arguments.
void collect_keras_history(const json& value, std::vector<std::string>& out) {
  if (value.is_object()) {
    if (value.contains("keras_history") && value["keras_history"].is_array() &&
        !value["keras_history"].empty() && value["keras_history"][0].is_string()) {
      out.push_back(value["keras_history"][0].get<std::string>());
      return;
    }
    for (const auto& item : value.items()) collect_keras_history(item.value(), out);
  } else if (value.is_array()) {
    for (const json& item : value) collect_keras_history(item, out);
  }
}

std::vector<std::string> parse_inbound(const json& nodes, const std::string& file, const std::string& layer) {
  std::vector<std::string> out;
  if (nodes.is_null()) return out;
  if (!nodes.is_array()) throw FormatError(file, "layer '" + layer + "': inbound_nodes is not a list");
  for (const json& node : nodes) {
    if (node.is_array()) {  // Keras 2: [["conv1", 0, 0, {}], ...]
      for (const json& inbound : node) {
        if (!inbound.is_array() || inbound.empty() || !inbound[0].is_string()) {
          throw FormatError(file, "layer '" + layer + "': malformed inbound node " + json_excerpt(inbound));
        }
        out.push_back(inbound[0].get<std::string>());
      }
    } else if (node.is_object()) {  // Keras 3: {"args": [...], "kwargs": {...}}
      collect_keras_history(node.value("args", json::array()), out);
    } else {
      throw FormatError(file, "layer '" + layer + "': malformed inbound node " + json_excerpt(node));
    }
  }
  return out;
}

}  // namespace

std::vector<KerasLayer> parse_keras_layers(const json& model_config, const std::string& file) {
  if (!model_config.is_object() || !model_config.contains("class_name") ||
      !model_config["class_name"].is_string() || !model_config.contains("config")) {
    throw FormatError(file, "the Keras model config is not {\"class_name\": ..., \"config\": ...}");
  }
  const std::string model_class = model_config["class_name"].get<std::string>();
  const json& config = model_config["config"];
  const json* layers = nullptr;
  if (config.is_array()) {
    layers = &config;  // Keras < 2.2.3 Sequential: the config is the layer list
  } else if (config.is_object() && config.contains("layers") && config["layers"].is_array()) {
    layers = &config["layers"];
  } else {
    throw FormatError(file, "the Keras " + model_class + " config has no \"layers\" list");
  }
  const bool sequential = model_class == "Sequential";
  std::vector<KerasLayer> out;
  for (size_t i = 0; i < layers->size(); ++i) {
    const json& entry = (*layers)[i];
    if (!entry.is_object() || !entry.contains("class_name") || !entry["class_name"].is_string() ||
        !entry.contains("config") || !entry["config"].is_object()) {
      throw FormatError(
          file, "Keras layer " + std::to_string(i) + " is not {\"class_name\": ..., \"config\": {...}}");
    }
    KerasLayer layer;
    layer.class_name = entry["class_name"].get<std::string>();
    layer.config = entry["config"];
    if (entry.contains("name") && entry["name"].is_string()) {
      layer.name = entry["name"].get<std::string>();
    } else if (layer.config.contains("name") && layer.config["name"].is_string()) {
      layer.name = layer.config["name"].get<std::string>();
    }
    if (layer.name.empty()) {
      throw FormatError(file, "Keras layer " + std::to_string(i) + " (" + layer.class_name + ") has no name");
    }
    if (sequential) {
      if (!out.empty()) layer.inbound.push_back(out.back().name);
    } else {
      layer.inbound =
          parse_inbound(entry.contains("inbound_nodes") ? entry["inbound_nodes"] : json(), file, layer.name);
    }
    out.push_back(std::move(layer));
  }
  return out;
}

NamedTensors KerasModel::named_weights() const {
  NamedTensors out;
  for (const auto& layer : weights) out.insert(out.end(), layer.tensors.begin(), layer.tensors.end());
  return out;
}

const KerasLayer* KerasModel::find_layer(const std::string& name) const {
  for (const auto& layer : layers) {
    if (layer.name == name) return &layer;
  }
  return nullptr;
}

KerasModel read_keras_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) {
    // A TF.js model folder: model.json, or model.min.js as npm packages such as nsfwjs bundle it.
    for (const char* name : {"model.json", "model.min.js"}) {
      const std::string file = (std::filesystem::path(path) / name).string();
      if (std::filesystem::is_regular_file(file)) return read_tfjs_model(file);
    }
    throw FormatError(path, "a folder without model.json or model.min.js", "expected a TF.js model folder");
  }
  regular_file_size(path, "weights file (.h5, model.json or a TF.js folder)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FormatError(path, "not readable");
  char first = 0;
  while (in.get(first) && std::isspace(static_cast<unsigned char>(first))) {
  }
  // JSON is a TF.js model.json, a .js file one bundled as JavaScript (npm nsfwjs' model.min.js);
  // everything else goes to the HDF5 reader, which checks the signature.
  if (first == '{') return read_tfjs_model(path);
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".js") == 0) return read_tfjs_model(path);
  return read_keras_h5(path);
}

// ---- loading ---------------------------------------------------------------------------------------

namespace {

const keras::NameMap& require_name_map(const std::string& arch) {
  const keras::NameMap* map = keras::find_name_map(arch);
  if (map) return *map;
  std::string known;
  for (const auto& m : keras::name_maps()) known += (known.empty() ? "" : ", ") + m.arch;
  throw SpecError("graft has no Keras / TF.js name map for architecture '" + arch +
                  "'; maps exist for: " + known);
}

bool under_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const std::string& prefix : prefixes) {
    if (name == prefix || (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
                           name[prefix.size()] == '.')) {
      return true;
    }
  }
  return false;
}

// Appends at most kMaxLines of `lines`, then how many were left out.
void append_capped(std::ostringstream& out, const std::vector<std::string>& lines, const char* what) {
  constexpr size_t kMaxLines = 12;
  for (size_t i = 0; i < lines.size() && i < kMaxLines; ++i) out << "  " << lines[i] << "\n";
  if (lines.size() > kMaxLines) out << "  ... and " << lines.size() - kMaxLines << " more " << what << "\n";
}

// The misfits between converted tensors and the model, each told in Keras terms: shape mismatches
// (Keras layer, weight, both shapes in Keras layout), file layers the map does not know, model tensors
// the file lacks. Empty when everything fits.
std::string describe_misfits(BackboneImpl& model, const keras::Converted& converted,
                             const std::vector<std::string>& skip, const keras::NameMap& map) {
  std::map<std::string, std::vector<int64_t>> model_shapes;
  for (const auto& [name, tensor] : state_dict(model)) model_shapes[name] = tensor.sizes().vec();
  std::set<std::string> in_file;
  std::vector<std::string> mismatched, unmapped, missing;
  std::vector<std::string> unmapped_layers;  // in file order, once each
  // One line per Keras layer for shape mismatches (a BatchNorm's four vectors differ together).
  std::map<std::string, size_t> mismatch_line;  // layer -> its line in `mismatched`
  std::map<std::string, size_t> more_mismatches;
  for (const auto& [name, tensor] : converted.tensors) {
    in_file.insert(name);
    if (under_prefix(name, skip)) continue;
    const auto it = model_shapes.find(name);
    const auto origin = converted.origin.find(name);
    std::ostringstream line;
    if (it == model_shapes.end()) {
      if (origin == converted.origin.end()) {
        const std::string layer = name.substr(0, name.rfind('/'));
        if (std::find(unmapped_layers.begin(), unmapped_layers.end(), layer) == unmapped_layers.end()) {
          unmapped_layers.push_back(layer);
        }
        line << "layer '" << layer << "': weight '" << name << "' " << shape_str(tensor.sizes().vec())
             << " is not in the " << map.arch << " name map";
      } else {
        line << "layer '" << origin->second.layer << "': weight '" << origin->second.keras_name
             << "' has no place in " << model.arch() << " ('" << name << "' does not exist)";
      }
      unmapped.push_back(line.str());
    } else if (it->second != tensor.sizes().vec()) {
      if (origin != converted.origin.end()) {
        const auto& o = origin->second;
        if (mismatch_line.count(o.layer)) {
          ++more_mismatches[o.layer];
          continue;
        }
        mismatch_line[o.layer] = mismatched.size();
        const std::string short_name = keras::short_weight_name(o.keras_name);
        line << "layer '" << o.layer << "' (" << keras::keras_class_name(o.kind) << "): weight '"
             << o.keras_name << "' has shape " << shape_str(o.keras_shape) << ", the model expects "
             << shape_str(keras::to_keras_shape(o.kind, short_name, it->second)) << " (graft '" << name
             << "' " << shape_str(it->second) << ")";
      } else {
        line << "'" << name << "' has shape " << shape_str(tensor.sizes().vec()) << ", the model expects "
             << shape_str(it->second);
      }
      mismatched.push_back(line.str());
    }
  }
  for (const auto& [name, shape] : model_shapes) {
    if (in_file.count(name) || under_prefix(name, skip)) continue;
    missing.push_back("'" + name + "' " + shape_str(shape) + " of the model is not in the file");
  }
  if (mismatched.empty() && unmapped.empty() && missing.empty()) return "";
  for (const auto& [layer, count] : more_mismatches) {
    mismatched[mismatch_line[layer]] +=
        " (and " + std::to_string(count) + " more weight" + (count > 1 ? "s" : "") + " of this layer)";
  }

  std::ostringstream out;
  if (converted.origin.empty() && !unmapped_layers.empty()) {
    // Nothing in the file is known to the map: say so once instead of listing every tensor.
    out << "  none of the file's " << unmapped_layers.size() << " layers with weights is in the " << map.arch
        << " name map (" << unmapped_layers.front()
        << (unmapped_layers.size() > 1 ? ", " + unmapped_layers[1] : "")
        << ", ...): the file holds another architecture\n";
  } else {
    append_capped(out, unmapped, "weights not in the model");
  }
  append_capped(out, mismatched, "shape mismatches");
  append_capped(out, missing, "model tensors missing from the file");
  return out.str();
}

void apply_batchnorm_configs(BackboneImpl& model, const KerasModel& keras, const keras::NameMap& map) {
  if (keras.layers.empty()) return;
  auto modules = model.named_modules("", /*include_self=*/false);
  for (const auto& [layer_name, target] : keras::expand(map)) {
    if (target.kind != keras::LayerKind::kBatchNorm) continue;
    const KerasLayer* layer = keras.find_layer(layer_name);
    const auto* module = modules.find(target.module);
    if (!layer || !module) continue;
    auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(module->get());
    if (!bn) continue;
    // Keras: moving = moving * momentum + batch * (1 - momentum); PyTorch weighs the batch by its momentum.
    if (layer->config.contains("epsilon") && layer->config["epsilon"].is_number()) {
      bn->options.eps(layer->config["epsilon"].get<double>());
    }
    if (layer->config.contains("momentum") && layer->config["momentum"].is_number()) {
      bn->options.momentum(1.0 - layer->config["momentum"].get<double>());
    }
  }
}

}  // namespace

NamedTensors keras_to_graft(const BackboneImpl& model, const KerasModel& keras) {
  return keras::convert(keras, require_name_map(model.arch())).tensors;
}

LoadReport load_keras_weights(BackboneImpl& model, const KerasModel& keras, const WeightsOptions& options) {
  const keras::NameMap& map = require_name_map(model.arch());
  const keras::Converted converted = keras::convert(keras, map);
  const std::string head = head_module_name(model);
  std::vector<std::string> skip;
  if (options.skip_classifier) {
    if (!head.empty()) skip.push_back(head);
  } else if (!head.empty() && !model.has_custom_head()) {
    // A file fine-tuned to another class count loads into a build of the default count.
    for (const auto& [name, tensor] : converted.tensors) {
      if (name == head + ".weight" && tensor.dim() >= 2 && tensor.size(0) != model.num_classes()) {
        model.reset_classifier(tensor.size(0));
      }
    }
  }
  if (options.strict) {
    const std::string misfits = describe_misfits(model, converted, skip, map);
    if (!misfits.empty()) {
      throw Error(keras.source + ": the weights do not fit " + model.arch() + " (nothing was loaded):\n" +
                  misfits + "hint: a file of another architecture or width (alpha) does not fit" +
                  (options.hint.empty() ? "" : "; " + options.hint));
    }
  }
  LoadOptions load;
  load.strict = false;
  load.skip_prefixes = skip;
  load.source_name = keras.source;
  LoadReport report = load_state_dict(model, converted.tensors, load);
  apply_batchnorm_configs(model, keras, map);
  return report;
}

LoadReport load_tfjs_weights(BackboneImpl& model, const std::string& model_json,
                             const WeightsOptions& options) {
  return load_keras_weights(model, read_tfjs_model(model_json), options);
}

LoadReport load_keras_h5_weights(BackboneImpl& model, const std::string& path,
                                 const WeightsOptions& options) {
  return load_keras_weights(model, read_keras_h5(path), options);
}

}  // namespace graft
