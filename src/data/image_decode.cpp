// Image decoding to 8-bit RGB: JPEG through libjpeg-turbo's TurboJPEG API (2.1, the tj* functions) with
// DCT scaling, PNG through libpng 1.6's classic API. The format is found from the magic bytes.
// Conventions follow PIL's Image.open(...).convert('RGB') (what torchvision's ImageFolder loader does):
// alpha dropped, 16-bit PNG samples reduced to their high byte, Adobe CMYK JPEGs read as inverted.
#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/strings.h"

namespace graft {
namespace {

// Decompression-bomb check on the header's claimed size, before any pixel buffer exists.
void check_dimensions(const std::string& name, int64_t width, int64_t height) {
  if (width <= 0 || height <= 0) {
    throw FormatError(name, "image header gives a zero or negative size " + std::to_string(width) + "x" +
                                std::to_string(height));
  }
  if (width * height > kMaxImagePixels) {
    throw FormatError(name,
                      "image header claims " + std::to_string(width) + "x" + std::to_string(height) + " = " +
                          std::to_string(width * height) + " pixels, more than graft's limit of " +
                          std::to_string(kMaxImagePixels),
                      "refused as a possible decompression bomb; downscale the image first");
  }
}

// ----------------------------------------------------------------------------------------------- JPEG

struct TjHandle {
  tjhandle handle = tjInitDecompress();
  ~TjHandle() {
    if (handle) tjDestroy(handle);
  }
};

// True when an APP14 "Adobe" segment precedes the scan: Photoshop & co. then store CMYK inverted
// (255 = no ink), which is also what libjpeg's YCCK->CMYK conversion yields for their YCCK files.
bool has_adobe_marker(const uint8_t* data, size_t size) {
  size_t pos = 2;  // after SOI
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return false;
    const uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return false;  // start of scan / end of image
    const size_t length = (size_t{data[pos + 2]} << 8) | data[pos + 3];
    if (length < 2) return false;
    if (marker == 0xEE && length >= 7 && pos + 9 <= size && std::memcmp(data + pos + 4, "Adobe", 5) == 0) {
      return true;
    }
    pos += 2 + length;
  }
  return false;
}

bool is_supported_scale(tjscalingfactor wanted) {
  int count = 0;
  const tjscalingfactor* factors = tjGetScalingFactors(&count);
  for (int i = 0; factors && i < count; ++i) {
    if (factors[i].num * wanted.denom == wanted.num * factors[i].denom) return true;
  }
  return false;
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int min_side) {
  TjHandle tj;
  if (!tj.handle)
    throw Error("cannot create a TurboJPEG decompressor: " + std::string(tjGetErrorStr2(nullptr)));
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj.handle, data, static_cast<unsigned long>(size), &width, &height, &subsamp,
                          &colorspace) != 0) {
    throw FormatError(name, std::string("invalid JPEG header: ") + tjGetErrorStr2(tj.handle));
  }
  check_dimensions(name, width, height);

  // The smallest of 1/8, 1/4, 1/2 (the fast, SIMD-accelerated scaled IDCTs) whose shorter side still
  // reaches min_side; TJSCALED rounds up as libjpeg does.
  tjscalingfactor scale{1, 1};
  if (min_side > 0) {
    for (int denom : {8, 4, 2}) {
      const tjscalingfactor candidate{1, denom};
      if (is_supported_scale(candidate) &&
          std::min(TJSCALED(width, candidate), TJSCALED(height, candidate)) >= min_side) {
        scale = candidate;
        break;
      }
    }
  }
  const int out_width = TJSCALED(width, scale);
  const int out_height = TJSCALED(height, scale);
  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  const int pixel_format = cmyk ? TJPF_CMYK : TJPF_RGB;
  const size_t channels = cmyk ? 4 : 3;

  std::vector<uint8_t> pixels(size_t(out_width) * size_t(out_height) * channels);
  // Any -1 is an error here, warnings included: libjpeg-turbo reports a truncated file ("Premature end
  // of JPEG file") as a warning and pads the rest with gray, which must not reach training.
  if (tjDecompress2(tj.handle, data, static_cast<unsigned long>(size), pixels.data(), out_width, 0,
                    out_height, pixel_format, 0) != 0) {
    const bool warning = tjGetErrorCode(tj.handle) == TJERR_WARNING;
    throw FormatError(name,
                      std::string(warning ? "corrupt or truncated JPEG data: " : "cannot decode JPEG: ") +
                          tjGetErrorStr2(tj.handle));
  }

  Image image;
  image.width = out_width;
  image.height = out_height;
  if (!cmyk) {
    image.rgb = std::move(pixels);
    return image;
  }
  // CMYK -> RGB as PIL does: R = (255 - C) * (255 - K) / 255. Inverted (Adobe) data already holds
  // 255 - C and 255 - K.
  const bool inverted = has_adobe_marker(data, size);
  const size_t count = size_t(out_width) * size_t(out_height);
  image.rgb.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* p = &pixels[i * 4];
    const int k = inverted ? p[3] : 255 - p[3];
    for (int c = 0; c < 3; ++c) {
      const int ink_free = inverted ? p[c] : 255 - p[c];
      image.rgb[i * 3 + c] = static_cast<uint8_t>((ink_free * k + 127) / 255);
    }
  }
  return image;
}

