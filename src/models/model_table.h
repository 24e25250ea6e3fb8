// How the registry's table (graft/registry.h) is put together: each architecture file registers its own
// entries, with their pretrained tags, in a register_X function next to its builders, and build_table()
// in registry.cpp calls them in the order `graft models` lists them. Plain calls rather than static
// registrars: graft_lib is a static library, and the linker drops object files that nothing references.
// Internal to src/; the PretrainedCfg helpers the files share are defined in registry.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "graft/registry.h"

namespace graft {

// The description of torchvision's ImageNet-1k tags, with or without a suffix (" (V1)").
inline constexpr const char* kTorchvisionIn1kWeights = "torchvision ImageNet-1k weights";

// torchvision's ImageNet-1k recipe: resize shorter side to 256, centre crop 224, bilinear.
PretrainedCfg torchvision_in1k(const std::string& tag, const std::string& source, const std::string& what);

// npm nsfwjs@4.4.0 (MIT, Infinite Red): TF.js layers models that scripts/fetch-weights unwraps and converts.
// Their preprocessing (nsfwjs infer): pixels / 255, bilinear resize with align_corners of the whole image.
PretrainedCfg nsfwjs_cfg(const std::string& model, int64_t size);

// torchvision's Kinetics-400 video weights (R3D_18_Weights.KINETICS400_V1 etc.): 16-frame clips of
// 112 x 112 with their own mean and std, 400 classes.
PretrainedCfg torchvision_kinetics400(const std::string& weights, const std::string& what);

// Each appends its architectures to `table`, every tag in place (the default first).
void register_resnet(std::vector<ModelEntry>& table);        // resnet18 .. resnet152 (resnet.cpp)
void register_vgg(std::vector<ModelEntry>& table);           // vgg16, vgg16_bn, vgg19, vgg19_bn (vgg.cpp)
void register_mobilenet_v2(std::vector<ModelEntry>& table);  // mobilenet_v2 (mobilenet_v2.cpp)
void register_efficientnet(std::vector<ModelEntry>& table);  // efficientnet_b0 (efficientnet.cpp)
void register_inception_v3(std::vector<ModelEntry>& table);  // inception_v3 (inception_v3.cpp)
void register_darknet(std::vector<ModelEntry>& table);       // darknet_tiny (darknet.cpp)
void register_mobilenet_v1(std::vector<ModelEntry>& table);  // mobilenet_v1_025 .. _100 (mobilenet_v1.cpp)
void register_video_resnet(std::vector<ModelEntry>& table);  // r3d_18, mc3_18, r2plus1d_18 (video_resnet.cpp)

}  // namespace graft
