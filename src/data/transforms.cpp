// Image transforms in plain C++ loops (no torch ops, so they are cheap and safe in loader threads).
// Geometry matches torchvision 0.14 on PIL images: Resize / RandomResizedCrop / CenterCrop with PIL's
// BILINEAR resampling (Pillow src/libImaging/Resample.c: a triangle filter whose support grows with the
// downscale factor, i.e. torchvision's antialias=True), computed in float and rounded once instead of
// Pillow's 22-bit fixed point with a rounded intermediate, so values agree to +-1 level. Colour jitter
// matches torchvision's tensor functional (_blend, rgb_to_grayscale weights 0.2989/0.587/0.114).
// Eval sizing follows timm's transforms_imagenet_eval: scale_size = floor(img_size / crop_pct).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/model.h"

namespace graft {
namespace {

// Uniform double in [0, 1) from 53 random bits: the same on every standard library, unlike
// std::uniform_real_distribution.
double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}
double uniform(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * uniform01(rng);
}
// Integer in [0, n), n > 0 (modulo bias is below 2^-40 for image-sized n).
int64_t random_below(std::mt19937_64& rng, int64_t n) {
  return static_cast<int64_t>(rng() % uint64_t(n));
}

constexpr double kPi = 3.14159265358979323846;

uint8_t to_u8(float value) {
  return static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, value)) + 0.5f);
}

// The taps of a 1-D resampling from [start, start + in_size) to out_size samples.
struct Taps {
  std::vector<int> first;      // first source index per output sample
  std::vector<int> count;      // number of taps per output sample
  std::vector<float> weights;  // max_taps per output sample, normalised to sum 1
  int max_taps = 0;
};

Taps triangle_taps(int start, int in_size, int out_size, bool antialias) {
  const double scale = double(in_size) / out_size;
  // Widening the triangle by the scale factor makes each output average the whole area it covers.
  const double filter_scale = antialias ? std::max(scale, 1.0) : 1.0;
  const double support = filter_scale;  // the triangle's half-width is 1 source pixel, times the scale
  Taps taps;
  taps.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(size_t(out_size) * taps.max_taps, 0.0f);
  std::vector<double> w(taps.max_taps);
  for (int i = 0; i < out_size; ++i) {
    const double center = start + (i + 0.5) * scale;
    const int lo = std::max(start, static_cast<int>(std::floor(center - support + 0.5)));
    const int hi = std::min(start + in_size, static_cast<int>(std::floor(center + support + 0.5)));
    const int n = std::min(hi - lo, taps.max_taps);
    double total = 0;
    for (int k = 0; k < n; ++k) {
      const double distance = std::abs((lo + k + 0.5 - center) / filter_scale);
      w[k] = distance < 1.0 ? 1.0 - distance : 0.0;
      total += w[k];
    }
    taps.first[i] = lo;
    taps.count[i] = n;
    for (int k = 0; k < n; ++k)
      taps.weights[size_t(i) * taps.max_taps + k] = float(total > 0 ? w[k] / total : 0);
  }
  return taps;
}

void check_box_inside(const Image& image, const CropBox& box) {
  if (box.width <= 0 || box.height <= 0 || box.left < 0 || box.top < 0 ||
      box.left + box.width > image.width || box.top + box.height > image.height) {
    throw Error("resize: box (left " + std::to_string(box.left) + ", top " + std::to_string(box.top) + ", " +
                std::to_string(box.width) + "x" + std::to_string(box.height) + ") is not inside the " +
                std::to_string(image.width) + "x" + std::to_string(image.height) + " image");
  }
}

float gray_level(const float* r, const float* g, const float* b, size_t i) {
  return 0.2989f * r[i] + 0.587f * g[i] + 0.114f * b[i];
}

}  // namespace

