// The one interface every image backbone implements (timm's: forward_features / forward_head /
// reset_classifier / num_features / default_cfg), plus the transfer-learning hooks graft adds on top:
// a replaceable head and a BatchNorm policy for frozen layers.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <array>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace graft {

class BackboneImpl;
class HeadImpl;
struct HeadSpec;

// How the weights of a registered tag were trained and must be fed (timm's pretrained_cfg,
// torchvision's Weights.meta + transforms).
struct PretrainedCfg {
  std::string tag;                                  // e.g. "tv_in1k"
  std::string source;                               // e.g. "hf-hub:timm/resnet50.tv_in1k"
  std::string file_format = "safetensors";          // format of the file at `source`
  std::vector<int64_t> input_size{3, 224, 224};     // (C, H, W); video weights: (C, T, H, W)
  std::array<double, 3> mean{0.485, 0.456, 0.406};  // per channel, on [0, 1] pixels
  std::array<double, 3> std{0.229, 0.224, 0.225};
  std::string interpolation = "bilinear";  // resize filter the weights were evaluated with
  double crop_pct = 0.875;                 // eval: resize shorter side to size / crop_pct, centre crop
  int64_t num_classes = 1000;
  std::string labels = "imagenet-1k";  // label set name (see labels.h)
  std::string license;                 // licence of the weights
  std::string description;             // one line: what these weights are
  // The build these weights need when it differs from the architecture's own (Keras' padding and
  // BatchNorm epsilon for a Keras port, say); empty: the registry entry's builder.
  std::function<std::shared_ptr<BackboneImpl>(int64_t num_classes)> build;
  std::string head;  // head spec the weights come with (nsfwjs: "avg,dense:256:relu,..."); empty: the
                     // architecture's own classifier
  // Weights graft fetches itself: a safetensors file (graft names) under cache_dir(), and the command
  // that puts it there. Empty when graft cannot fetch them.
  std::string cache_file;     // e.g. "nsfwjs-4.4.0/mobilenet_v2.safetensors"
  std::string fetch_command;  // e.g. "scripts/fetch-weights nsfwjs"
};

// Video weights take clips: their input_size has four entries, (C, T, H, W).
inline bool is_video_cfg(const PretrainedCfg& cfg) {
  return cfg.input_size.size() == 4;
}
// (H, W) of the input the weights take: the last two entries of input_size, image or video.
// Throws graft::Error when input_size has neither 3 nor 4 entries.
std::array<int64_t, 2> input_hw(const PretrainedCfg& cfg);
// A zero batch of one input as the weights take it, (1, C, H, W) or (1, C, T, H, W) for video, at
// `hw` where given (> 0) and at input_hw(cfg) otherwise: the probe of dry runs (summary, head sizing).
torch::Tensor example_input(const PretrainedCfg& cfg, std::array<int64_t, 2> hw = {0, 0});

// One named step of a forward pass. Backbones describe their forward as a list of steps so that the
// same list drives forward(), the Keras-like summary and layer-wise freezing.
struct ForwardStep {
  std::string name;  // module path whose parameters the step owns ("layer1.0"), or a label ("flatten")
  std::string type;  // layer type for the summary ("Bottleneck", "Conv2d")
  std::function<torch::Tensor(const torch::Tensor&)> fn;
};

torch::Tensor run_steps(const std::vector<ForwardStep>& steps, torch::Tensor x);

class BackboneImpl : public torch::nn::Module {
 public:
  explicit BackboneImpl(std::string arch) : arch_(std::move(arch)) {}

  // (N, 3, H, W) normalised pixels -> (N, num_features(), H', W') feature map; video backbones
  // (is_video_cfg) take (N, 3, T, H, W) clips and return (N, num_features(), T', H', W').
  torch::Tensor forward_features(const torch::Tensor& x) { return run_steps(feature_steps(), x); }
  // Feature map -> logits; with pre_logits, the vector the last classifier layer consumes.
  torch::Tensor forward_head(const torch::Tensor& features, bool pre_logits = false);
  torch::Tensor forward(const torch::Tensor& x) { return forward_head(forward_features(x)); }

