// The image data pipeline: decoding (real JPEGs against the TF.js-decoded references, PNG/JPEG variants
// written here with libpng and TurboJPEG, corrupt and hostile files), transforms with hand-computed
// values, image folders on cats_vs_dogs_small, IDX files on Debian's Fashion-MNIST, and the loader's
// determinism, skipping and shutdown.
#include <gtest/gtest.h>
#include <png.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csetjmp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <thread>

#include "graft/data.h"
#include "graft/errors.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

const std::string kShared = GRAFT_SHARED_DIR;
const std::string kCatsDogs = kShared + "/data/cats_vs_dogs_small";
const std::string kReferenceImages = kShared + "/weights/reference_images";

// ------------------------------------------------------------------------------------------- helpers

// A fresh folder under the system temp dir, removed afterwards.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("graft_test_data_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& relative) const {
    const fs::path p = path_ / relative;
    fs::create_directories(p.parent_path());
    return p.string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

double mean_abs_diff(const Image& a, const Image& b, int* max_diff = nullptr) {
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  if (a.rgb.size() != b.rgb.size() || a.rgb.empty()) return 1e9;
  double total = 0;
  int worst = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) {
    const int d = std::abs(int(a.rgb[i]) - int(b.rgb[i]));
    total += d;
    worst = std::max(worst, d);
  }
  if (max_diff) *max_diff = worst;
  return total / double(a.rgb.size());
}

Image solid(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  Image image{width, height, {}};
  for (int i = 0; i < width * height; ++i) image.rgb.insert(image.rgb.end(), {r, g, b});
  return image;
}

// A gray image from row-major values.
Image gray(int width, int height, const std::vector<uint8_t>& values) {
  Image image{width, height, {}};
  for (uint8_t v : values) image.rgb.insert(image.rgb.end(), {v, v, v});
  return image;
}

std::vector<int> red_channel(const Image& image) {
  std::vector<int> out;
  for (size_t i = 0; i < image.rgb.size(); i += 3) out.push_back(image.rgb[i]);
  return out;
}

std::vector<uint8_t> encode_jpeg(const std::vector<uint8_t>& pixels, int width, int height, int pixel_format,
                                 int subsamp, int quality) {
  tjhandle tj = tjInitCompress();
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  const int rc =
      tjCompress2(tj, pixels.data(), width, 0, height, pixel_format, &buffer, &size, subsamp, quality, 0);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(tj);
  std::vector<uint8_t> out(buffer, buffer + (rc == 0 ? size : 0));
  tjFree(buffer);
  tjDestroy(tj);
  return out;
}

// PNG writing with libpng's classic API (setjmp kept in a frame with trivial locals only).
struct PngSpec {
  int width = 0, height = 0, color_type = PNG_COLOR_TYPE_RGB, bit_depth = 8;
  bool interlaced = false;
  std::vector<png_color> palette;
  std::vector<uint8_t> trans;  // palette alpha
  std::vector<uint8_t> data;   // rows as PNG stores them (16-bit big-endian, sub-byte packed)
};

void png_append(png_structp png, png_bytep data, size_t length) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

bool png_write_all(png_structp png, png_infop info, const PngSpec* spec, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, spec->width, spec->height, spec->bit_depth, spec->color_type,
               spec->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!spec->palette.empty()) png_set_PLTE(png, info, spec->palette.data(), int(spec->palette.size()));
  if (!spec->trans.empty()) png_set_tRNS(png, info, spec->trans.data(), int(spec->trans.size()), nullptr);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

std::vector<uint8_t> encode_png(const PngSpec& spec) {
  std::vector<uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &out, png_append, nullptr);
  const size_t row_bytes = spec.data.size() / size_t(spec.height);
  std::vector<png_bytep> rows(spec.height);
  for (int y = 0; y < spec.height; ++y) rows[y] = const_cast<png_bytep>(spec.data.data()) + y * row_bytes;
  const bool ok = png_write_all(png, info, &spec, rows.data());
  png_destroy_write_struct(&png, &info);
  EXPECT_TRUE(ok) << "libpng could not write the test PNG";
  return out;
}

// Expects a FormatError whose message names `name` (and contains `fragment`).
template <typename F>
void expect_format_error(F&& action, const std::string& name, const std::string& fragment = "") {
  try {
    action();
    ADD_FAILURE() << "no FormatError for " << name;
  } catch (const FormatError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(name), std::string::npos) << "message does not name the file: " << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << message;
    EXPECT_EQ(e.file(), name);
  }
}

// ------------------------------------------------------------------------------------------ decoding

TEST(DecodeJpeg, MatchesTfjsDecodedReferences) {
  // jpeg-js and libjpeg-turbo upsample chroma and run the IDCT differently: the README measured PIL
  // (libjpeg-turbo) against jpeg-js at mean 1.17 levels, max 33 on these files.
  for (const char* name : {"cat_test.1", "cat_test.2", "dog_test.4", "dog_test.5"}) {
    const Image ours = decode_image(kReferenceImages + "/" + name + ".jpg");
    const Image reference = decode_image(kReferenceImages + "/" + name + ".jsdecoded.png");
    ASSERT_EQ(ours.width, 100);
    ASSERT_EQ(ours.height, 100);
    int worst = 0;
    const double mean = mean_abs_diff(ours, reference, &worst);
    std::printf(
        "[ figure   ] %s.jpg: graft (libjpeg-turbo) vs jpeg-js decode: mean |diff| %.3f levels, max %d\n",
        name, mean, worst);
    EXPECT_LT(mean, 2.0) << name;
    EXPECT_LE(worst, 48) << name;
  }
}

TEST(DecodeJpeg, EveryCatsVsDogsImageDecodes) {
  const auto start = std::chrono::steady_clock::now();
  size_t count = 0;
  for (const auto& entry : fs::recursive_directory_iterator(kCatsDogs)) {
    if (entry.path().extension() != ".jpg") continue;
    const Image image = decode_image(entry.path().string());
    EXPECT_EQ(image.width, 100) << entry.path();
    EXPECT_EQ(image.height, 100) << entry.path();
    EXPECT_EQ(image.rgb.size(), 100u * 100u * 3u);
    ++count;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ figure   ] decoded %zu JPEGs in %.3f s\n", count, seconds);
  EXPECT_EQ(count, 800u);
}

TEST(DecodeJpeg, DctScalingPicksTheSmallestScaleAboveMinSide) {
  const std::string path = kCatsDogs + "/test/cats/cat_test.1.jpg";
  const std::vector<std::pair<int, int>> cases = {{0, 100}, {50, 50}, {26, 50},  {25, 25},
                                                  {13, 13}, {1, 13},  {51, 100}, {500, 100}};
  for (const auto& [min_side, expected] : cases) {
    const Image image = decode_image(path, min_side);
    EXPECT_EQ(image.width, expected) << "min_side " << min_side;
    EXPECT_EQ(image.height, expected) << "min_side " << min_side;
  }
  // The half-scale decode is the image, not garbage: close to an antialiased resize of the full decode.
  const Image half = decode_image(path, 50);
  const Image resized = resize(decode_image(path), 50, 50);
  const double diff = mean_abs_diff(half, resized);
  std::printf("[ figure   ] 1/2 DCT-scaled decode vs antialiased resize: mean |diff| %.3f\n", diff);
  EXPECT_LT(diff, 4.0);
}

