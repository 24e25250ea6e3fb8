// IDX files (the MNIST format, http://yann.lecun.com/exdb/mnist/ "FILE FORMATS"), plain or gzipped,
// read through zlib's gz* API (which passes uncompressed files through unchanged), and a Dataset serving
// IDX images, e.g. Fashion-MNIST (github.com/zalandoresearch/fashion-mnist, Debian dataset-fashion-mnist).
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "graft/data.h"
#include "graft/errors.h"

namespace graft {
namespace {

constexpr uint8_t kTypeUnsignedByte = 0x08;
constexpr int64_t kMaxIdxBytes = int64_t{1} << 40;  // only to keep the size arithmetic from overflowing
constexpr size_t kChunk = size_t{1} << 20;

class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path), file_(gzopen(path.c_str(), "rb")) {
    if (!file_) throw Error(path + ": cannot open IDX file");
    gzbuffer(file_, 1 << 17);
  }
  ~GzReader() { gzclose(file_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to `size` bytes; fewer only at the end of the data. Corrupt compressed data throws.
  size_t read(uint8_t* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const unsigned want = static_cast<unsigned>(std::min(size - done, kChunk));
      const int got = gzread(file_, out + done, want);
      if (got < 0 || (got == 0 && !gzeof(file_))) throw FormatError(path_, "corrupt gzip data: " + error());
      if (got == 0) break;
      done += size_t(got);
    }
    // A gzip stream cut short fails above ("unexpected end of file"); a short plain file returns short.
    return done;
  }
  std::string error() {
    int code = Z_OK;
    const char* message = gzerror(file_, &code);
    return code == Z_OK ? std::string() : std::string(message);
  }

 private:
  std::string path_;
  gzFile file_;
};

// Header checks, then the data read in 1 MiB steps so that a corrupt header claiming terabytes fails at
// the real end of the data instead of allocating.
std::vector<uint8_t> read_idx(const std::string& path, size_t expected_dims, const char* what,
                              std::vector<int64_t>* dims) {
  GzReader reader(path);
  uint8_t magic[4];
  if (reader.read(magic, 4) != 4) throw FormatError(path, "file too short for an IDX header (4-byte magic)");
  if (magic[0] != 0 || magic[1] != 0) {
    char text[64];
    std::snprintf(text, sizeof(text), "0x%02x%02x%02x%02x", magic[0], magic[1], magic[2], magic[3]);
    throw FormatError(path, std::string("bad IDX magic ") + text + ", expected 0x0000TTDD",
                      "not an IDX file?");
  }
  if (magic[2] != kTypeUnsignedByte) {
    char text[16];
    std::snprintf(text, sizeof(text), "0x%02x", magic[2]);
    throw FormatError(path, std::string("IDX element type ") + text + " is not supported",
                      "graft reads unsigned bytes (0x08)");
  }
  if (magic[3] != expected_dims) {
    throw FormatError(path, "IDX file has " + std::to_string(magic[3]) + " dimensions, expected " +
                                std::to_string(expected_dims) + " for " + what);
  }
  int64_t total = 1;
  dims->clear();
  for (size_t d = 0; d < expected_dims; ++d) {
    uint8_t b[4];
    if (reader.read(b, 4) != 4) throw FormatError(path, "truncated IDX header (dimension sizes)");
    const int64_t n = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
    if (n == 0) throw FormatError(path, "IDX dimension " + std::to_string(d) + " is 0");
    if (total > kMaxIdxBytes / n) throw FormatError(path, "IDX header claims an impossibly large array");
    total *= n;
    dims->push_back(n);
  }
  std::vector<uint8_t> data;
  while (int64_t(data.size()) < total) {
    const size_t old = data.size();
    const size_t step = std::min<size_t>(kChunk, size_t(total) - old);
    data.resize(old + step);  // grows geometrically: memory stays within 2x of what the file holds
    const size_t got = reader.read(data.data() + old, step);
    if (got < step) {
      const std::string zlib = reader.error();
      throw FormatError(path, "truncated IDX data: the header says " + std::to_string(total) + " bytes of " +
                                  what + ", the file has " + std::to_string(old + got) +
                                  (zlib.empty() ? "" : " (" + zlib + ")"));
    }
  }
  uint8_t extra;
  if (reader.read(&extra, 1) != 0) {
    throw FormatError(path, "IDX file has bytes after the " + std::to_string(total) + " the header announces",
                      "corrupt header or concatenated files");
  }
  return data;
}

std::string first_existing(const std::string& dir, const std::string& name) {
  for (const std::string& candidate : {name + ".gz", name}) {
    const std::string path = (std::filesystem::path(dir) / candidate).string();
    std::error_code error;
    if (std::filesystem::exists(path, error)) return path;
  }
  throw Error((std::filesystem::path(dir) / name).string() +
              "[.gz]: Fashion-MNIST file not found (on Debian: apt install dataset-fashion-mnist)");
}

}  // namespace

