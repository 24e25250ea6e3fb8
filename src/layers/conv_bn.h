// A convolution and the BatchNorm after it, folded into one convolution where that is exact.
//
// In eval mode a BatchNorm is a per-channel affine map, so (what torch.jit.freeze's conv-bn folding and
// torch.fx's fuse() do, Jacob et al. 2018 §3.2):
//
//   bn(conv(x, W, b)) = conv(x, W * s, (b - mean) * s + beta),   s = gamma / sqrt(var + eps)
//
// one convolution and no extra pass over the activations. That holds only while the BatchNorm uses its
// running statistics and nothing trains the pair, so conv_bn() checks both on every call and otherwise
// runs the two layers as they are. Folding is on inside a BatchNormFolding scope; the scope also keeps
// the folded weights in channels-last memory, so the convolutions run oneDNN's NHWC kernels and every
// later op keeps that layout (2x Python's default NCHW path on CPU for ResNet-50; bench/RESULTS.md).
#pragma once
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

namespace graft {

// Folding scope: per thread and nestable (the innermost scope serves). It caches the folded weights;
// an entry is rebuilt when a tensor it came from was replaced or updated in place (version counter), so
// a scope may span a whole training run in which some layers train and others stay frozen.
class BatchNormFolding {
 public:
  BatchNormFolding();
  ~BatchNormFolding();
  BatchNormFolding(const BatchNormFolding&) = delete;
  BatchNormFolding& operator=(const BatchNormFolding&) = delete;

  // The innermost scope on this thread, or null (also while folding is switched off).
  static BatchNormFolding* active();
  // Process-wide switch, on by default: off makes every scope inactive (benchmarks, tests).
  static void set_enabled(bool enabled);
  static bool enabled();

  struct Folded {
    torch::Tensor weight, bias;
    std::vector<torch::Tensor> sources;  // the tensors folded, held so identity checks stay meaningful
    std::vector<uint32_t> versions;      // their version counters at folding time
  };
  // The folded (weight, bias) of the pair, from the cache when still current.
  const Folded& fold(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn);
  size_t size() const { return cache_.size(); }

 private:
  BatchNormFolding* outer_;
  std::unordered_map<const void*, Folded> cache_;
};

// True when bn(conv(x)) may run as one folded convolution: the BatchNorm is in eval mode with running
// statistics, no tensor of the pair requires a gradient, the padding is explicit zeros, and the
// convolution has no LoRA branch outside its weight (layers/lora.h).
bool can_fold(const torch::nn::Conv2dImpl& conv, const torch::nn::BatchNorm2dImpl& bn);

// conv(x) plus the convolution's LoRA branch when it has one (layers/lora.h). `conv` must be exactly a
// Conv2d, as for conv_bn.
torch::Tensor conv2d(torch::nn::Conv2dImpl& conv, const torch::Tensor& x);

// bn(conv(x)); one folded convolution inside an active BatchNormFolding scope when can_fold(). `conv` must
// be exactly a Conv2d (graft::Error otherwise): Conv2dImpl::forward is not virtual.
torch::Tensor conv_bn(torch::nn::Conv2dImpl& conv, torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x);
// A Sequential that starts with Conv2d, BatchNorm2d (ResNet's "downsample", torchvision's
// Conv2dNormActivation): those two through conv_bn(), then the rest in order. Any other Sequential runs
// as it is.
torch::Tensor conv_bn_sequential(torch::nn::SequentialImpl& seq, torch::Tensor x);

// For step lists that show the convolution and its BatchNorm as two steps (the summary's rows): the
// convolution's step runs the folded pair when folding applies, and the BatchNorm's step then passes
// its input through. Both decide from the same state, so exactly one of them applies the BatchNorm.
using StepFn = std::function<torch::Tensor(const torch::Tensor&)>;
std::pair<StepFn, StepFn> conv_bn_steps(std::shared_ptr<torch::nn::Conv2dImpl> conv,
                                        std::shared_ptr<torch::nn::BatchNorm2dImpl> bn);

}  // namespace graft
