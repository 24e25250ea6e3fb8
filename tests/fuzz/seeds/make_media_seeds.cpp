// Writes the binary seeds of tests/fuzz/corpus/: tiny Keras-style .h5 files (libhdf5), PNGs (libpng) and
// JPEGs (TurboJPEG), all made up here. Build and run: tests/fuzz/seeds/make_media_seeds.sh.
#include <hdf5.h>
#include <png.h>
#include <turbojpeg.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::string root;

void string_attribute(hid_t object, const char* name, const std::vector<std::string>& values, bool variable) {
  hid_t type = H5Tcopy(H5T_C_S1);
  size_t longest = 1;
  for (const auto& v : values) longest = std::max(longest, v.size());
  H5Tset_size(type, variable ? H5T_VARIABLE : longest);
  const hsize_t n = values.size();
  hid_t space = values.size() == 1 && variable ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr);
  hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (variable) {
    std::vector<const char*> pointers;
    for (const auto& v : values) pointers.push_back(v.c_str());
    H5Awrite(attribute, type, pointers.data());
  } else {
    std::vector<char> buffer(longest * values.size(), '\0');
    for (size_t i = 0; i < values.size(); ++i)
      std::memcpy(&buffer[i * longest], values[i].data(), values[i].size());
    H5Awrite(attribute, type, buffer.data());
  }
  H5Aclose(attribute);
  H5Sclose(space);
  H5Tclose(type);
}

void dataset(hid_t group, const char* name, std::vector<hsize_t> dims, hid_t file_type) {
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  std::vector<float> values(n);
  for (hsize_t i = 0; i < n; ++i) values[i] = 0.25f * static_cast<float>(i) - 1.0f;
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(group, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  H5Dclose(d);
  H5Sclose(space);
}

// A Dense(2) layer on 3 inputs, as Keras 2 saves it: weights-only (model.save_weights) or a full model.
void write_h5(const std::string& name, bool full_model, bool variable_strings, hid_t file_type) {
  const std::string path = root + "/keras_h5/" + name;
  hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t weights = file;
  if (full_model) {
    const char* config =
        R"({"class_name": "Sequential", "config": {"name": "seq", "layers": [{"class_name": "InputLayer", )"
        R"("config": {"batch_input_shape": [null, 3], "dtype": "float32", "name": "in"}}, {"class_name": )"
        R"("Dense", "config": {"name": "dense", "units": 2, "activation": "linear", "use_bias": true}}]}})";
    string_attribute(file, "model_config", {config}, variable_strings);
    string_attribute(file, "keras_version", {"2.4.0"}, variable_strings);
    weights = H5Gcreate2(file, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  }
  string_attribute(weights, "layer_names", {"in", "dense"}, variable_strings);
  string_attribute(weights, "backend", {"tensorflow"}, variable_strings);
  hid_t in = H5Gcreate2(weights, "in", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  const hsize_t zero = 0;
  hid_t empty_space = H5Screate_simple(1, &zero, nullptr);  // Keras writes no names as an empty float array
  hid_t empty = H5Acreate2(in, "weight_names", H5T_IEEE_F32LE, empty_space, H5P_DEFAULT, H5P_DEFAULT);
  H5Aclose(empty);
  H5Sclose(empty_space);
  H5Gclose(in);
  hid_t dense = H5Gcreate2(weights, "dense", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  string_attribute(dense, "weight_names", {"dense/kernel:0", "dense/bias:0"}, variable_strings);
  hid_t inner = H5Gcreate2(dense, "dense", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  dataset(inner, "kernel:0", {3, 2}, file_type);
  dataset(inner, "bias:0", {2}, file_type);
  H5Gclose(inner);
  H5Gclose(dense);
  if (full_model) H5Gclose(weights);
  H5Fclose(file);
}

void write_png(const std::string& name, int width, int height, int color_type, int bit_depth,
               bool interlace) {
  const std::string path = root + "/image/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_init_io(png, f);
  png_set_IHDR(png, info, width, height, bit_depth, color_type,
               interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (color_type == PNG_COLOR_TYPE_PALETTE) {
    png_color palette[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    png_set_PLTE(png, info, palette, 4);
  }
  png_write_info(png, info);
  const int passes = png_set_interlace_handling(png);
  const size_t row_bytes = png_get_rowbytes(png, info);
  std::vector<png_byte> row(row_bytes);
  for (int pass = 0; pass < passes; ++pass)
    for (int y = 0; y < height; ++y) {
      for (size_t x = 0; x < row_bytes; ++x)
        row[x] = static_cast<png_byte>(color_type == PNG_COLOR_TYPE_PALETTE
                                           ? (x + y) % 4 * (bit_depth == 8 ? 1 : 0x55)
                                           : x * 37 + y * 11);
      png_write_row(png, row.data());
    }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}

void write_jpeg(const std::string& name, int width, int height, int pixel_format, int subsamp, int quality) {
  const int channels = tjPixelSize[pixel_format];
  std::vector<unsigned char> pixels(static_cast<size_t>(width * height * channels));
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 29 % 251);
  tjhandle tj = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  tjCompress2(tj, pixels.data(), width, 0, height, pixel_format, &out, &size, subsamp, quality, 0);
  FILE* f = std::fopen((root + "/image/" + name).c_str(), "wb");
  std::fwrite(out, 1, size, f);
  std::fclose(f);
  tjFree(out);
  tjDestroy(tj);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_media_seeds CORPUS_DIR\n");
    return 2;
  }
  root = argv[1];
  write_h5("weights_only_vlen.h5", false, true, H5T_IEEE_F32LE);
  write_h5("full_model_vlen.h5", true, true, H5T_IEEE_F32LE);
  write_h5("weights_only_fixed.h5", false, false, H5T_IEEE_F32BE);
  write_h5("full_model_fixed_f64.h5", true, false, H5T_IEEE_F64LE);
  write_png("rgb8.png", 8, 6, PNG_COLOR_TYPE_RGB, 8, false);
  write_png("rgba16_interlaced.png", 5, 7, PNG_COLOR_TYPE_RGB_ALPHA, 16, true);
  write_png("gray1.png", 9, 3, PNG_COLOR_TYPE_GRAY, 1, false);
  write_png("gray_alpha8.png", 4, 4, PNG_COLOR_TYPE_GRAY_ALPHA, 8, false);
  write_png("palette2.png", 6, 6, PNG_COLOR_TYPE_PALETTE, 2, false);
  write_jpeg("rgb420.jpg", 16, 16, TJPF_RGB, TJSAMP_420, 75);
  write_jpeg("rgb444.jpg", 9, 7, TJPF_RGB, TJSAMP_444, 90);
  write_jpeg("gray.jpg", 8, 8, TJPF_GRAY, TJSAMP_GRAY, 50);
  write_jpeg("cmyk.jpg", 8, 8, TJPF_CMYK, TJSAMP_444, 80);
  return 0;
}