TEST(DecodeJpeg, GrayscaleBecomesRgb) {
  std::vector<uint8_t> values(16 * 16);
  for (int i = 0; i < 256; ++i) values[i] = uint8_t(40 + (i % 16) * 10);  // horizontal ramp
  TempDir dir("gray_jpeg");
  const std::string path = dir.file("gray.jpg");
  write_bytes(path, encode_jpeg(values, 16, 16, TJPF_GRAY, TJSAMP_GRAY, 100));
  const Image image = decode_image(path);
  ASSERT_EQ(image.width, 16);
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(image.rgb[i * 3], image.rgb[i * 3 + 1]);
    EXPECT_EQ(image.rgb[i * 3], image.rgb[i * 3 + 2]);
    EXPECT_NEAR(image.rgb[i * 3], values[i], 2) << "pixel " << i;
  }
}

TEST(DecodeJpeg, AdobeCmykBecomesRgb) {
  // Four 8x8 quadrants of flat ink, stored Adobe-style (inverted: 255 = no ink) as Photoshop writes them;
  // TurboJPEG compresses CMYK as YCCK with an Adobe marker.
  struct Ink {
    uint8_t c, m, y, k;
    uint8_t r, g, b;  // (255 - ink) * (255 - K) / 255
  };
  const Ink inks[4] = {{0, 255, 255, 0, 255, 0, 0},
                       {255, 0, 255, 0, 0, 255, 0},
                       {0, 0, 0, 128, 127, 127, 127},
                       {51, 102, 153, 0, 204, 153, 102}};
  std::vector<uint8_t> cmyk(16 * 16 * 4);
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 16; ++x) {
      const Ink& ink = inks[(y / 8) * 2 + x / 8];
      uint8_t* p = &cmyk[(y * 16 + x) * 4];
      p[0] = 255 - ink.c, p[1] = 255 - ink.m, p[2] = 255 - ink.y, p[3] = 255 - ink.k;
    }
  }
  const std::vector<uint8_t> jpeg = encode_jpeg(cmyk, 16, 16, TJPF_CMYK, TJSAMP_444, 100);
  tjhandle tj = tjInitDecompress();
  int w = 0, h = 0, subsamp = 0, colorspace = -1;
  ASSERT_EQ(tjDecompressHeader3(tj, jpeg.data(), jpeg.size(), &w, &h, &subsamp, &colorspace), 0);
  tjDestroy(tj);
  EXPECT_EQ(colorspace, TJCS_YCCK);
  const Image image = decode_image_memory(jpeg, "cmyk.jpg");
  for (int q = 0; q < 4; ++q) {
    const int x = (q % 2) * 8 + 4, y = (q / 2) * 8 + 4;
    const uint8_t* p = &image.rgb[(y * 16 + x) * 3];
    EXPECT_NEAR(p[0], inks[q].r, 3) << "quadrant " << q;
    EXPECT_NEAR(p[1], inks[q].g, 3) << "quadrant " << q;
    EXPECT_NEAR(p[2], inks[q].b, 3) << "quadrant " << q;
  }
}

TEST(DecodePng, GrayAndGrayAlpha) {
  PngSpec spec;
  spec.width = 3, spec.height = 2, spec.color_type = PNG_COLOR_TYPE_GRAY;
  spec.data = {0, 100, 255, 7, 8, 9};
  Image image = decode_image_memory(encode_png(spec), "gray.png");
  EXPECT_EQ(red_channel(image), (std::vector<int>{0, 100, 255, 7, 8, 9}));
  EXPECT_EQ(image.rgb[3 * 1 + 1], 100);
  EXPECT_EQ(image.rgb[3 * 1 + 2], 100);

  spec.color_type = PNG_COLOR_TYPE_GRAY_ALPHA;
  spec.data = {0, 255, 100, 0, 255, 128, 7, 1, 8, 2, 9, 3};  // alpha dropped, not composited
  image = decode_image_memory(encode_png(spec), "gray_alpha.png");
  EXPECT_EQ(red_channel(image), (std::vector<int>{0, 100, 255, 7, 8, 9}));
  EXPECT_EQ(image.rgb[3 * 5 + 2], 9);
}

TEST(DecodePng, OneBitGrayExpands) {
  PngSpec spec;
  spec.width = 8, spec.height = 1, spec.color_type = PNG_COLOR_TYPE_GRAY, spec.bit_depth = 1;
  spec.data = {0b10110001};
  const Image image = decode_image_memory(encode_png(spec), "bits.png");
  EXPECT_EQ(red_channel(image), (std::vector<int>{255, 0, 255, 255, 0, 0, 0, 255}));
}

TEST(DecodePng, PaletteWithTransparency) {
  PngSpec spec;
  spec.width = 4, spec.height = 1, spec.color_type = PNG_COLOR_TYPE_PALETTE, spec.bit_depth = 2;
  spec.palette = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};
  spec.trans = {255, 0, 128, 255};  // libpng expands this to RGBA; graft drops the alpha
  spec.data = {0b00011011};         // indices 0 1 2 3
  const Image image = decode_image_memory(encode_png(spec), "palette.png");
  EXPECT_EQ(image.rgb, (std::vector<uint8_t>{255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30}));
}

TEST(DecodePng, RgbaDropsAlpha) {
  PngSpec spec;
  spec.width = 2, spec.height = 1, spec.color_type = PNG_COLOR_TYPE_RGBA;
  spec.data = {10, 20, 30, 0, 200, 150, 100, 77};
  const Image image = decode_image_memory(encode_png(spec), "rgba.png");
  EXPECT_EQ(image.rgb, (std::vector<uint8_t>{10, 20, 30, 200, 150, 100}));
}

TEST(DecodePng, SixteenBitKeepsTheHighByte) {
  PngSpec spec;
  spec.width = 2, spec.height = 1, spec.color_type = PNG_COLOR_TYPE_RGB, spec.bit_depth = 16;
  spec.data = {0x12, 0xAB, 0xFF, 0xFF, 0x00, 0x80, 0x7F, 0xFF, 0x80, 0x00, 0x01, 0x01};
  const Image image = decode_image_memory(encode_png(spec), "sixteen.png");
  EXPECT_EQ(image.rgb, (std::vector<uint8_t>{0x12, 0xFF, 0x00, 0x7F, 0x80, 0x01}));
}

TEST(DecodePng, InterlacedMatchesItsPixels) {
  PngSpec spec;
  spec.width = 13, spec.height = 9, spec.interlaced = true;
  std::mt19937_64 rng(1);
  for (int i = 0; i < 13 * 9 * 3; ++i) spec.data.push_back(uint8_t(rng()));
  const Image image = decode_image_memory(encode_png(spec), "adam7.png");
  EXPECT_EQ(image.width, 13);
  EXPECT_EQ(image.height, 9);
  EXPECT_EQ(image.rgb, spec.data);
}

TEST(DecodeErrors, FormatIsFoundFromBytesNotName) {
  TempDir dir("magic");
  PngSpec spec;
  spec.width = 1, spec.height = 1, spec.data = {1, 2, 3};
  const std::string png_named_jpg = dir.file("really_a_png.jpg");
  write_bytes(png_named_jpg, encode_png(spec));
  EXPECT_EQ(decode_image(png_named_jpg).rgb, (std::vector<uint8_t>{1, 2, 3}));

  const std::string text = dir.file("notes.jpg");
  std::ofstream(text) << "this is not a picture\n";
  expect_format_error([&] { decode_image(text); }, text, "not a JPEG or PNG");
  const std::string empty = dir.file("empty.png");
  std::ofstream(empty).close();
  expect_format_error([&] { decode_image(empty); }, empty, "empty");
  const std::string gif = dir.file("anim.png");
  std::ofstream(gif) << "GIF89a....";
  expect_format_error([&] { decode_image(gif); }, gif, "GIF");
  EXPECT_THROW(decode_image(dir.file("missing.jpg")), Error);
}