namespace {

// The pixels `window` (in output coordinates) of the resize of `box` to out_width x out_height: what
// resizing and then cropping gives, without computing the pixels the crop would drop.
Image resize_window(const Image& image, const CropBox& box, int out_width, int out_height,
                    const CropBox& window, bool antialias) {
  check_box_inside(image, box);
  if (out_width <= 0 || out_height <= 0) {
    throw Error("resize: output size " + std::to_string(out_width) + "x" + std::to_string(out_height) +
                " must be positive");
  }
  const Taps horizontal = triangle_taps(box.left, box.width, out_width, antialias);
  const Taps vertical = triangle_taps(box.top, box.height, out_height, antialias);
  const int x_end = window.left + window.width, y_end = window.top + window.height;

  // Horizontal pass into floats, (source rows, window.width, 3), over just the source rows the window's
  // output rows read.
  int row_first = vertical.first[window.top], row_end = row_first;
  for (int y = window.top; y < y_end; ++y) row_end = std::max(row_end, vertical.first[y] + vertical.count[y]);
  const size_t row_values = size_t(window.width) * 3;
  std::vector<float> rows(size_t(row_end - row_first) * row_values);
  for (int sy = row_first; sy < row_end; ++sy) {
    const uint8_t* src = &image.rgb[size_t(sy) * image.width * 3];
    float* dst = &rows[size_t(sy - row_first) * row_values];
    for (int x = window.left; x < x_end; ++x, dst += 3) {
      const float* w = &horizontal.weights[size_t(x) * horizontal.max_taps];
      const uint8_t* p = src + size_t(horizontal.first[x]) * 3;
      float r = 0, g = 0, b = 0;
      for (int k = 0; k < horizontal.count[x]; ++k, p += 3) {
        r += w[k] * p[0];
        g += w[k] * p[1];
        b += w[k] * p[2];
      }
      dst[0] = r, dst[1] = g, dst[2] = b;
    }
  }
  // Vertical pass, rounded once to 8 bits.
  Image out;
  out.width = window.width;
  out.height = window.height;
  out.rgb.resize(size_t(window.width) * window.height * 3);
  std::vector<float> accumulator(row_values);
  for (int y = window.top; y < y_end; ++y) {
    std::fill(accumulator.begin(), accumulator.end(), 0.0f);
    const float* w = &vertical.weights[size_t(y) * vertical.max_taps];
    for (int k = 0; k < vertical.count[y]; ++k) {
      const float* src = &rows[size_t(vertical.first[y] - row_first + k) * row_values];
      for (size_t i = 0; i < row_values; ++i) accumulator[i] += w[k] * src[i];
    }
    uint8_t* dst = &out.rgb[size_t(y - window.top) * row_values];
    for (size_t i = 0; i < row_values; ++i) dst[i] = to_u8(accumulator[i]);
  }
  return out;
}

// to_planar + normalize + planar_to_tensor in one pass, with the same float operations.
torch::Tensor normalized_tensor(const Image& image, const std::array<double, 3>& mean,
                                const std::array<double, 3>& std) {
  const size_t count = size_t(image.width) * image.height;
  auto tensor = torch::empty({3, image.height, image.width}, torch::kFloat32);
  float* out = tensor.data_ptr<float>();
  for (size_t c = 0; c < 3; ++c) {
    if (std[c] == 0) throw Error("normalize: std[" + std::to_string(c) + "] is 0");
    const float m = float(mean[c]), inv = float(1.0 / std[c]);
    const uint8_t* in = image.rgb.data() + c;
    float* plane = out + c * count;
    for (size_t i = 0; i < count; ++i) plane[i] = (static_cast<float>(in[i * 3]) / 255.0f - m) * inv;
  }
  return tensor;
}

}  // namespace

Image resize(const Image& image, const CropBox& box, int out_width, int out_height, bool antialias) {
  return resize_window(image, box, out_width, out_height, CropBox{0, 0, out_width, out_height}, antialias);
}