torch::Tensor IdxImages::tensor() const {
  auto out = torch::empty({count, rows, cols}, torch::kUInt8);
  if (!pixels.empty()) std::copy(pixels.begin(), pixels.end(), out.data_ptr<uint8_t>());
  return out;
}

IdxImages load_idx_images(const std::string& path) {
  std::vector<int64_t> dims;
  IdxImages images;
  images.pixels = read_idx(path, 3, "images (count x rows x columns)", &dims);
  images.count = dims[0];
  images.rows = dims[1];
  images.cols = dims[2];
  return images;
}

std::vector<int64_t> load_idx_labels(const std::string& path) {
  std::vector<int64_t> dims;
  const std::vector<uint8_t> bytes = read_idx(path, 1, "labels (count)", &dims);
  return std::vector<int64_t>(bytes.begin(), bytes.end());
}

IdxImageDataset::IdxImageDataset(const std::string& images_path, const std::string& labels_path,
                                 std::vector<std::string> classes, TransformConfig transform, size_t limit,
                                 std::optional<uint64_t> subset_seed)
    : images_path_(images_path),
      images_(load_idx_images(images_path)),
      labels_(load_idx_labels(labels_path)),
      classes_(std::move(classes)),
      transform_(std::move(transform)) {
  if (int64_t(labels_.size()) != images_.count) {
    throw FormatError(labels_path, "has " + std::to_string(labels_.size()) + " labels but " + images_path +
                                       " has " + std::to_string(images_.count) + " images");
  }
  if (images_.rows > 65535 || images_.cols > 65535) {
    throw FormatError(images_path, "IDX images of " + std::to_string(images_.rows) + "x" +
                                       std::to_string(images_.cols) + " are too large for an image dataset");
  }
  for (size_t i = 0; i < labels_.size(); ++i) {
    if (labels_[i] >= int64_t(classes_.size())) {
      throw FormatError(labels_path, "label " + std::to_string(labels_[i]) + " at index " +
                                         std::to_string(i) + " but only " + std::to_string(classes_.size()) +
                                         " class names");
    }
  }
  const size_t total = labels_.size();
  indices_.resize(total);
  for (size_t i = 0; i < total; ++i) indices_[i] = i;
  if (limit > 0 && limit < total) {
    if (subset_seed) {
      // Partial Fisher-Yates with our own draws (same subset on every standard library), then index order.
      std::mt19937_64 rng(*subset_seed);
      for (size_t i = 0; i < limit; ++i) std::swap(indices_[i], indices_[i + rng() % (total - i)]);
      indices_.resize(limit);
      std::sort(indices_.begin(), indices_.end());
    } else {
      indices_.resize(limit);
    }
  }
}

Image IdxImageDataset::image(size_t index) const {
  const size_t source = indices_.at(index);
  const size_t count = size_t(images_.rows * images_.cols);
  Image image;
  image.width = static_cast<int>(images_.cols);
  image.height = static_cast<int>(images_.rows);
  image.rgb.resize(count * 3);
  const uint8_t* gray = &images_.pixels[source * count];
  for (size_t i = 0; i < count; ++i) image.rgb[i * 3] = image.rgb[i * 3 + 1] = image.rgb[i * 3 + 2] = gray[i];
  return image;
}

Sample IdxImageDataset::get(size_t index, std::mt19937_64& rng) const {
  return Sample{transform_image(image(index), transform_, rng), label(index), id(index)};
}

int64_t IdxImageDataset::label(size_t index) const {
  return labels_[indices_.at(index)];
}

std::string IdxImageDataset::id(size_t index) const {
  return images_path_ + "#" + std::to_string(indices_.at(index));
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

std::unique_ptr<IdxImageDataset> load_fashion_mnist(const std::string& dir, bool train,
                                                    const TransformConfig& transform, size_t limit,
                                                    std::optional<uint64_t> subset_seed) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = first_existing(dir, prefix + "-images-idx3-ubyte");
  const std::string labels = first_existing(dir, prefix + "-labels-idx1-ubyte");
  return std::make_unique<IdxImageDataset>(images, labels, fashion_mnist_classes(), transform, limit,
                                           subset_seed);
}

}  // namespace graft