TEST(DecodeErrors, TruncatedJpegAndPng) {
  TempDir dir("truncated");
  std::vector<uint8_t> jpeg = read_bytes(kCatsDogs + "/test/cats/cat_test.1.jpg");
  jpeg.resize(jpeg.size() / 2);
  const std::string jpeg_path = dir.file("half.jpg");
  write_bytes(jpeg_path, jpeg);
  expect_format_error([&] { decode_image(jpeg_path); }, jpeg_path, "JPEG");

  PngSpec spec;
  spec.width = 64, spec.height = 64;
  std::mt19937_64 rng(2);
  for (int i = 0; i < 64 * 64 * 3; ++i) spec.data.push_back(uint8_t(rng()));  // incompressible
  std::vector<uint8_t> png = encode_png(spec);
  png.resize(png.size() / 2);
  const std::string png_path = dir.file("half.png");
  write_bytes(png_path, png);
  expect_format_error([&] { decode_image(png_path); }, png_path, "PNG");
}

TEST(DecodeErrors, DecompressionBombsAreRefusedFromTheHeader) {
  TempDir dir("bombs");
  // PNG: a real 1x1 file whose IHDR says 100000 x 100000 (CRC fixed so libpng accepts the chunk).
  PngSpec spec;
  spec.width = 1, spec.height = 1, spec.data = {0, 0, 0};
  std::vector<uint8_t> png = encode_png(spec);
  ASSERT_EQ(std::memcmp(&png[12], "IHDR", 4), 0);
  for (int offset : {16, 20}) {
    const uint32_t v = 100000;
    png[offset] = uint8_t(v >> 24), png[offset + 1] = uint8_t(v >> 16), png[offset + 2] = uint8_t(v >> 8),
    png[offset + 3] = uint8_t(v);
  }
  const uint32_t crc = uint32_t(crc32(crc32(0, nullptr, 0), &png[12], 17));
  png[29] = uint8_t(crc >> 24), png[30] = uint8_t(crc >> 16), png[31] = uint8_t(crc >> 8),
  png[32] = uint8_t(crc);
  const std::string png_path = dir.file("bomb.png");
  write_bytes(png_path, png);
  expect_format_error([&] { decode_image(png_path); }, png_path, "100000x100000");

  // JPEG: SOF0 patched to 60000 x 60000 (JPEG cannot say more than 65535).
  std::vector<uint8_t> jpeg =
      encode_jpeg(std::vector<uint8_t>(16 * 16 * 3, 128), 16, 16, TJPF_RGB, TJSAMP_420, 90);
  size_t sof = 0;
  for (size_t i = 2; i + 9 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {
      sof = i;
      break;
    }
  }
  ASSERT_GT(sof, 0u);
  jpeg[sof + 5] = 60000 >> 8, jpeg[sof + 6] = 60000 & 0xFF, jpeg[sof + 7] = 60000 >> 8,
             jpeg[sof + 8] = 60000 & 0xFF;
  const std::string jpeg_path = dir.file("bomb.jpg");
  write_bytes(jpeg_path, jpeg);
  expect_format_error([&] { decode_image(jpeg_path); }, jpeg_path, "60000x60000");
}

TEST(DecodeErrors, MutatedFilesDecodeOrThrowFormatError) {
  PngSpec spec;
  spec.width = 24, spec.height = 16, spec.interlaced = true;
  for (int i = 0; i < 24 * 16 * 3; ++i) spec.data.push_back(uint8_t(i * 7));
  const std::vector<std::vector<uint8_t>> originals = {read_bytes(kCatsDogs + "/test/dogs/dog_test.4.jpg"),
                                                       encode_png(spec)};
  std::mt19937_64 rng(3);
  int failures = 0, successes = 0;
  for (const auto& original : originals) {
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<uint8_t> bytes = original;
      const int edits = 1 + int(rng() % 4);
      for (int e = 0; e < edits; ++e) bytes[2 + rng() % (bytes.size() - 2)] = uint8_t(rng());
      if (rng() % 4 == 0) bytes.resize(2 + rng() % (bytes.size() - 2));
      try {
        const Image image = decode_image_memory(bytes, "mutant");
        EXPECT_EQ(image.rgb.size(), size_t(image.width) * image.height * 3);
        ++successes;
      } catch (const FormatError&) {
        ++failures;
      }
    }
  }
  std::printf("[ figure   ] 600 mutated files: %d decoded, %d FormatError, no crash\n", successes, failures);
}

// ---------------------------------------------------------------------------------------- transforms

TEST(TransformResize, HandComputedGradient) {
  // 4 -> 2 with antialias: each output is a triangle of half-width 2 source pixels around its centre
  // (1.0 and 3.0): (0 * .75 + 40 * .75 + 80 * .25) / 1.75 = 28.57 -> 29, and 91.43 -> 91 (PIL gives the
  // same).
  const Image row = gray(4, 1, {0, 40, 80, 120});
  EXPECT_EQ(red_channel(resize(row, 2, 1)), (std::vector<int>{29, 91}));
  // Without antialias: plain bilinear at source 0.5 and 2.5 -> the means of neighbours.
  EXPECT_EQ(red_channel(resize(row, 2, 1, /*antialias=*/false)), (std::vector<int>{20, 100}));
  // The same along columns.
  EXPECT_EQ(red_channel(resize(gray(1, 4, {0, 40, 80, 120}), 1, 2)), (std::vector<int>{29, 91}));
  // Upscaling 2 -> 4: source positions 0.25 (clamped), 0.75, 1.25, 1.75 (clamped) in pixel centres.
  EXPECT_EQ(red_channel(resize(gray(2, 1, {0, 100}), 4, 1)), (std::vector<int>{0, 25, 75, 100}));
  EXPECT_EQ(red_channel(resize(gray(2, 1, {0, 100}), 4, 1, false)), (std::vector<int>{0, 25, 75, 100}));
  // 2-D: a 4x4 ramp to 2x2 averages the separable filter.
  std::vector<uint8_t> ramp;
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) ramp.push_back(uint8_t(40 * x + 10 * y));
  }
  // Columns give 28.571 / 91.429, rows add 10 * 0.714 = 7.143 and 10 * 2.286 = 22.857.
  EXPECT_EQ(red_channel(resize(gray(4, 4, ramp), 2, 2)), (std::vector<int>{36, 99, 51, 114}));
}

TEST(TransformResize, ConstantStaysConstantAndIdentityIsExact) {
  const Image flat = solid(37, 23, 77, 0, 255);
  for (auto [w, h] : std::vector<std::pair<int, int>>{{5, 3}, {100, 80}, {37, 23}, {1, 1}}) {
    const Image out = resize(flat, w, h);
    EXPECT_EQ(out.rgb, solid(w, h, 77, 0, 255).rgb) << w << "x" << h;
  }
  const Image photo = decode_image(kCatsDogs + "/test/cats/cat_test.2.jpg");
  EXPECT_EQ(resize(photo, 100, 100).rgb, photo.rgb);
}

TEST(TransformResize, ShorterSideAsTorchvision) {
  auto size_of = [](int w, int h, int s) {
    const Image out = resize_shorter_side(solid(w, h, 1, 2, 3), s);
    return std::make_pair(out.width, out.height);
  };
  EXPECT_EQ(size_of(375, 500, 256), std::make_pair(256, 341));  // int(256 * 500 / 375) = 341
  EXPECT_EQ(size_of(500, 375, 256), std::make_pair(341, 256));
  EXPECT_EQ(size_of(100, 100, 73), std::make_pair(73, 73));
  EXPECT_EQ(size_of(100, 30, 10), std::make_pair(33, 10));
}