Image resize(const Image& image, int out_width, int out_height, bool antialias) {
  return resize(image, CropBox{0, 0, image.width, image.height}, out_width, out_height, antialias);
}

namespace {

// (width, height) of resize_shorter_side(image, shorter).
std::pair<int, int> shorter_side_size(const Image& image, int shorter) {
  if (shorter <= 0) throw Error("resize_shorter_side: size must be positive, got " + std::to_string(shorter));
  // torchvision _compute_resized_output_size: int(new_short * long / short), in double as Python does.
  const bool wide = image.width >= image.height;
  const int short_side = wide ? image.height : image.width;
  const int long_side = wide ? image.width : image.height;
  const int new_long = static_cast<int>(double(int64_t{shorter} * long_side) / short_side);
  return wide ? std::pair{new_long, shorter} : std::pair{shorter, new_long};
}

}  // namespace

Image resize_shorter_side(const Image& image, int shorter, bool antialias) {
  const auto [width, height] = shorter_side_size(image, shorter);
  return resize(image, width, height, antialias);
}

CropBox center_crop_box(int width, int height, int crop_width, int crop_height) {
  // torchvision center_crop: pad symmetrically (left gets the floor half) when the crop is larger,
  // else offset int(round((size - crop) / 2.0)) with Python's round-half-to-even (= std::nearbyint).
  auto offset = [](int size, int crop) {
    return crop > size ? -((crop - size) / 2) : static_cast<int>(std::nearbyint((size - crop) / 2.0));
  };
  return CropBox{offset(width, crop_width), offset(height, crop_height), crop_width, crop_height};
}

Image crop(const Image& image, const CropBox& box) {
  if (box.width <= 0 || box.height <= 0) throw Error("crop: box size must be positive");
  Image out;
  out.width = box.width;
  out.height = box.height;
  out.rgb.assign(size_t(box.width) * box.height * 3, 0);
  const int x0 = std::max(0, box.left), x1 = std::min(image.width, box.left + box.width);
  const int y0 = std::max(0, box.top), y1 = std::min(image.height, box.top + box.height);
  if (x0 >= x1) return out;
  for (int y = y0; y < y1; ++y) {
    std::memcpy(&out.rgb[(size_t(y - box.top) * box.width + (x0 - box.left)) * 3],
                &image.rgb[(size_t(y) * image.width + x0) * 3], size_t(x1 - x0) * 3);
  }
  return out;
}

Image center_crop(const Image& image, int crop_width, int crop_height) {
  return crop(image, center_crop_box(image.width, image.height, crop_width, crop_height));
}

CropBox random_resized_crop_box(int width, int height, std::mt19937_64& rng, double scale_min,
                                double scale_max, double ratio_min, double ratio_max) {
  // torchvision/transforms/transforms.py RandomResizedCrop.get_params (0.14).
  const double area = double(width) * height;
  const double log_ratio_min = std::log(ratio_min), log_ratio_max = std::log(ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(rng, scale_min, scale_max);
    const double aspect_ratio = std::exp(uniform(rng, log_ratio_min, log_ratio_max));
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect_ratio)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect_ratio)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int top = static_cast<int>(random_below(rng, height - h + 1));
      const int left = static_cast<int>(random_below(rng, width - w + 1));
      return CropBox{left, top, w, h};
    }
  }
  // Fallback: the central crop, clamped to the allowed aspect ratios.
  const double in_ratio = double(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_min) {
    h = static_cast<int>(std::nearbyint(w / ratio_min));
  } else if (in_ratio > ratio_max) {
    w = static_cast<int>(std::nearbyint(h * ratio_max));
  }
  return CropBox{(width - w) / 2, (height - h) / 2, w, h};
}

