// Keras -> graft conversion: name maps (data, one table per architecture) and tensor layouts.
//
// A name map row says which graft module a Keras layer becomes and what kind of layer it is; the kind
// fixes how each of its weights is renamed and laid out (timm's checkpoint_filter_fn for TF ports, as a
// table):
//   Conv2D              kernel (H, W, in, out)        -> weight (out, in, H, W);      bias -> bias
//   DepthwiseConv2D     depthwise_kernel (H, W, C, M) -> weight (C * M, 1, H, W);   bias -> bias
//   Dense               kernel (in, out)              -> weight (out, in);            bias -> bias
//   BatchNormalization  gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean, running_var
//                       (+ num_batches_tracked = 0, which Keras does not keep; a gamma or beta the
//                       layer lacks, scale=False or center=False, becomes weight 1 or bias 0)
#pragma once
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "graft/keras.h"

namespace graft::keras {

enum class LayerKind { kConv2D, kDepthwiseConv2D, kDense, kBatchNorm };

// The Keras class name of a kind: "Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization".
const char* keras_class_name(LayerKind kind);

// One row of a name map. "%d" in both names stands for every index in [first, last].
struct NameMapRule {
  std::string keras;  // Keras layer name (pattern): "conv_dw_%d"
  std::string graft;  // graft module path (pattern): "conv_dw_%d"
  LayerKind kind;
  int first = 0, last = 0;   // index range of %d; unused when the names have none
  int offset = 0;            // graft index = Keras index + offset (Keras block_1 is torchvision features.2)
  bool custom_head = false;  // a layer of a tag's own head (nsfwjs' dense_1..3): absent from other builds
};

struct NameMap {
  std::string arch;  // architecture the map serves: exact arch, or family prefix ("mobilenet_v1" serves
                     // mobilenet_v1_025)
  std::vector<NameMapRule> rules;
};

// Every Keras name map graft ships (tiny Darknet of ml5, Keras applications' MobileNet v1, MobileNetV2 and
// InceptionV3 in torchvision's names).
const std::vector<NameMap>& name_maps();
// The map serving `arch`: equal to map.arch, or starting with map.arch + "_"; nullptr when none.
const NameMap* find_name_map(const std::string& arch);

struct LayerTarget {
  std::string module;  // graft module path
  LayerKind kind;
  bool custom_head = false;  // see NameMapRule
};
// The rules expanded: Keras layer name -> graft module and kind. Throws Error on a duplicate Keras name.
std::map<std::string, LayerTarget> expand(const NameMap& map);

// "conv1_bn/gamma:0" -> "gamma"; "model/conv2d_1/kernel" -> "kernel".
std::string short_weight_name(const std::string& keras_name);
// The graft parameter or buffer name of a Keras weight of a layer kind ("gamma" -> "weight"); "" when the
// kind has no such weight.
std::string graft_weight_name(LayerKind kind, const std::string& short_name);

// Keras layout -> graft layout. Throws Error (naming `what`) when the rank is not the kind's.
torch::Tensor to_graft_layout(LayerKind kind, const std::string& short_name, const torch::Tensor& keras,
                              const std::string& what);
// graft shape -> Keras shape, for messages (depthwise assumes depth_multiplier 1).
std::vector<int64_t> to_keras_shape(LayerKind kind, const std::string& short_name,
                                    const std::vector<int64_t>& graft_shape);

// Where a converted tensor came from, for messages.
struct Origin {
  std::string layer;       // Keras layer
  std::string keras_name;  // "conv1/kernel:0"
  std::vector<int64_t> keras_shape;
  LayerKind kind;
};

struct Converted {
  NamedTensors tensors;                  // graft names and layouts
  std::map<std::string, Origin> origin;  // by graft name; absent for tensors passed through unmapped
};

// Converts every weight of `keras` with the map; layers the map lacks keep their Keras names. Checks
// that topology layers (when the file has a topology) are of the kind the map expects.
Converted convert(const KerasModel& keras, const NameMap& map);

}  // namespace graft::keras