TEST(TransformCrop, CenterCropCoordinates) {
  auto box = center_crop_box(10, 7, 4, 4);
  EXPECT_EQ(box.left, 3);
  EXPECT_EQ(box.top, 2);  // round(1.5) = 2
  box = center_crop_box(9, 11, 4, 4);
  EXPECT_EQ(box.left, 2);             // round(2.5) = 2: Python rounds half to even
  EXPECT_EQ(box.top, 4);              // round(3.5) = 4
  box = center_crop_box(3, 3, 6, 5);  // larger than the image: padded, left/top get the floor half
  EXPECT_EQ(box.left, -1);
  EXPECT_EQ(box.top, -1);

  std::vector<uint8_t> values(9);
  for (int i = 0; i < 9; ++i) values[i] = uint8_t(i + 1);
  const Image padded = center_crop(gray(3, 3, values), 5, 5);
  EXPECT_EQ(red_channel(padded),
            (std::vector<int>{0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 4, 5, 6, 0, 0, 7, 8, 9, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(red_channel(center_crop(gray(3, 3, values), 1, 1)), (std::vector<int>{5}));
}

TEST(TransformCrop, RandomResizedCropFallsBackToTheCentre) {
  // 1000 x 10: every draw needs a box taller than 10, so all 10 attempts fail; the fallback clamps the
  // ratio to 4/3: w = round(10 * 4/3) = 13, centred.
  std::mt19937_64 rng(0);
  const CropBox box = random_resized_crop_box(1000, 10, rng);
  EXPECT_EQ(box.left, 493);
  EXPECT_EQ(box.top, 0);
  EXPECT_EQ(box.width, 13);
  EXPECT_EQ(box.height, 10);
}

TEST(TransformCrop, RandomResizedCropBoxesStayInRange) {
  std::mt19937_64 rng(7);
  double min_area = 1, max_area = 0;
  for (int i = 0; i < 5000; ++i) {
    const CropBox b = random_resized_crop_box(640, 480, rng);
    ASSERT_GE(b.left, 0);
    ASSERT_GE(b.top, 0);
    ASSERT_LE(b.left + b.width, 640);
    ASSERT_LE(b.top + b.height, 480);
    const double area = double(b.width) * b.height / (640.0 * 480.0), ratio = double(b.width) / b.height;
    EXPECT_GE(area, 0.08 - 0.005);
    EXPECT_GE(ratio, 0.75 - 0.02);
    EXPECT_LE(ratio, 4.0 / 3.0 + 0.02);
    min_area = std::min(min_area, area), max_area = std::max(max_area, area);
  }
  EXPECT_LT(min_area, 0.1);
  EXPECT_GT(max_area, 0.9);
}

TEST(TransformGeometry, FlipAndRotate) {
  std::vector<uint8_t> values(16);
  for (int i = 0; i < 16; ++i) values[i] = uint8_t(10 * i);
  const Image image = gray(4, 4, values);
  EXPECT_EQ(red_channel(hflip(image)),
            (std::vector<int>{30, 20, 10, 0, 70, 60, 50, 40, 110, 100, 90, 80, 150, 140, 130, 120}));
  EXPECT_EQ(rotate(image, 0).rgb, image.rgb);
  // 90 degrees counter-clockwise: the output's top row is the input's right column, top to bottom.
  EXPECT_EQ(red_channel(rotate(image, 90)),
            (std::vector<int>{30, 70, 110, 150, 20, 60, 100, 140, 10, 50, 90, 130, 0, 40, 80, 120}));
  // 45 degrees on a square: corners fall outside the source and are filled with 0, the centre stays.
  const Image rotated = rotate(solid(9, 9, 200, 200, 200), 45);
  EXPECT_EQ(rotated.rgb[0], 0);
  EXPECT_EQ(rotated.rgb[(4 * 9 + 4) * 3], 200);
}

TEST(TransformColor, PlanarNormaliseAndJitter) {
  Image image = gray(2, 1, {255, 0});
  image.rgb[3] = 51;  // second pixel (51, 0, 0)
  PlanarImage planar = to_planar(image);
  ASSERT_EQ(planar.data.size(), 6u);
  EXPECT_FLOAT_EQ(planar.data[0], 1.0f);
  EXPECT_FLOAT_EQ(planar.data[1], 0.2f);  // R plane, pixel 1
  EXPECT_FLOAT_EQ(planar.data[3], 0.0f);  // G plane, pixel 1
  normalize(planar, {0.5, 0.5, 0.5}, {0.25, 0.5, 1.0});
  EXPECT_FLOAT_EQ(planar.data[0], 2.0f);
  EXPECT_FLOAT_EQ(planar.data[1], -1.2f);
  EXPECT_FLOAT_EQ(planar.data[2], 1.0f);   // G: (1 - .5) / .5
  EXPECT_FLOAT_EQ(planar.data[5], -0.5f);  // B: (0 - .5) / 1
  const torch::Tensor t = planar_to_tensor(planar);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 1, 2}));
  EXPECT_FLOAT_EQ(t[0][0][1].item<float>(), -1.2f);

  PlanarImage p = to_planar(gray(2, 1, {200, 100}));
  adjust_brightness(p, 0.5);
  EXPECT_NEAR(p.data[0], 100 / 255.0, 1e-6);
  adjust_contrast(p, 0.0);  // everything becomes the mean gray: (100 + 50) / 2 / 255
  for (float v : p.data) EXPECT_NEAR(v, 75 / 255.0 * 0.9999, 1e-6);  // torchvision's weights sum to 0.9999
  PlanarImage colour = to_planar(solid(1, 1, 255, 0, 0));
  adjust_saturation(colour, 0.0);
  for (float v : colour.data) EXPECT_NEAR(v, 0.2989, 1e-5);

  std::mt19937_64 a(5), b(5);
  PlanarImage x = to_planar(decode_image(kCatsDogs + "/test/cats/cat_test.1.jpg")), y = x;
  color_jitter(x, 0.4, a);
  color_jitter(y, 0.4, b);
  EXPECT_EQ(x.data, y.data);
}

TEST(TransformPipeline, EvalIsResizeThenCenterCrop) {
  const std::string path = kCatsDogs + "/test/cats/cat_test.1.jpg";
  TransformConfig config;
  config.size = 64;
  config.crop_pct = 0.875;  // floor(64 / 0.875) = 73
  EXPECT_EQ(decode_min_side(config), 73);
  std::mt19937_64 rng(0);
  const torch::Tensor out = load_and_transform(path, config, rng);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 64, 64}));
  PlanarImage manual = to_planar(center_crop(resize_shorter_side(decode_image(path), 73), 64, 64));
  normalize(manual, config.mean, config.std);
  EXPECT_TRUE(torch::equal(out, planar_to_tensor(manual)));

  TransformConfig imagenet;  // 224 / 0.875 = 256 exactly, not 255
  EXPECT_EQ(decode_min_side(imagenet), 256);
  imagenet.train = true;
  EXPECT_EQ(decode_min_side(imagenet), 792);  // ceil(224 / sqrt(0.08))
}

TEST(TransformPipeline, TrainIsDeterministicUnderASeed) {
  const std::string path = kCatsDogs + "/train/dogs/dog.7.jpg";
  TransformConfig config;
  config.size = 48;
  config.train = true;
  config.rotation_degrees = 10;
  config.jitter = 0.3;
  std::mt19937_64 a(42), b(42), c(43);
  const torch::Tensor x = load_and_transform(path, config, a);
  const torch::Tensor y = load_and_transform(path, config, b);
  const torch::Tensor z = load_and_transform(path, config, c);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{3, 48, 48}));
  EXPECT_TRUE(torch::equal(x, y));
  EXPECT_FALSE(torch::equal(x, z));
  // The next draw from the same generator is a different crop.
  EXPECT_FALSE(torch::equal(load_and_transform(path, config, a), x));
}