Image hflip(const Image& image) {
  Image out = image;
  for (int y = 0; y < image.height; ++y) {
    const uint8_t* src = &image.rgb[size_t(y) * image.width * 3];
    uint8_t* dst = &out.rgb[size_t(y) * image.width * 3];
    for (int x = 0; x < image.width; ++x)
      std::memcpy(dst + size_t(image.width - 1 - x) * 3, src + size_t(x) * 3, 3);
  }
  return out;
}

Image rotate(const Image& image, double degrees) {
  const double radians = degrees * kPi / 180.0;
  const double c = std::cos(radians), s = std::sin(radians);
  const double cx = image.width / 2.0, cy = image.height / 2.0;
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.rgb.assign(image.rgb.size(), 0);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      // Inverse map of a counter-clockwise rotation (y points down): output centre -> source position.
      const double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      const double sx = cx + dx * c - dy * s - 0.5;  // in pixel-index units
      const double sy = cy + dx * s + dy * c - 0.5;
      if (sx < -0.5 || sy < -0.5 || sx > image.width - 0.5 || sy > image.height - 0.5) continue;
      const double fx = std::clamp(sx, 0.0, image.width - 1.0), fy = std::clamp(sy, 0.0, image.height - 1.0);
      const int x0 = static_cast<int>(fx), y0 = static_cast<int>(fy);
      const int x1 = std::min(x0 + 1, image.width - 1), y1 = std::min(y0 + 1, image.height - 1);
      const double ax = fx - x0, ay = fy - y0;
      for (int ch = 0; ch < 3; ++ch) {
        auto at = [&](int px, int py) { return double(image.rgb[(size_t(py) * image.width + px) * 3 + ch]); };
        const double top = at(x0, y0) * (1 - ax) + at(x1, y0) * ax;
        const double bottom = at(x0, y1) * (1 - ax) + at(x1, y1) * ax;
        out.rgb[(size_t(y) * image.width + x) * 3 + ch] = to_u8(float(top * (1 - ay) + bottom * ay));
      }
    }
  }
  return out;
}

PlanarImage to_planar(const Image& image) {
  PlanarImage out;
  out.width = image.width;
  out.height = image.height;
  const size_t count = size_t(image.width) * image.height;
  out.data.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    // Division, as torchvision's to_tensor (div(255)) and TF.js (x.div(255)) do: multiplying by 1/255 is
    // off by an ulp for some values.
    for (size_t c = 0; c < 3; ++c)
      out.data[c * count + i] = static_cast<float>(image.rgb[i * 3 + c]) / 255.0f;
  }
  return out;
}

void adjust_brightness(PlanarImage& image, double factor) {
  for (float& v : image.data) v = std::clamp(float(v * factor), 0.0f, 1.0f);
}

void adjust_contrast(PlanarImage& image, double factor) {
  const size_t count = size_t(image.width) * image.height;
  if (count == 0) return;
  const float* r = image.data.data();
  double mean = 0;
  for (size_t i = 0; i < count; ++i) mean += gray_level(r, r + count, r + 2 * count, i);
  mean /= double(count);
  const float blend = float((1.0 - factor) * mean);
  for (float& v : image.data) v = std::clamp(float(factor) * v + blend, 0.0f, 1.0f);
}

void adjust_saturation(PlanarImage& image, double factor) {
  const size_t count = size_t(image.width) * image.height;
  float* r = image.data.data();
  float* g = r + count;
  float* b = g + count;
  const float f = float(factor);
  for (size_t i = 0; i < count; ++i) {
    const float gray = (1.0f - f) * gray_level(r, g, b, i);
    r[i] = std::clamp(f * r[i] + gray, 0.0f, 1.0f);
    g[i] = std::clamp(f * g[i] + gray, 0.0f, 1.0f);
    b[i] = std::clamp(f * b[i] + gray, 0.0f, 1.0f);
  }
}

