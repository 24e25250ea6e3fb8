// IDX files (the MNIST format, http://yann.lecun.com/exdb/mnist/ "FILE FORMATS"), plain or gzipped,
// read through zlib's gz* API (which passes uncompressed files through unchanged), and a Dataset serving
// IDX images, e.g. Fashion-MNIST (github.com/zalandoresearch/fashion-mnist, Debian dataset-fashion-mnist).
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <stdexcept>

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

// An IDX file: the header checked when opened, then its data read whole or as a subset of its records.
class IdxFile {
 public:
  IdxFile(const std::string& path, size_t expected_dims, const char* what)
      : path_(path), what_(what), reader_(path) {
    uint8_t magic[4];
    if (reader_.read(magic, 4) != 4)
      throw FormatError(path, "file too short for an IDX header (4-byte magic)");
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
    for (size_t d = 0; d < expected_dims; ++d) {
      uint8_t b[4];
      if (reader_.read(b, 4) != 4) throw FormatError(path, "truncated IDX header (dimension sizes)");
      const int64_t n = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
      if (n == 0) throw FormatError(path, "IDX dimension " + std::to_string(d) + " is 0");
      if (total_ > kMaxIdxBytes / n) throw FormatError(path, "IDX header claims an impossibly large array");
      total_ *= n;
      dims_.push_back(n);
    }
  }

  const std::vector<int64_t>& dims() const { return dims_; }

  // Every record (keep null), or only the records `keep` lists (sorted indices along the first
  // dimension), read in 1 MiB steps: memory holds what is kept, whatever size the header claims, and a
  // corrupt header claiming terabytes fails at the real end of the data instead of allocating. With
  // `whole_file`, the data after the last kept record is read too, so that a truncated file or bytes after
  // the announced data are refused.
  std::vector<uint8_t> read(const std::vector<size_t>* keep, bool whole_file) {
    const int64_t record = total_ / dims_[0];
    std::vector<uint8_t> data;
    if (keep) {
      data.reserve(keep->size() * size_t(record));
      for (size_t index : *keep) {
        skip_to(int64_t(index) * record);
        const size_t old = data.size();
        data.resize(old + size_t(record));
        take(data.data() + old, record);
      }
    } else {
      while (position_ < total_) {
        const size_t old = data.size();
        const int64_t step = std::min<int64_t>(int64_t(kChunk), total_ - position_);
        data.resize(old +
                    size_t(step));  // grows geometrically: memory stays within 2x of what the file holds
        take(data.data() + old, step);
      }
    }
    if (!whole_file) return data;
    skip_to(total_);
    uint8_t extra;
    if (reader_.read(&extra, 1) != 0) {
      throw FormatError(path_,
                        "IDX file has bytes after the " + std::to_string(total_) + " the header announces",
                        "corrupt header or concatenated files");
    }
    return data;
  }

 private:
  void take(uint8_t* out, int64_t bytes) {
    const size_t got = reader_.read(out, size_t(bytes));
    position_ += int64_t(got);
    if (got < size_t(bytes)) {
      const std::string zlib = reader_.error();
      throw FormatError(path_, "truncated IDX data: the header says " + std::to_string(total_) +
                                   " bytes of " + what_ + ", the file has " + std::to_string(position_) +
                                   (zlib.empty() ? "" : " (" + zlib + ")"));
    }
  }
  void skip_to(int64_t offset) {
    std::vector<uint8_t> scratch;
    while (position_ < offset) {
      const int64_t step = std::min<int64_t>(int64_t(kChunk), offset - position_);
      scratch.resize(size_t(step));
      take(scratch.data(), step);
    }
  }

  std::string path_;
  const char* what_;
  GzReader reader_;
  std::vector<int64_t> dims_;
  int64_t total_ = 1;     // bytes of data the header announces
  int64_t position_ = 0;  // bytes of data read so far
};