// -------------------------------------------------------------------------------------- image folder

TEST(ImageFolder, CatsVsDogsSmallListing) {
  const ImageList list = scan_image_folder(kCatsDogs + "/train");
  EXPECT_EQ(list.classes, (std::vector<std::string>{"cats", "dogs"}));
  ASSERT_EQ(list.samples.size(), 600u);
  EXPECT_EQ(fs::path(list.samples.front().path).filename(), "cat.1.jpg");
  EXPECT_EQ(fs::path(list.samples[1].path).filename(), "cat.10.jpg");  // sorted as strings
  EXPECT_EQ(fs::path(list.samples.back().path).filename(), "dog.99.jpg");
  size_t cats = 0;
  for (size_t i = 0; i < list.samples.size(); ++i) {
    cats += list.samples[i].label == 0;
    if (i > 0 && list.samples[i].label == list.samples[i - 1].label) {
      EXPECT_LT(list.samples[i - 1].path, list.samples[i].path);
    }
  }
  EXPECT_EQ(cats, 300u);

  TransformConfig config;
  config.size = 32;
  ImageFolder folder(list, config);
  std::mt19937_64 rng(0);
  const Sample sample = folder.get(300, rng);
  EXPECT_EQ(sample.image.sizes(), (std::vector<int64_t>{3, 32, 32}));
  EXPECT_EQ(sample.label, 1);
  EXPECT_EQ(sample.id, list.samples[300].path);
  EXPECT_EQ(folder.label(0), 0);
}

TEST(ImageFolder, DiscoversTrainAndTestFolders) {
  const ImageSplits splits = discover_image_splits(kCatsDogs, 0.2, 1);
  EXPECT_TRUE(splits.from_folders);
  EXPECT_EQ(splits.train.classes, (std::vector<std::string>{"cats", "dogs"}));
  EXPECT_EQ(splits.val.classes, splits.train.classes);
  EXPECT_EQ(splits.train.samples.size(), 600u);
  EXPECT_EQ(splits.val.samples.size(), 200u);
  EXPECT_NE(splits.val.samples.front().path.find("/test/cats/"), std::string::npos);
  EXPECT_EQ(splits.val.samples.back().label, 1);
}

TEST(ImageFolder, SeededStratifiedSplit) {
  const std::string root = kCatsDogs + "/train";  // no train/ inside: split it
  const ImageSplits a = discover_image_splits(root, 0.25, 11);
  const ImageSplits b = discover_image_splits(root, 0.25, 11);
  const ImageSplits c = discover_image_splits(root, 0.25, 12);
  EXPECT_FALSE(a.from_folders);
  ASSERT_EQ(a.val.samples.size(), 150u);
  ASSERT_EQ(a.train.samples.size(), 450u);
  size_t val_cats = 0;
  std::set<std::string> all;
  for (const auto& s : a.val.samples) val_cats += s.label == 0, all.insert(s.path);
  for (const auto& s : a.train.samples) all.insert(s.path);
  EXPECT_EQ(val_cats, 75u);     // stratified: a quarter of each class
  EXPECT_EQ(all.size(), 600u);  // disjoint and complete
  auto paths = [](const ImageList& list) {
    std::vector<std::string> out;
    for (const auto& s : list.samples) out.push_back(s.path);
    return out;
  };
  EXPECT_EQ(paths(a.val), paths(b.val));
  EXPECT_NE(paths(a.val), paths(c.val));
  const std::vector<std::string> val_paths = paths(a.val);
  EXPECT_TRUE(std::is_sorted(val_paths.begin(), val_paths.end()));

  const ImageSplits none = discover_image_splits(root, 0.0, 11);
  EXPECT_EQ(none.train.samples.size(), 600u);
  EXPECT_TRUE(none.val.samples.empty());
  EXPECT_THROW(discover_image_splits(root, 1.0, 11), Error);
}