void color_jitter(PlanarImage& image, double strength, std::mt19937_64& rng) {
  if (strength <= 0) return;
  // torchvision ColorJitter.get_params: a random order first, then one factor per adjustment.
  int order[3] = {0, 1, 2};
  for (int i = 2; i > 0; --i) std::swap(order[i], order[random_below(rng, i + 1)]);
  const double lo = std::max(0.0, 1.0 - strength), hi = 1.0 + strength;
  double factors[3];
  for (double& f : factors) f = uniform(rng, lo, hi);
  for (int op : order) {
    if (op == 0) adjust_brightness(image, factors[0]);
    if (op == 1) adjust_contrast(image, factors[1]);
    if (op == 2) adjust_saturation(image, factors[2]);
  }
}

void normalize(PlanarImage& image, const std::array<double, 3>& mean, const std::array<double, 3>& std) {
  const size_t count = size_t(image.width) * image.height;
  for (size_t c = 0; c < 3; ++c) {
    if (std[c] == 0) throw Error("normalize: std[" + std::to_string(c) + "] is 0");
    const float m = float(mean[c]), inv = float(1.0 / std[c]);
    float* p = image.data.data() + c * count;
    for (size_t i = 0; i < count; ++i) p[i] = (p[i] - m) * inv;
  }
}

torch::Tensor planar_to_tensor(const PlanarImage& image) {
  auto tensor = torch::empty({3, image.height, image.width}, torch::kFloat32);
  if (!image.data.empty())
    std::memcpy(tensor.data_ptr<float>(), image.data.data(), image.data.size() * sizeof(float));
  return tensor;
}

PlanarImage resize_align_corners(const PlanarImage& image, int out_width, int out_height) {
  if (image.width <= 0 || image.height <= 0 || out_width <= 0 || out_height <= 0) {
    throw Error("resize_align_corners: empty image or output (" + std::to_string(image.width) + "x" +
                std::to_string(image.height) + " -> " + std::to_string(out_width) + "x" +
                std::to_string(out_height) + ")");
  }
  // tfjs-backend-cpu ResizeBilinear: with align_corners the corner pixels map onto each other, scale =
  // (in - 1) / (out - 1); interpolate along x on the two rows, then along y.
  const auto scale = [](int in, int out) { return out > 1 ? double(in - 1) / double(out - 1) : double(in); };
  const double scale_y = scale(image.height, out_height), scale_x = scale(image.width, out_width);
  PlanarImage out;
  out.width = out_width;
  out.height = out_height;
  out.data.resize(size_t(out_width) * out_height * 3);
  const size_t in_plane = size_t(image.width) * image.height, out_plane = size_t(out_width) * out_height;
  for (int y = 0; y < out_height; ++y) {
    const double fy = scale_y * y;
    const int y0 = static_cast<int>(std::floor(fy));
    const int y1 = std::min(image.height - 1, static_cast<int>(std::ceil(fy)));
    const double wy = fy - y0;
    for (int x = 0; x < out_width; ++x) {
      const double fx = scale_x * x;
      const int x0 = static_cast<int>(std::floor(fx));
      const int x1 = std::min(image.width - 1, static_cast<int>(std::ceil(fx)));
      const double wx = fx - x0;
      for (size_t c = 0; c < 3; ++c) {
        const float* plane = image.data.data() + c * in_plane;
        const double top_left = plane[size_t(y0) * image.width + x0],
                     top_right = plane[size_t(y0) * image.width + x1];
        const double bottom_left = plane[size_t(y1) * image.width + x0];
        const double bottom_right = plane[size_t(y1) * image.width + x1];
        const double top = top_left + (top_right - top_left) * wx;
        const double bottom = bottom_left + (bottom_right - bottom_left) * wx;
        out.data[c * out_plane + size_t(y) * out_width + x] = static_cast<float>(top + (bottom - top) * wy);
      }
    }
  }
  return out;
}