// ------------------------------------------------------------------------------------------------ PNG
//
// libpng reports errors by longjmp. The setjmp lives in png_decode_rows(), whose only automatic objects
// are trivially destructible, and every C++ object (buffers, the handle guard) lives in its caller,
// which longjmp never crosses; so no destructor is skipped (the C++ rule for setjmp/longjmp).

struct PngReader {  // trivially destructible: the callbacks below may longjmp out of it
  const uint8_t* data;
  size_t size;
  size_t position;
  char message[256];
};

void png_on_error(png_structp png, png_const_charp message) {
  auto* reader = static_cast<PngReader*>(png_get_error_ptr(png));
  std::snprintf(reader->message, sizeof(reader->message), "%s", message ? message : "libpng error");
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}  // e.g. "iCCP: known incorrect sRGB profile"

void png_read_from_memory(png_structp png, png_bytep out, size_t length) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (length > reader->size - reader->position) png_error(png, "unexpected end of file (truncated PNG)");
  std::memcpy(out, reader->data + reader->position, length);
  reader->position += length;
}

struct PngHandles {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngHandles() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

enum class PngStatus { kOk, kLibpngError, kBadSize };

// Reads the header, checks the size, sets up 8-bit expansion, then the rows into `pixels` (allocated by
// the `allocate` step below, outside any libpng frame). Returns kLibpngError with reader->message set
// when libpng fails.
PngStatus png_decode_rows(PngHandles* handles, PngReader* reader, std::vector<uint8_t>* pixels,
                          std::vector<png_bytep>* rows, png_uint_32* width, png_uint_32* height,
                          int* channels) {
  if (setjmp(png_jmpbuf(handles->png))) return PngStatus::kLibpngError;
  png_set_read_fn(handles->png, reader, png_read_from_memory);
  png_read_info(handles->png, handles->info);
  *width = png_get_image_width(handles->png, handles->info);
  *height = png_get_image_height(handles->png, handles->info);
  if (*width == 0 || *height == 0 || int64_t{*width} * int64_t{*height} > kMaxImagePixels) {
    return PngStatus::kBadSize;
  }
  const int color_type = png_get_color_type(handles->png, handles->info);
  const int bit_depth = png_get_bit_depth(handles->png, handles->info);
  if (bit_depth == 16) png_set_strip_16(handles->png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(handles->png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(handles->png);
  png_set_interlace_handling(handles->png);
  png_read_update_info(handles->png, handles->info);
  *channels = png_get_channels(handles->png, handles->info);
  const size_t row_bytes = png_get_rowbytes(handles->png, handles->info);
  if (*channels < 1 || *channels > 4 || png_get_bit_depth(handles->png, handles->info) != 8 ||
      row_bytes != size_t(*width) * size_t(*channels)) {
    png_error(handles->png, "unexpected pixel layout after expansion to 8 bits");
  }
  // resize() may throw std::bad_alloc: that unwinds through this frame only (no libpng frame is active
  // here), and the caller's guards clean up.
  pixels->resize(row_bytes * *height);
  rows->resize(*height);
  for (png_uint_32 y = 0; y < *height; ++y) (*rows)[y] = pixels->data() + size_t(y) * row_bytes;
  png_read_image(handles->png, rows->data());
  png_read_end(handles->png, nullptr);
  return PngStatus::kOk;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& name) {
  PngReader reader{data, size, 0, {0}};
  PngHandles handles;
  handles.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, png_on_error, png_on_warning);
  if (!handles.png) throw Error("cannot create a libpng reader (out of memory?)");
  handles.info = png_create_info_struct(handles.png);
  if (!handles.info) throw Error("cannot create a libpng info struct (out of memory?)");
  // libpng's own limit is 1,000,000 pixels per side; ours (total pixels) is checked in png_decode_rows.
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;
  png_uint_32 width = 0, height = 0;
  int channels = 0;
  switch (png_decode_rows(&handles, &reader, &pixels, &rows, &width, &height, &channels)) {
    case PngStatus::kLibpngError:
      throw FormatError(name, std::string("corrupt or truncated PNG: ") + reader.message);
    case PngStatus::kBadSize:
      check_dimensions(name, width, height);  // throws with the details
      throw FormatError(name, "bad PNG size");
    case PngStatus::kOk:
      break;
  }

  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  const size_t count = size_t(width) * size_t(height);
  if (channels == 3) {
    image.rgb = std::move(pixels);
    return image;
  }
  image.rgb.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* p = &pixels[i * size_t(channels)];
    uint8_t* q = &image.rgb[i * 3];
    if (channels <= 2) {  // gray, gray + alpha
      q[0] = q[1] = q[2] = p[0];
    } else {  // RGBA
      q[0] = p[0], q[1] = p[1], q[2] = p[2];
    }
  }
  return image;
}

std::string describe_magic(const uint8_t* data, size_t size) {
  auto starts = [&](const char* magic) {
    const size_t n = std::strlen(magic);
    return size >= n && std::memcmp(data, magic, n) == 0;
  };
  if (starts("GIF8")) return "a GIF";
  if (starts("BM")) return "a BMP";
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0)
    return "a WebP";
  if (starts("II*") || starts("MM")) return "a TIFF";
  char hex[64] = {0};
  int at = 0;
  for (size_t i = 0; i < std::min<size_t>(size, 8); ++i)
    at += std::snprintf(hex + at, sizeof(hex) - at, "%02x ", data[i]);
  return "not an image (first bytes " + std::string(hex, at > 0 ? at - 1 : 0) + ")";
}

}  // namespace

Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name, int min_side) {
  static const uint8_t kPngMagic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size == 0) throw FormatError(name, "empty file");
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    return decode_jpeg(data, size, name, min_side);
  }
  if (size >= 8 && std::memcmp(data, kPngMagic, 8) == 0) return decode_png(data, size, name);
  throw FormatError(name, "not a JPEG or PNG file: it is " + describe_magic(data, size),
                    "graft decodes JPEG and PNG; convert other formats first");
}

Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, int min_side) {
  return decode_image_memory(bytes.data(), bytes.size(), name, min_side);
}

Image decode_image(const std::string& path, int min_side) {
  regular_file_size(path, "image file");  // a FIFO would block the open below; a folder or device is refused
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(path + ": cannot open image file: " + std::strerror(errno));
  // One read of the whole file (a byte-wise istreambuf_iterator copy cost 6% of the eval pipeline).
  file.seekg(0, std::ios::end);
  const std::streamoff length = file.tellg();
  if (length < 0) throw Error(path + ": cannot find the file's size");
  file.seekg(0, std::ios::beg);
  std::vector<uint8_t> bytes(static_cast<size_t>(length));
  if (!file.read(reinterpret_cast<char*>(bytes.data()), length)) throw Error(path + ": read error");
  return decode_image_memory(bytes.data(), bytes.size(), path, min_side);
}

torch::Tensor image_to_tensor(const Image& image) {
  auto tensor = torch::empty({image.height, image.width, 3}, torch::kUInt8);
  if (!image.rgb.empty()) std::memcpy(tensor.data_ptr<uint8_t>(), image.rgb.data(), image.rgb.size());
  return tensor;
}

}  // namespace graft