TEST(ImageFolder, ExtensionsAndHiddenFiles) {
  TempDir dir("extensions");
  const std::vector<uint8_t> jpeg = read_bytes(kCatsDogs + "/test/cats/cat_test.1.jpg");
  for (const char* name : {"a/one.JPG", "a/two.Jpeg", "a/sub/three.png", "a/notes.txt", "a/.hidden.jpg",
                           ".git/x.jpg", "b/four.jpg"}) {
    write_bytes(dir.file(name), jpeg);
  }
  const ImageList list = scan_image_folder(dir.path());
  EXPECT_EQ(list.classes, (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(list.samples.size(), 4u);
  EXPECT_EQ(fs::path(list.samples[0].path).filename(), "one.JPG");
  EXPECT_EQ(fs::path(list.samples[1].path).filename(), "two.Jpeg");
  EXPECT_EQ(fs::path(list.samples[2].path).filename(),
            "three.png");  // subfolders after the folder's own files
}

// Links to '.', to '..' and to another class made the walk exponential (no end after 60 s), turned 12 images
// into 732, labelled dogs as cats and let validation overlap training. Each real folder is walked once, each
// real file counted once, a link never leads into another class, and what was skipped is said.
TEST(ImageFolder, SymbolicLinksAreWalkedOnceAndStayInTheirClass) {
  TempDir dir("links"), elsewhere("links_elsewhere");
  const std::vector<uint8_t> jpeg = read_bytes(kCatsDogs + "/test/cats/cat_test.1.jpg");
  for (int i = 0; i < 6; ++i) {
    write_bytes(dir.file("cat/c" + std::to_string(i) + ".jpg"), jpeg);
    write_bytes(dir.file("dog/d" + std::to_string(i) + ".jpg"), jpeg);
  }
  write_bytes(elsewhere.file("kept/e.jpg"), jpeg);
  const fs::path cat = fs::path(dir.path()) / "cat";
  fs::create_directory_symlink(".", cat / "self1");
  fs::create_directory_symlink(".", cat / "self2");
  fs::create_directory_symlink("..", cat / "up");
  fs::create_directory_symlink("../dog", cat / "dogdir");
  fs::create_symlink("../dog/d0.jpg", cat / "stolen.jpg");
  fs::create_symlink("c0.jpg", cat / "again.jpg");
  fs::create_symlink("nothing.jpg", cat / "broken.jpg");
  fs::create_directory_symlink(fs::path(elsewhere.path()) / "kept",
                               cat / "external");  // photos kept elsewhere

  const ImageList list = scan_image_folder(dir.path());
  std::map<int64_t, std::vector<std::string>> by_label;
  for (const auto& sample : list.samples) by_label[sample.label].push_back(sample.path);
  EXPECT_EQ(by_label[0].size(), 7u);  // c0..c5 and external/e.jpg
  EXPECT_EQ(by_label[1].size(), 6u);
  for (const auto& path : by_label[0]) {
    EXPECT_EQ(path.find("dogdir"), std::string::npos) << path;
    EXPECT_EQ(path.find("stolen"), std::string::npos) << path;
  }
  std::string skipped;
  for (const auto& line : list.skipped) skipped += line + "\n";
  for (const char* expected :
       {"cat/dogdir: a link to ", "cat/up: a link to ", "cat/stolen.jpg: a link to ",
        "outside its class folder", "a folder already listed (through a link); skipped",
        "cat/again.jpg: the same file as an image already listed", "cat/broken.jpg: a link to nothing"})
    EXPECT_NE(skipped.find(expected), std::string::npos) << expected << " in\n" << skipped;

  // The seeded split: no image on both sides, even through links.
  const ImageSplits splits = discover_image_splits(dir.path(), 0.5, 3);
  std::set<std::string> train;
  for (const auto& sample : splits.train.samples) train.insert(fs::canonical(sample.path).string());
  for (const auto& sample : splits.val.samples)
    EXPECT_EQ(train.count(fs::canonical(sample.path).string()), 0u);
  EXPECT_EQ(splits.train.samples.size() + splits.val.samples.size(), 13u);
  EXPECT_FALSE(splits.train.skipped.empty());
}

TEST(ImageFolder, ErrorsNameThePath) {
  TempDir dir("folder_errors");
  auto expect_error = [](const std::string& root, const std::string& fragment) {
    try {
      scan_image_folder(root);
      ADD_FAILURE() << "no error for " << root;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error(dir.path() + "/nowhere", "does not exist");
  expect_error(dir.path(), "no class folders");
  const std::vector<uint8_t> jpeg = read_bytes(kCatsDogs + "/test/cats/cat_test.1.jpg");
  write_bytes(dir.file("loose.jpg"), jpeg);
  expect_error(dir.path(), "found 1 images directly");
  fs::create_directories(dir.path() + "/cats");
  write_bytes(dir.file("cats/readme.txt"), {'h', 'i'});
  expect_error(dir.path(), "no images");
  write_bytes(dir.file("cats/c.jpg"), jpeg);
  fs::create_directories(dir.path() + "/dogs");
  expect_error(dir.path(), dir.path() + "/dogs");  // the empty class folder, named

  // A validation class unknown to train/.
  TempDir split("split_errors");
  write_bytes(split.file("train/cats/a.jpg"), jpeg);
  write_bytes(split.file("val/cats/b.jpg"), jpeg);
  write_bytes(split.file("val/birds/c.jpg"), jpeg);
  try {
    discover_image_splits(split.path(), 0.2, 0);
    ADD_FAILURE() << "no error for a val class missing in train";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("birds"), std::string::npos) << e.what();
  }
}

// ----------------------------------------------------------------------------------------------- IDX

TEST(IdxFashionMnist, RealFiles) {
  const std::string dir = kFashionMnistDir;
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const IdxImages train = load_idx_images(dir + "/train-images-idx3-ubyte.gz");
  EXPECT_EQ(train.count, 60000);
  EXPECT_EQ(train.rows, 28);
  EXPECT_EQ(train.cols, 28);
  EXPECT_EQ(train.pixels.size(), 60000u * 28u * 28u);
  const std::vector<int64_t> train_labels = load_idx_labels(dir + "/train-labels-idx1-ubyte.gz");
  ASSERT_EQ(train_labels.size(), 60000u);
  EXPECT_EQ(std::vector<int64_t>(train_labels.begin(), train_labels.begin() + 10),
            (std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  const std::vector<int64_t> test_labels = load_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(test_labels.size(), 10000u);
  EXPECT_EQ(std::vector<int64_t>(test_labels.begin(), test_labels.begin() + 10),
            (std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  std::vector<size_t> per_class(10);
  for (int64_t label : train_labels) per_class.at(size_t(label))++;
  for (size_t n : per_class) EXPECT_EQ(n, 6000u);
  EXPECT_EQ(train.tensor().sizes(), (std::vector<int64_t>{60000, 28, 28}));
}

TEST(IdxFashionMnist, DatasetAdapter) {
  const std::string dir = kFashionMnistDir;
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  TransformConfig config;
  config.size = 28;
  config.crop_pct = 1.0;
  config.mean = {0, 0, 0};
  config.std = {1, 1, 1};
  const auto test = load_fashion_mnist(dir, /*train=*/false, config, /*limit=*/100);
  ASSERT_EQ(test->size(), 100u);
  EXPECT_EQ(test->classes().size(), 10u);
  EXPECT_EQ(test->classes()[0], "T-shirt/top");
  EXPECT_EQ(test->classes()[9], "Ankle boot");
  EXPECT_EQ(test->label(0), 9);
  std::mt19937_64 rng(0);
  const Sample sample = test->get(0, rng);
  EXPECT_EQ(sample.image.sizes(), (std::vector<int64_t>{3, 28, 28}));
  EXPECT_EQ(sample.id, dir + "/t10k-images-idx3-ubyte.gz#0");
  // 28 -> 28 is an exact identity: the sample is the IDX image / 255 in all three channels.
  const torch::Tensor expected =
      load_idx_images(dir + "/t10k-images-idx3-ubyte.gz").tensor()[0].to(torch::kFloat32) / 255;
  for (int c = 0; c < 3; ++c)
    EXPECT_TRUE(torch::allclose(sample.image[c], expected, 0, 1e-6)) << "channel " << c;

  const auto a = load_fashion_mnist(dir, false, config, 50, /*subset_seed=*/3);
  const auto b = load_fashion_mnist(dir, false, config, 50, 3);
  ASSERT_EQ(a->size(), 50u);
  std::vector<std::string> ids_a, ids_b;
  for (size_t i = 0; i < 50; ++i) ids_a.push_back(a->id(i)), ids_b.push_back(b->id(i));
  EXPECT_EQ(ids_a, ids_b);
  EXPECT_NE(ids_a.back(), test->id(49));  // a random subset, not the first 50
}

// The peak resident memory since the last reset_peak_memory(), in MiB; -1 where /proc cannot say.
int64_t peak_memory_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) / 1024;
  return -1;
}
bool reset_peak_memory() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";  // Linux >= 4.0: resets VmHWM to the current resident size
  clear.flush();
  return bool(clear);
}

TEST(IdxFashionMnist, ASubsetHoldsTheRecordsItNames) {
  const std::string dir = kFashionMnistDir;
  if (!fs::exists(dir + "/t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  TransformConfig config;
  const auto subset = load_fashion_mnist(dir, false, config, 50, /*subset_seed=*/3);
  const IdxImages all = load_idx_images(dir + "/t10k-images-idx3-ubyte.gz");
  const std::vector<int64_t> labels = load_idx_labels(dir + "/t10k-labels-idx1-ubyte.gz");
  for (size_t i = 0; i < subset->size(); ++i) {
    const std::string id = subset->id(i);
    const size_t record = std::stoul(id.substr(id.find('#') + 1));
    EXPECT_EQ(subset->label(i), labels.at(record)) << id;
    const Image image = subset->image(i);
    for (size_t p = 0; p < 28 * 28; p += 97) ASSERT_EQ(image.rgb[p * 3], all.pixels[record * 784 + p]) << id;
  }
}

std::vector<uint8_t> idx_header(std::vector<uint8_t> magic, const std::vector<uint32_t>& dims) {
  for (uint32_t d : dims)
    magic.insert(magic.end(), {uint8_t(d >> 24), uint8_t(d >> 16), uint8_t(d >> 8), uint8_t(d)});
  return magic;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), unsigned(bytes.size()));
  gzclose(f);
}

// A gzip bomb: a few MB of gzip that inflate to 548 MB of images, read with --limit 10. Only the ten kept
// records stay in memory (the whole array was read before: RSS rose by the announced size).
TEST(IdxCorrupt, ALimitedDatasetKeepsOnlyItsRecordsOfABomb) {
  TempDir dir("idx_bomb");
  constexpr uint32_t kCount = 700000;  // x 28 x 28 = 548.8 MB
  const std::string images = dir.file("bomb-images.gz"), labels = dir.file("bomb-labels.gz");
  {
    gzFile f = gzopen(images.c_str(), "wb1");
    const std::vector<uint8_t> header = idx_header({0, 0, 8, 3}, {kCount, 28, 28});
    gzwrite(f, header.data(), unsigned(header.size()));
    const std::vector<uint8_t> zeros(28 * 28 * 1000, 0);
    for (uint32_t i = 0; i < kCount / 1000; ++i) gzwrite(f, zeros.data(), unsigned(zeros.size()));
    gzclose(f);
    std::vector<uint8_t> label_file = idx_header({0, 0, 8, 1}, {kCount});
    label_file.resize(label_file.size() + kCount, 1);
    write_gz(labels, label_file);
  }
  const bool measured = reset_peak_memory();
  const int64_t before = peak_memory_mib();
  for (const std::optional<uint64_t> seed : {std::optional<uint64_t>(7), std::optional<uint64_t>()}) {
    IdxImageDataset limited(images, labels, {"zero", "one"}, TransformConfig{}, 10, seed);
    ASSERT_EQ(limited.size(), 10u);
    EXPECT_EQ(limited.label(9), 1);
    EXPECT_EQ(limited.image(9).rgb.size(), 28u * 28u * 3u);
    if (!seed) {
      EXPECT_EQ(limited.id(9), images + "#9");
    }
  }
  if (!measured || before < 0)
    GTEST_SKIP() << "/proc/self/clear_refs or VmHWM unavailable: memory not measured";
  // 548 MB if the whole array were read; the kept records and zlib's buffers are well under 100 MiB.
  EXPECT_LT(peak_memory_mib() - before, 100) << "peak resident memory grew while reading 10 records";
}

TEST(IdxCorrupt, ClearErrorsAndNoHugeAllocations) {
  TempDir dir("idx");
  // A valid 2 x 2 x 3 file, plain and gzipped.
  std::vector<uint8_t> good = idx_header({0, 0, 8, 3}, {2, 2, 3});
  for (int i = 0; i < 12; ++i) good.push_back(uint8_t(i));
  write_bytes(dir.file("good.idx"), good);
  write_gz(dir.file("good.idx.gz"), good);
  for (const char* name : {"good.idx", "good.idx.gz"}) {
    const IdxImages images = load_idx_images(dir.file(name));
    EXPECT_EQ(images.count, 2);
    EXPECT_EQ(images.rows, 2);
    EXPECT_EQ(images.cols, 3);
    EXPECT_EQ(images.pixels[11], 11);
  }
  const std::string good_path = dir.file("good.idx");
  expect_format_error([&] { load_idx_labels(good_path); }, good_path, "3 dimensions, expected 1");

  std::vector<uint8_t> bad_magic = good;
  bad_magic[0] = 0x1f;
  const std::string bad_magic_path = dir.file("bad_magic.idx");
  write_bytes(bad_magic_path, bad_magic);
  expect_format_error([&] { load_idx_images(bad_magic_path); }, bad_magic_path, "magic");

  std::vector<uint8_t> floats = good;
  floats[2] = 0x0D;
  const std::string floats_path = dir.file("floats.idx");
  write_bytes(floats_path, floats);
  expect_format_error([&] { load_idx_images(floats_path); }, floats_path, "0x0d");

  std::vector<uint8_t> truncated(good.begin(), good.end() - 5);
  const std::string truncated_path = dir.file("truncated.idx");
  write_bytes(truncated_path, truncated);
  expect_format_error([&] { load_idx_images(truncated_path); }, truncated_path, "truncated");
  const std::string truncated_gz = dir.file("truncated.idx.gz");
  write_gz(truncated_gz, truncated);
  expect_format_error([&] { load_idx_images(truncated_gz); }, truncated_gz, "truncated");

  std::vector<uint8_t> trailing = good;
  trailing.push_back(0);
  const std::string trailing_path = dir.file("trailing.idx");
  write_bytes(trailing_path, trailing);
  expect_format_error([&] { load_idx_images(trailing_path); }, trailing_path, "after");

  // A header claiming 4e9 x 60000 x 60000 bytes over 3 bytes of data: fails at once, allocates nothing big.
  std::vector<uint8_t> huge = idx_header({0, 0, 8, 3}, {4000000000u, 60000, 60000});
  huge.insert(huge.end(), {1, 2, 3});
  const std::string huge_path = dir.file("huge.idx");
  write_bytes(huge_path, huge);
  expect_format_error([&] { load_idx_images(huge_path); }, huge_path, "large");
  std::vector<uint8_t> big = idx_header({0, 0, 8, 3}, {1000000, 1000, 1000});  // 1e12: within the bound
  big.insert(big.end(), {1, 2, 3});
  const std::string big_path = dir.file("big.idx.gz");
  write_gz(big_path, big);
  expect_format_error([&] { load_idx_images(big_path); }, big_path, "the file has 3");

  const std::string short_path = dir.file("short.idx");
  write_bytes(short_path, {0, 0});
  expect_format_error([&] { load_idx_labels(short_path); }, short_path, "too short");
}

// -------------------------------------------------------------------------------------------- loader

// Samples whose content is a function of (index, rng): (3, 2, 2) filled with index + a random fraction.
class SyntheticDataset : public Dataset {
 public:
  SyntheticDataset(size_t size, std::set<size_t> corrupt = {}, int sleep_ms = 0,
                   std::set<size_t> failing = {})
      : size_(size), corrupt_(std::move(corrupt)), failing_(std::move(failing)), sleep_ms_(sleep_ms) {}
  size_t size() const override { return size_; }
  Sample get(size_t index, std::mt19937_64& rng) const override {
    ++calls;
    if (sleep_ms_) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    if (corrupt_.count(index)) throw FormatError(id(index), "corrupt on purpose");
    if (failing_.count(index)) throw std::runtime_error("disk on fire");
    const float value = float(index) + float(rng() % 1000) / 1000.0f;
    return Sample{torch::full({3, 2, 2}, value), label(index), id(index)};
  }
  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t label(size_t index) const override { return int64_t(index % 3); }
  std::string id(size_t index) const override { return "s" + std::to_string(index); }
  mutable std::atomic<int> calls{0};

 private:
  size_t size_;
  std::set<size_t> corrupt_, failing_;
  int sleep_ms_;
  std::vector<std::string> classes_{"a", "b", "c"};
};

std::vector<Batch> run_epoch(DataLoader& loader, int64_t epoch) {
  std::vector<Batch> batches;
  loader.start_epoch(epoch);
  while (auto batch = loader.next()) batches.push_back(std::move(*batch));
  return batches;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].ids, b[i].ids) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].labels, b[i].labels)) << "batch " << i;
    EXPECT_TRUE(torch::equal(a[i].images, b[i].images)) << "batch " << i;
  }
}