int decode_min_side(const TransformConfig& config) {
  if (!config.dct_scaling) return 0;
  // TF.js-style preprocessing resizes the full decode; a DCT-scaled decode would not match it.
  if (config.align_corners && !config.train) return 0;
  if (config.train) {
    return static_cast<int>(std::ceil(config.size / std::sqrt(std::max(config.scale_min, 1e-3))));
  }
  return static_cast<int>(std::floor(config.size / config.crop_pct + 1e-9));
}

torch::Tensor transform_image(const Image& image, const TransformConfig& config, std::mt19937_64& rng) {
  if (config.size <= 0) throw Error("transform: size must be positive, got " + std::to_string(config.size));
  if (image.width <= 0 || image.height <= 0) throw Error("transform: empty image");
  const int size = static_cast<int>(config.size);
  if (config.align_corners && !config.train) {
    // nsfwjs / TF.js: pixels / 255, then the whole image resized (unless already size x size), no crop.
    PlanarImage planar = to_planar(image);
    if (image.width != size || image.height != size) planar = resize_align_corners(planar, size, size);
    normalize(planar, config.mean, config.std);
    return planar_to_tensor(planar);
  }
  Image out;
  if (config.train) {
    const CropBox box = random_resized_crop_box(image.width, image.height, rng, config.scale_min, 1.0);
    out = resize(image, box, size, size, config.antialias);
    if (config.hflip && uniform01(rng) < 0.5) out = hflip(out);
    if (config.rotation_degrees > 0)
      out = rotate(out, uniform(rng, -config.rotation_degrees, config.rotation_degrees));
  } else {
    if (!(config.crop_pct > 0 && config.crop_pct <= 1)) {
      throw Error("transform: crop_pct must be in (0, 1], got " + std::to_string(config.crop_pct));
    }
    // timm: scale_size = math.floor(img_size / crop_pct) (224 / 0.875 = 256); the epsilon keeps exact
    // quotients from flooring one below.
    const int scale_size = static_cast<int>(std::floor(config.size / config.crop_pct + 1e-9));
    const auto [resized_width, resized_height] = shorter_side_size(image, scale_size);
    const CropBox crop = center_crop_box(resized_width, resized_height, size, size);
    if (crop.left >= 0 && crop.top >= 0 && crop.left + size <= resized_width &&
        crop.top + size <= resized_height) {
      // Only the crop of the resized image: the same pixels as resize_shorter_side + center_crop.
      out = resize_window(image, CropBox{0, 0, image.width, image.height}, resized_width, resized_height,
                          crop, config.antialias);
    } else {
      out = center_crop(resize_shorter_side(image, scale_size, config.antialias), size, size);
    }
  }
  if (!(config.train && config.jitter > 0)) return normalized_tensor(out, config.mean, config.std);
  PlanarImage planar = to_planar(out);
  color_jitter(planar, config.jitter, rng);
  normalize(planar, config.mean, config.std);
  return planar_to_tensor(planar);
}

torch::Tensor load_and_transform(const std::string& path, const TransformConfig& config,
                                 std::mt19937_64& rng) {
  return transform_image(decode_image(path, decode_min_side(config)), config, rng);
}

Preprocessing Preprocessing::from_cfg(const PretrainedCfg& cfg) {
  Preprocessing p;
  // Images (C, H, W) and video (C, T, H, W) alike: the frame size is the last entry.
  p.size = cfg.input_size.size() == 3 || cfg.input_size.size() == 4 ? cfg.input_size.back() : 224;
  p.crop_pct = cfg.crop_pct;
  p.mean = cfg.mean;
  p.std = cfg.std;
  p.interpolation = cfg.interpolation;
  return p;
}

TransformConfig transform_for(const Preprocessing& preprocessing, bool train) {
  TransformConfig t;
  t.size = preprocessing.size;
  t.crop_pct = preprocessing.crop_pct;
  t.mean = preprocessing.mean;
  t.std = preprocessing.std;
  t.train = train;
  t.align_corners = preprocessing.interpolation == "bilinear-align-corners";
  return t;
}

}  // namespace graft
