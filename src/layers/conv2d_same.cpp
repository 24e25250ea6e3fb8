// TF "same" padding (see conv2d_same.h), after timm 0.9 timm/layers/padding.py and conv2d_same.py, and
// TensorFlow's GetWindowedOutputSizeVerbose (tensorflow/core/framework/kernel_shape_util.cc).
#include "layers/conv2d_same.h"

#include <torch/nn/functional/padding.h>

#include <limits>
#include <ostream>

#include "graft/errors.h"

namespace graft {

namespace F = torch::nn::functional;

std::pair<int64_t, int64_t> same_padding(int64_t in, int64_t kernel, int64_t stride, int64_t dilation) {
  if (in < 0 || kernel < 1 || stride < 1 || dilation < 1) {
    throw Error("same_padding: need in >= 0 and kernel, stride, dilation >= 1, got in=" + std::to_string(in) +
                " kernel=" + std::to_string(kernel) + " stride=" + std::to_string(stride) +
                " dilation=" + std::to_string(dilation));
  }
  const int64_t out = (in + stride - 1) / stride;  // ceil(in / stride)
  const int64_t total = std::max<int64_t>((out - 1) * stride + (kernel - 1) * dilation + 1 - in, 0);
  return {total / 2, total - total / 2};
}

namespace {

// {left, right, top, bottom}, the order F::pad wants for the last two dimensions.
std::array<int64_t, 4> same_pads(const torch::Tensor& x, std::array<int64_t, 2> kernel,
                                 std::array<int64_t, 2> stride, std::array<int64_t, 2> dilation) {
  if (x.dim() != 4) {
    throw Error("TF same padding: expected an (N, C, H, W) input, got shape " + shape_str(x.sizes().vec()));
  }
  const auto [top, bottom] = same_padding(x.size(2), kernel[0], stride[0], dilation[0]);
  const auto [left, right] = same_padding(x.size(3), kernel[1], stride[1], dilation[1]);
  return {left, right, top, bottom};
}

bool any_padding(const std::array<int64_t, 4>& pads) {
  return pads[0] != 0 || pads[1] != 0 || pads[2] != 0 || pads[3] != 0;
}

torch::Tensor pad_with(const torch::Tensor& x, const std::array<int64_t, 4>& pads, double value) {
  if (!any_padding(pads)) return x;
  return F::pad(x,
                F::PadFuncOptions({pads[0], pads[1], pads[2], pads[3]}).mode(torch::kConstant).value(value));
}

}  // namespace

torch::Tensor pad_same(const torch::Tensor& x, std::array<int64_t, 2> kernel, std::array<int64_t, 2> stride,
                       std::array<int64_t, 2> dilation, double value) {
  return pad_with(x, same_pads(x, kernel, stride, dilation), value);
}

torch::Tensor max_pool2d_same(const torch::Tensor& x, std::array<int64_t, 2> kernel,
                              std::array<int64_t, 2> stride) {
  const auto pads = same_pads(x, kernel, stride, {1, 1});
  const torch::Tensor padded = pad_with(x, pads, -std::numeric_limits<double>::infinity());
  return torch::max_pool2d(padded, {kernel[0], kernel[1]}, {stride[0], stride[1]});
}

torch::Tensor avg_pool2d_same(const torch::Tensor& x, std::array<int64_t, 2> kernel,
                              std::array<int64_t, 2> stride) {
  const auto pads = same_pads(x, kernel, stride, {1, 1});
  const torch::Tensor sums =
      torch::avg_pool2d(pad_with(x, pads, 0.0), {kernel[0], kernel[1]}, {stride[0], stride[1]});
  if (!any_padding(pads)) return sums;
  // Fraction of each window that is real input: (1, 1, H', W'), broadcast over N and C.
  const torch::Tensor ones = torch::ones({1, 1, x.size(2), x.size(3)}, x.options());
  const torch::Tensor real =
      torch::avg_pool2d(pad_with(ones, pads, 0.0), {kernel[0], kernel[1]}, {stride[0], stride[1]});
  return sums / real;
}

Conv2dSameImpl::Conv2dSameImpl(torch::nn::Conv2dOptions options)
    : torch::nn::Conv2dImpl(options.padding(0)) {}

torch::Tensor Conv2dSameImpl::forward(const torch::Tensor& x) {
  const auto& kernel = *options.kernel_size();
  const auto& stride = *options.stride();
  const auto& dilation = *options.dilation();
  const auto pads = same_pads(x, {kernel[0], kernel[1]}, {stride[0], stride[1]}, {dilation[0], dilation[1]});
  if (pads[0] == pads[1] && pads[2] == pads[3]) {
    // Symmetric: the convolution's own zero padding gives the same result without copying the input.
    return torch::conv2d(x, weight, bias, options.stride(), {pads[2], pads[0]}, options.dilation(),
                         options.groups());
  }
  const int64_t no_padding[] = {0, 0};
  return torch::conv2d(pad_with(x, pads, 0.0), weight, bias, options.stride(), no_padding, options.dilation(),
                       options.groups());
}

std::shared_ptr<torch::nn::Module> Conv2dSameImpl::clone(const c10::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  auto copy = std::make_shared<Conv2dSameImpl>(
      torch::nn::Conv2dOptions(options.in_channels(), options.out_channels(), options.kernel_size())
          .stride(options.stride())
          .dilation(options.dilation())
          .groups(options.groups())
          .bias(options.bias()));
  const auto copy_tensor = [&](const torch::Tensor& from, torch::Tensor& to) {
    if (!from.defined()) return;
    to.set_data(device && from.device() != *device ? from.to(*device) : from.clone());
    to.set_requires_grad(from.requires_grad());
  };
  copy_tensor(weight, copy->weight);
  copy_tensor(bias, copy->bias);
  copy->train(is_training());
  return copy;
}

void Conv2dSameImpl::pretty_print(std::ostream& stream) const {
  const auto& kernel = *options.kernel_size();
  const auto& stride = *options.stride();
  stream << "graft::Conv2dSame(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=[" << kernel[0] << ", " << kernel[1] << "], stride=[" << stride[0] << ", "
         << stride[1] << "], padding=same";
  if (options.groups() != 1) stream << ", groups=" << options.groups();
  if (!options.bias()) stream << ", bias=false";
  stream << ")";
}

}  // namespace graft