TEST(LoaderTest, SameBatchesWithOneOrThreeWorkers) {
  auto data = std::make_shared<SyntheticDataset>(103, std::set<size_t>{}, 0);
  LoaderOptions options;
  options.batch_size = 8;
  options.seed = 5;
  options.workers = 1;
  DataLoader one(data, options);
  options.workers = 3;
  DataLoader three(data, options);
  EXPECT_EQ(one.num_batches(), 13u);
  const auto a0 = run_epoch(one, 0), b0 = run_epoch(three, 0);
  expect_same_batches(a0, b0);
  expect_same_batches(run_epoch(one, 1), run_epoch(three, 1));
  expect_same_batches(a0, run_epoch(three, 0));  // an epoch repeats exactly
  ASSERT_EQ(a0.size(), 13u);
  EXPECT_EQ(a0.back().ids.size(), 7u);
  EXPECT_EQ(a0[0].images.sizes(), (std::vector<int64_t>{8, 3, 2, 2}));
  EXPECT_EQ(a0[0].labels.scalar_type(), torch::kInt64);
  std::set<std::string> seen;
  for (const auto& batch : a0) seen.insert(batch.ids.begin(), batch.ids.end());
  EXPECT_EQ(seen.size(), 103u);
  const auto a1 = run_epoch(one, 1);
  EXPECT_NE(a0[0].ids, a1[0].ids);  // epochs shuffle differently
}