  // Channels of the feature map that forward_features returns.
  virtual int64_t num_features() const = 0;
  // The feature extractor as ordered steps, finest granularity the summary should show.
  virtual std::vector<ForwardStep> feature_steps() = 0;
  // The reference head (pooling + classifier) as ordered steps; pre_logits stops before the last layer.
  virtual std::vector<ForwardStep> classifier_steps(bool pre_logits) = 0;
  // Name of the reference classifier submodule ("fc" for ResNet, "classifier" for VGG/MobileNetV2):
  // the part transfer learning replaces and strict loading may skip.
  virtual std::string classifier_name() const = 0;
  // Replace the last classifier layer with a fresh one of num_classes outputs (0: identity, the model
  // then returns pre-logits). Clears any custom head. Throws graft::Error for num_classes < 0.
  void reset_classifier(int64_t num_classes);
  // Number of outputs of forward(): the custom head's, else the reference classifier's.
  int64_t num_classes() const;

  // Replace the whole reference head by a head built from a spec ("avg,dropout:0.2,dense:10");
  // it is registered under classifier_name(), so its weights are saved as "fc.1.weight" etc.
  // input_hw is the input image size, needed when the spec flattens the feature map (a video
  // backbone's clip length is its default_cfg()'s).
  void set_head(const HeadSpec& spec, std::array<int64_t, 2> input_hw = {0, 0});
  bool has_custom_head() const { return head_ != nullptr; }
  std::shared_ptr<HeadImpl> custom_head() const { return head_; }

  // All steps, features then head, as forward() runs them.
  std::vector<ForwardStep> all_steps();

  // BatchNorm policy: a BatchNorm whose parameters are all frozen keeps using its running statistics
  // in train() (Keras' behaviour) unless allowed to train. Applied on every train() call.
  void set_frozen_bn_trains(bool trains) { frozen_bn_trains_ = trains; }
  bool frozen_bn_trains() const { return frozen_bn_trains_; }
  void train(bool on = true) override;

  // Parameters that stand for constants of the reference model rather than weights: Keras'
  // BatchNormalization(scale=False) has no gamma, and graft keeps that BatchNorm's weight at 1. A fixed
  // parameter has requires_grad false and keeps it whatever a freeze spec says (apply_freeze).
  bool is_fixed_parameter(const std::string& name) const { return fixed_parameters_.count(name) > 0; }

  const std::string& arch() const { return arch_; }
  const PretrainedCfg& default_cfg() const { return cfg_; }
  void set_default_cfg(PretrainedCfg cfg) { cfg_ = std::move(cfg); }

 protected:
  // Marks the parameter `name` (as named_parameters() names it) fixed and sets its requires_grad false.
  // Throws graft::Error when the model has no such parameter.
  void fix_parameter(const std::string& name);
  // Drops the custom head and puts the reference classifier back under classifier_name().
  void clear_custom_head();
  // The architecture's part of reset_classifier, called with the custom head already gone and
  // num_classes >= 0: a fresh last layer (0: an Identity) on the model's device and dtype.
  virtual void replace_classifier(int64_t num_classes) = 0;
  // Outputs of the reference classifier (num_features() when it is an Identity).
  virtual int64_t classifier_outputs() const = 0;

 private:
  std::string arch_;
  PretrainedCfg cfg_;
  std::shared_ptr<HeadImpl> head_;
  std::shared_ptr<torch::nn::Module> reference_classifier_;  // what the custom head displaced
  bool frozen_bn_trains_ = false;
  std::set<std::string> fixed_parameters_;
};

using Backbone = std::shared_ptr<BackboneImpl>;

// Module path of the part transfer learning trains anew: the custom head (classifier_name()), or else
// the last classifier layer ("fc", "classifier.6") when it holds weights; "" when there is none.
std::string head_module_name(BackboneImpl& model);

// Total number of elements over parameters whose name is `prefix` or starts with `prefix.`
// (all parameters when prefix is empty).
int64_t count_parameters(const torch::nn::Module& module, const std::string& prefix = "",
                         bool trainable_only = false);

}  // namespace graft
