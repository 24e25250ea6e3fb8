// TensorFlow's "same" padding in one place, as timm's timm/layers/padding.py (get_same_padding, pad_same)
// and timm/layers/conv2d_same.py (Conv2dSame) do it: the output has ceil(in / stride) cells and the
// padding may be asymmetric, the extra cell going to the bottom / right. PyTorch's own padding is
// symmetric, so a TF-trained convolution with stride 2 on an even input reads a window shifted by one
// pixel unless padded this way.
//
//   pad_total  = max((ceil(in / s) - 1) * s + (k - 1) * d + 1 - in, 0)
//   pad_before = pad_total / 2,  pad_after = pad_total - pad_before
//
// Pooling follows Keras: MaxPooling2D(padding="same") never picks a padded cell (padded with -inf) and
// AveragePooling2D(padding="same") divides by the number of real cells in each window (padding excluded).
#pragma once
#include <torch/nn/modules/conv.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <utility>

namespace graft {

// (before, after) padding of one spatial dimension for TF "same".
std::pair<int64_t, int64_t> same_padding(int64_t in, int64_t kernel, int64_t stride, int64_t dilation = 1);

// Pads the last two dimensions of x (N, C, H, W) for TF "same" with `value`; kernel/stride/dilation are
// (H, W). Returns x itself when nothing needs padding.
torch::Tensor pad_same(const torch::Tensor& x, std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride,
                       std::array<int64_t, 2> dilation = {1, 1}, double value = 0.0);

// Keras MaxPooling2D(pool_size=kernel, strides=stride, padding="same"): (N, C, H, W) -> (N, C, ceil(H/s),
// ceil(W/s)). Padded cells are -inf, so they never win.
torch::Tensor max_pool2d_same(const torch::Tensor& x, std::array<int64_t, 2> kernel,
                              std::array<int64_t, 2> stride);

// Keras AveragePooling2D(padding="same"): the mean over the window's cells that lie inside the input,
// i.e. padded cells are excluded from both sum and count (TF's behaviour; count_include_pad=False).
torch::Tensor avg_pool2d_same(const torch::Tensor& x, std::array<int64_t, 2> kernel,
                              std::array<int64_t, 2> stride);

// A Conv2d whose padding is TF "same", computed from each input's size (timm's Conv2dSame). It is a
// torch::nn::Conv2dImpl, so parameters are named "weight" / "bias" and code that initialises or inspects
// Conv2d layers treats it as one; options.padding is ignored (forced to 0). When the padding comes out
// symmetric (stride 1, odd kernel) the convolution pads by itself, without a copy of the input.
class Conv2dSameImpl : public torch::nn::Conv2dImpl {
 public:
  explicit Conv2dSameImpl(torch::nn::Conv2dOptions options);
  Conv2dSameImpl(int64_t in_channels, int64_t out_channels, int64_t kernel_size)
      : Conv2dSameImpl(torch::nn::Conv2dOptions(in_channels, out_channels, kernel_size)) {}

  torch::Tensor forward(const torch::Tensor& x);  // (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s))
  // Cloneable<Conv2dImpl>::clone would slice the copy down to a plain (symmetric) Conv2d.
  std::shared_ptr<torch::nn::Module> clone(
      const c10::optional<torch::Device>& device = c10::nullopt) const override;
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(Conv2dSame);

}  // namespace graft