TEST(LoaderTest, NoShuffleAndDropLast) {
  auto data = std::make_shared<SyntheticDataset>(10);
  LoaderOptions options;
  options.batch_size = 4;
  options.shuffle = false;
  options.drop_last = true;
  options.workers = 2;
  DataLoader loader(data, options);
  EXPECT_EQ(loader.num_batches(), 2u);
  const auto batches = run_epoch(loader, 0);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1].ids, (std::vector<std::string>{"s4", "s5", "s6", "s7"}));
  EXPECT_EQ(batches[1].labels[0].item<int64_t>(), 1);
  EXPECT_NEAR(batches[1].images[3][0][0][0].item<float>(), 7.5, 0.5);
}

TEST(LoaderTest, CorruptSamplesAreSkippedAndCountedOnce) {
  auto data = std::make_shared<SyntheticDataset>(20, std::set<size_t>{3, 8, 9, 10, 11});
  LoaderOptions options;
  options.batch_size = 4;
  options.shuffle = false;
  options.workers = 3;
  DataLoader loader(data, options);
  testing::internal::CaptureStderr();
  const auto first = run_epoch(loader, 0);
  const auto second = run_epoch(loader, 1);
  const std::string warnings = testing::internal::GetCapturedStderr();
  EXPECT_EQ(loader.skipped_files(), 5u);
  // Batch 0 is one short; batch 2 (8..11) is all corrupt and not returned; the others are whole.
  ASSERT_EQ(first.size(), 4u);
  EXPECT_EQ(first[0].ids, (std::vector<std::string>{"s0", "s1", "s2"}));
  EXPECT_EQ(first[2].ids.front(), "s12");
  ASSERT_EQ(second.size(), first.size());  // epoch 1 draws other random numbers, but skips the same files
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i].ids, second[i].ids);
  size_t lines = 0, named = 0;
  for (size_t at = warnings.find('\n'); at != std::string::npos; at = warnings.find('\n', at + 1)) ++lines;
  for (size_t at = warnings.find("s3:"); at != std::string::npos; at = warnings.find("s3:", at + 1)) ++named;
  EXPECT_EQ(lines, 5u) << warnings;
  EXPECT_EQ(named, 1u) << warnings;
}

TEST(LoaderTest, CorruptFilesInAnImageFolder) {
  TempDir dir("loader_folder");
  for (int i = 1; i <= 5; ++i) {
    fs::copy_file(kCatsDogs + "/train/cats/cat." + std::to_string(i) + ".jpg",
                  dir.file("cats/c" + std::to_string(i) + ".jpg"));
    fs::copy_file(kCatsDogs + "/train/dogs/dog." + std::to_string(i) + ".jpg",
                  dir.file("dogs/d" + std::to_string(i) + ".jpg"));
  }
  std::vector<uint8_t> half = read_bytes(kCatsDogs + "/train/cats/cat.6.jpg");
  half.resize(half.size() / 2);
  const std::string broken = dir.file("cats/broken.jpg");
  write_bytes(broken, half);
  const std::string text = dir.file("dogs/text.png");
  std::ofstream(text) << "not an image";
  TransformConfig config;
  config.size = 32;
  config.train = true;
  auto folder = std::make_shared<ImageFolder>(dir.path(), config);
  ASSERT_EQ(folder->size(), 12u);
  LoaderOptions options;
  options.batch_size = 5;
  options.workers = 2;
  DataLoader loader(folder, options);
  testing::internal::CaptureStderr();
  size_t images = 0;
  for (const auto& batch : run_epoch(loader, 0)) {
    EXPECT_EQ(batch.images.sizes().slice(1), (std::vector<int64_t>{3, 32, 32}));
    images += batch.ids.size();
  }
  const std::string warnings = testing::internal::GetCapturedStderr();
  EXPECT_EQ(images, 10u);
  EXPECT_EQ(loader.skipped_files(), 2u);
  EXPECT_NE(warnings.find(broken), std::string::npos) << warnings;
  EXPECT_NE(warnings.find(text), std::string::npos) << warnings;
}

TEST(LoaderTest, OtherErrorsReachTheConsumer) {
  auto data = std::make_shared<SyntheticDataset>(12, std::set<size_t>{}, 0, std::set<size_t>{6});
  LoaderOptions options;
  options.batch_size = 4;
  options.shuffle = false;
  options.workers = 2;
  DataLoader loader(data, options);
  loader.start_epoch(0);
  EXPECT_TRUE(loader.next().has_value());
  EXPECT_THROW(loader.next(), std::runtime_error);
  EXPECT_TRUE(loader.next().has_value());  // the loader goes on with the next batch
  EXPECT_FALSE(loader.next().has_value());
}

TEST(LoaderTest, EarlyStopAndRestartDoNotHang) {
  auto slow = std::make_shared<SyntheticDataset>(2000, std::set<size_t>{}, /*sleep_ms=*/5);
  LoaderOptions options;
  options.batch_size = 4;
  options.workers = 3;
  options.seed = 9;
  const auto start = std::chrono::steady_clock::now();
  {
    DataLoader loader(slow, options);
    loader.start_epoch(0);
    ASSERT_TRUE(loader.next().has_value());
    // Destroyed mid-epoch with workers busy and the prefetch window full.
  }
  {
    DataLoader never_started(slow, options);  // destroyed before any epoch
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 2.0);
  EXPECT_LT(slow->calls.load(), 200);  // bounded prefetch: nowhere near the 2000 samples

  // Restarting an epoch midway gives the same batches as a fresh start.
  auto data = std::make_shared<SyntheticDataset>(50);
  DataLoader loader(data, options);
  loader.start_epoch(3);
  loader.next();
  loader.next();
  loader.start_epoch(3);
  std::vector<Batch> restarted;
  while (auto batch = loader.next()) restarted.push_back(std::move(*batch));
  DataLoader fresh(data, options);
  expect_same_batches(restarted, run_epoch(fresh, 3));
}

TEST(LoaderTest, CatsVsDogsEpoch) {
  TransformConfig config;
  config.size = 64;
  config.train = true;
  auto folder = std::make_shared<ImageFolder>(kCatsDogs + "/train", config);
  LoaderOptions options;
  options.batch_size = 32;
  options.workers = 2;
  options.seed = 1;
  DataLoader loader(folder, options);
  EXPECT_EQ(loader.num_batches(), 19u);
  const auto start = std::chrono::steady_clock::now();
  const auto batches = run_epoch(loader, 0);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ figure   ] cats_vs_dogs_small train epoch (600 images, 64 px, 2 workers): %.3f s\n",
              seconds);
  ASSERT_EQ(batches.size(), 19u);
  int64_t images = 0, dogs = 0;
  for (const auto& batch : batches) {
    images += batch.images.size(0);
    dogs += batch.labels.sum().item<int64_t>();
  }
  EXPECT_EQ(images, 600);
  EXPECT_EQ(dogs, 300);
  EXPECT_EQ(batches.back().images.size(0), 600 - 18 * 32);
  EXPECT_EQ(loader.skipped_files(), 0u);
}

}  // namespace
}  // namespace graft