constexpr const char* kImagesWhat = "images (count x rows x columns)";
constexpr const char* kLabelsWhat = "labels (count)";

// Which records a dataset keeps: all; the first `limit`; or a random subset chosen by subset_seed, in index
// order (partial Fisher-Yates with our own draws: the same subset on every standard library).
std::vector<size_t> kept_records(size_t total, size_t limit, std::optional<uint64_t> subset_seed) {
  std::vector<size_t> indices(total);
  for (size_t i = 0; i < total; ++i) indices[i] = i;
  if (limit == 0 || limit >= total) return indices;
  if (subset_seed) {
    std::mt19937_64 rng(*subset_seed);
    for (size_t i = 0; i < limit; ++i) std::swap(indices[i], indices[i + rng() % (total - i)]);
    indices.resize(limit);
    std::sort(indices.begin(), indices.end());
  } else {
    indices.resize(limit);
  }
  return indices;
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
  IdxFile file(path, 3, kImagesWhat);
  IdxImages images;
  images.count = file.dims()[0];
  images.rows = file.dims()[1];
  images.cols = file.dims()[2];
  images.pixels = file.read(nullptr, true);
  return images;
}

std::vector<int64_t> load_idx_labels(const std::string& path) {
  IdxFile file(path, 1, kLabelsWhat);
  const std::vector<uint8_t> bytes = file.read(nullptr, true);
  return std::vector<int64_t>(bytes.begin(), bytes.end());
}

IdxImageDataset::IdxImageDataset(const std::string& images_path, const std::string& labels_path,
                                 std::vector<std::string> classes, TransformConfig transform, size_t limit,
                                 std::optional<uint64_t> subset_seed)
    : images_path_(images_path), classes_(std::move(classes)), transform_(std::move(transform)) {
  // Both headers first: the subset is chosen before any data is read, and only it is kept in memory (a
  // gzip bomb's header may announce gigabytes that --limit 10 never needs).
  IdxFile images(images_path, 3, kImagesWhat);
  IdxFile labels(labels_path, 1, kLabelsWhat);
  const int64_t count = images.dims()[0];
  if (labels.dims()[0] != count) {
    throw FormatError(labels_path, "has " + std::to_string(labels.dims()[0]) + " labels but " + images_path +
                                       " has " + std::to_string(count) + " images");
  }
  if (images.dims()[1] > 65535 || images.dims()[2] > 65535) {
    throw FormatError(images_path, "IDX images of " + std::to_string(images.dims()[1]) + "x" +
                                       std::to_string(images.dims()[2]) +
                                       " are too large for an image dataset");
  }
  indices_ = kept_records(size_t(count), limit, subset_seed);
  const bool all = indices_.size() == size_t(count);
  // The first `limit` records need nothing after them; a random subset is spread over the whole file.
  const bool whole_file = all || subset_seed.has_value();
  images_.count = int64_t(indices_.size());
  images_.rows = images.dims()[1];
  images_.cols = images.dims()[2];
  images_.pixels = images.read(all ? nullptr : &indices_, whole_file);
  const std::vector<uint8_t> label_bytes = labels.read(all ? nullptr : &indices_, whole_file);
  labels_.assign(label_bytes.begin(), label_bytes.end());
  for (size_t i = 0; i < labels_.size(); ++i) {
    if (labels_[i] >= int64_t(classes_.size())) {
      throw FormatError(labels_path, "label " + std::to_string(labels_[i]) + " at index " +
                                         std::to_string(indices_[i]) + " but only " +
                                         std::to_string(classes_.size()) + " class names");
    }
  }
}

Image IdxImageDataset::image(size_t index) const {
  const size_t source = index;  // images_ holds the kept records only, in indices_ order
  if (index >= indices_.size())
    throw std::out_of_range("IdxImageDataset::image: index " + std::to_string(index));
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
  return labels_.at(index);  // the kept records only, in indices_ order
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
