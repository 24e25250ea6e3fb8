// graft's image data pipeline: decoding (JPEG via libjpeg-turbo, PNG via libpng), the torchvision/timm
// transforms, datasets (image folders, IDX files such as Fashion-MNIST) and a multi-threaded loader whose
// batches are identical whatever the thread timing.
//
// Everything random takes an explicit std::mt19937_64, so a pipeline repeats exactly under a seed.
// Geometric transforms work on 8-bit images (as torchvision does on PIL images), photometric ones on
// float planes in [0, 1] (as torchvision does on tensors); the result is a (3, H, W) float tensor.
#pragma once
#include <torch/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace graft {

// ---------------------------------------------------------------------------------------------------
// Decoding (src/data/image_decode.cpp)
// ---------------------------------------------------------------------------------------------------

// An 8-bit RGB image, rows top to bottom, pixels interleaved: rgb[(y * width + x) * 3 + c].
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // (H, W, 3)
};

// Images whose header claims more pixels than this are refused before anything is allocated
// (decompression bombs); 64 Mi pixels is 8192 x 8192.
constexpr int64_t kMaxImagePixels = int64_t{64} * 1024 * 1024;

// Decodes a JPEG or PNG file (format found from its first bytes, not its name) to 8-bit RGB.
// min_side > 0 lets JPEGs decode at 1/2, 1/4 or 1/8 scale (DCT scaling, much faster for big photos) when
// the scaled shorter side is still >= min_side; PNGs always decode at full size.
// Grayscale -> RGB; CMYK/YCCK JPEG -> RGB (Adobe-inverted when the Adobe marker is present); PNG
// palette, gray, 16-bit (high byte kept) and interlaced images -> RGB; alpha is dropped, as PIL's
// .convert('RGB') does.
// Throws graft::FormatError naming the file for corrupt, truncated, unsupported or oversized images,
// graft::Error when the file cannot be read.
Image decode_image(const std::string& path, int min_side = 0);
// The same for bytes already in memory; `name` is used in error messages.
Image decode_image_memory(const uint8_t* data, size_t size, const std::string& name, int min_side = 0);
Image decode_image_memory(const std::vector<uint8_t>& bytes, const std::string& name, int min_side = 0);

// (H, W, 3) uint8 tensor holding a copy of the image.
torch::Tensor image_to_tensor(const Image& image);

// ---------------------------------------------------------------------------------------------------
// Transforms (src/data/transforms.cpp)
// ---------------------------------------------------------------------------------------------------

// A rectangle of source pixels; may reach outside the image for crop() (zero padding).
struct CropBox {
  int left = 0;
  int top = 0;
  int width = 0;
  int height = 0;
};

// Bilinear resize of `box` (default: the whole image) to out_width x out_height. antialias = true is
// PIL's / torchvision's antialias=True BILINEAR (a triangle filter widened by the scale factor when
// downscaling); antialias = false is plain half-pixel bilinear (torch interpolate align_corners=False,
// TF half_pixel_centers). Both are identical when upscaling. Output rounded to nearest.
Image resize(const Image& image, int out_width, int out_height, bool antialias = true);
Image resize(const Image& image, const CropBox& box, int out_width, int out_height, bool antialias = true);
// torchvision Resize(int): the shorter side becomes `shorter`, the longer int(shorter * long / short).
Image resize_shorter_side(const Image& image, int shorter, bool antialias = true);

// torchvision center_crop's box: offsets int(round((W - w) / 2)) with round-half-to-even.
CropBox center_crop_box(int width, int height, int crop_width, int crop_height);
// Copies the box; pixels outside the image are 0 (torchvision pads center crops that way).
Image crop(const Image& image, const CropBox& box);
Image center_crop(const Image& image, int crop_width, int crop_height);

// torchvision RandomResizedCrop.get_params: up to 10 draws of area fraction in [scale_min, scale_max]
// and log-uniform aspect ratio in [ratio_min, ratio_max]; then the central crop clamped to the ratio.
CropBox random_resized_crop_box(int width, int height, std::mt19937_64& rng, double scale_min = 0.08,
                                double scale_max = 1.0, double ratio_min = 3.0 / 4.0,
                                double ratio_max = 4.0 / 3.0);

Image hflip(const Image& image);
// Counter-clockwise rotation about the centre, same size, bilinear, zero fill (torchvision rotate with
// expand=False, fill=0, but bilinear rather than its default nearest).
Image rotate(const Image& image, double degrees);

// Three float planes in [0, 1] (after normalize(), any range).
struct PlanarImage {
  int width = 0;
  int height = 0;
  std::vector<float> data;  // (3, H, W)
};
PlanarImage to_planar(const Image& image);  // / 255
// torchvision's tensor colour adjustments (clamped to [0, 1]); gray = 0.2989 R + 0.587 G + 0.114 B.
void adjust_brightness(PlanarImage& image, double factor);
void adjust_contrast(PlanarImage& image, double factor);    // blend with the mean gray level
void adjust_saturation(PlanarImage& image, double factor);  // blend with the per-pixel gray
// ColorJitter(brightness=s, contrast=s, saturation=s): factors uniform in [max(0, 1-s), 1+s], applied in
// a random order.
void color_jitter(PlanarImage& image, double strength, std::mt19937_64& rng);
// Bilinear resize with align_corners=True on float planes (TF.js resizeBilinear(x, size, true); torch
// interpolate(mode="bilinear", align_corners=True)): no rounding to 8 bits.
PlanarImage resize_align_corners(const PlanarImage& image, int out_width, int out_height);
void normalize(PlanarImage& image, const std::array<double, 3>& mean, const std::array<double, 3>& std);
torch::Tensor planar_to_tensor(const PlanarImage& image);  // (3, H, W) float32

// How a dataset turns a decoded image into a network input.
struct TransformConfig {
  int64_t size = 224;       // output is size x size
  double crop_pct = 0.875;  // eval: resize the shorter side to floor(size / crop_pct), then centre crop
  std::array<double, 3> mean{0.485, 0.456, 0.406};
  std::array<double, 3> std{0.229, 0.224, 0.225};
  bool train = false;  // train: RandomResizedCrop + flip (+ rotation, jitter); eval: resize + centre crop
  bool hflip = true;   // train only: horizontal flip with p = 0.5
  double rotation_degrees = 0;  // train only: rotation uniform in [-d, d]
  double jitter = 0;            // train only: brightness/contrast/saturation strength
  double scale_min = 0.08;      // train only: RandomResizedCrop's smallest area fraction
  bool antialias = true;        // false: plain bilinear (TF/Keras-style preprocessing)
  // eval: no crop; the whole image, as float pixels / 255, resized to size x size by bilinear
  // interpolation with aligned corners (TF.js resizeBilinear(alignCorners=true), as nsfwjs feeds it)
  bool align_corners = false;
  bool dct_scaling = true;  // let JPEGs decode at 1/2..1/8 when large enough (see decode_min_side)
};

struct PretrainedCfg;  // graft/model.h

// What a model expects of its input images, as its pretrained weights were evaluated (timm's
// pretrained_cfg): kept in a run directory and turned into transforms by transform_for.
struct Preprocessing {
  int64_t size = 224;  // square input
  double crop_pct = 0.875;
  std::array<double, 3> mean{0.485, 0.456, 0.406};
  std::array<double, 3> std{0.229, 0.224, 0.225};
  std::string interpolation = "bilinear";  // or "bilinear-align-corners" (TF.js ports)
  static Preprocessing from_cfg(const PretrainedCfg& cfg);
};
// The eval or train transform of a run's (or a model's) preprocessing.
TransformConfig transform_for(const Preprocessing& preprocessing, bool train);

// The smallest shorter side a decoded image needs for `config` (0 when dct_scaling is off): eval needs
// floor(size / crop_pct); train needs ceil(size / sqrt(scale_min)) so that even a minimum-area crop is
// not upsampled much.
int decode_min_side(const TransformConfig& config);
// Applies the eval or train pipeline to a decoded image: (3, size, size) float32, normalised.
torch::Tensor transform_image(const Image& image, const TransformConfig& config, std::mt19937_64& rng);
// decode_image(path, decode_min_side(config)) then transform_image.
torch::Tensor load_and_transform(const std::string& path, const TransformConfig& config,
                                 std::mt19937_64& rng);

// ---------------------------------------------------------------------------------------------------
// Datasets (src/data/image_folder.cpp, src/data/idx.cpp)
// ---------------------------------------------------------------------------------------------------

struct Sample {
  torch::Tensor image;  // (3, H, W) float32
  int64_t label = 0;
  std::string id;  // file path, or file#index for samples packed in one file
};

// What the loader needs. get() must be safe to call from several threads at once; it may throw
// graft::FormatError for a corrupt file (the loader then skips that sample).
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual size_t size() const = 0;
  virtual Sample get(size_t index, std::mt19937_64& rng) const = 0;
  virtual const std::vector<std::string>& classes() const = 0;
  virtual int64_t label(size_t index) const = 0;  // without decoding
  virtual std::string id(size_t index) const = 0;
};

struct LabeledPath {
  std::string path;
  int64_t label = 0;
};

// A listing: sorted class names and the (path, label) pairs, sorted by path.
struct ImageList {
  std::string root;
  std::vector<std::string> classes;
  std::vector<LabeledPath> samples;
  std::vector<std::string> skipped;  // what the scan left out and why (links that loop or lead elsewhere)
};

// root/<class>/**/*.{jpg,jpeg,png} (extension case-insensitive; names starting with '.' skipped), as
// torchvision's ImageFolder: classes sorted by name, label = index. Throws graft::Error naming the path
// when root is missing, has no class folders, a class folder has no images, or there are no images.
// Symbolic links are followed, but each real folder is walked and each real file counted once, and a link
// from one class folder into another part of root is not followed; `skipped` says what was left out.
ImageList scan_image_folder(const std::string& root);
// The same listing with the class names imposed (for a validation folder): a class folder not in
// `classes` is an error; missing or empty class folders are allowed.
ImageList scan_image_folder(const std::string& root, const std::vector<std::string>& classes);

// A seeded split stratified by class, the one every task's data uses: per class (in label order) its
// members are shuffled (portable_shuffle, the same on every standard library) and the first
// round(n * fraction) go to validation, at most n - 1 so that every class keeps a training sample. Both
// parts list indices into `samples` in the listing's order.
struct SplitIndices {
  std::vector<size_t> train, val;
};
SplitIndices stratified_split(const std::vector<LabeledPath>& samples, size_t classes, double fraction,
                              uint64_t seed);

struct ImageSplits {
  ImageList train;
  ImageList val;              // empty samples when there is no validation data
  bool from_folders = false;  // true: root/train + root/{val,validation,test}; false: a seeded split
};
// When root has train/ and one of val/, validation/, test/ (in that order of preference) those are the
// splits (classes from train/). Otherwise root (or root/train when only that exists) is split per class:
// round(n * val_split) of each class's images, chosen by `seed`, go to val (at least one stays in train).
// val_split in [0, 1); 0 -> no val.
ImageSplits discover_image_splits(const std::string& root, double val_split, uint64_t seed);

// An image folder (or listing) served through a transform; id = file path.
class ImageFolder : public Dataset {
 public:
  ImageFolder(const std::string& root, TransformConfig transform);
  ImageFolder(ImageList list, TransformConfig transform);
  size_t size() const override { return list_.samples.size(); }
  Sample get(size_t index, std::mt19937_64& rng) const override;
  const std::vector<std::string>& classes() const override { return list_.classes; }
  int64_t label(size_t index) const override;
  std::string id(size_t index) const override;
  const ImageList& list() const { return list_; }
  const TransformConfig& transform() const { return transform_; }

 private:
  ImageList list_;
  TransformConfig transform_;
};

// IDX files (http://yann.lecun.com/exdb/mnist/ format), plain or gzipped: big-endian magic 0x0000TTDD
// (T = 0x08 unsigned byte, the only type read here; D = number of dimensions), D big-endian uint32
// sizes, then the data. Sizes are checked against the data actually present (read incrementally, so a
// corrupt header cannot cause a huge allocation); trailing bytes are an error.
struct IdxImages {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> pixels;   // (count, rows, cols)
  torch::Tensor tensor() const;  // (count, rows, cols) uint8 copy
};
IdxImages load_idx_images(const std::string& path);             // 3 dimensions
std::vector<int64_t> load_idx_labels(const std::string& path);  // 1 dimension

// Grayscale images from IDX files served as RGB samples through a transform (size etc. from the config;
// 28x28 images go through the same resize as photos). id = "<images file>#<index>".
class IdxImageDataset : public Dataset {
 public:
  // Keeps `limit` samples when limit > 0: the first ones, or a random subset (in index order) chosen by
  // subset_seed.
  IdxImageDataset(const std::string& images_path, const std::string& labels_path,
                  std::vector<std::string> classes, TransformConfig transform, size_t limit = 0,
                  std::optional<uint64_t> subset_seed = std::nullopt);
  size_t size() const override { return indices_.size(); }
  Sample get(size_t index, std::mt19937_64& rng) const override;
  const std::vector<std::string>& classes() const override { return classes_; }
  int64_t label(size_t index) const override;
  std::string id(size_t index) const override;
  // The grayscale image as RGB, before any transform.
  Image image(size_t index) const;

 private:
  std::string images_path_;
  IdxImages images_;
  std::vector<int64_t> labels_;
  std::vector<size_t> indices_;  // record numbers in the files; images_ and labels_ hold these records only
  std::vector<std::string> classes_;
  TransformConfig transform_;
};

// "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
const std::vector<std::string>& fashion_mnist_classes();
// Where Debian's dataset-fashion-mnist package puts the files.
constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] under dir.
std::unique_ptr<IdxImageDataset> load_fashion_mnist(const std::string& dir, bool train,
                                                    const TransformConfig& transform, size_t limit = 0,
                                                    std::optional<uint64_t> subset_seed = std::nullopt);

// ---------------------------------------------------------------------------------------------------
// Loader (src/data/loader.cpp)
// ---------------------------------------------------------------------------------------------------

struct Batch {
  torch::Tensor images;  // (N, 3, H, W) float32
  torch::Tensor labels;  // (N) int64
  std::vector<std::string> ids;
};

struct LoaderOptions {
  int64_t batch_size = 32;
  bool shuffle = true;     // a fresh permutation per epoch, from (seed, epoch)
  bool drop_last = false;  // drop the last incomplete batch
  int workers = 0;         // decoding threads; 0 = std::thread::hardware_concurrency()
  // Batches decoded ahead of the consumer (memory: this many batches of samples). Workers share each
  // batch, so a few suffice; 0 = max(2, 1 + ceil(2 * workers / batch_size)).
  int prefetch_batches = 0;
  uint64_t seed = 0;
};

// Batches of a Dataset, decoded by worker threads ahead of the consumer.
//
// Determinism: batch k of epoch e holds positions [k*B, (k+1)*B) of the epoch's order (a permutation
// seeded from (seed, e) when shuffling), and sample i's rng is seeded from (seed, e, i); batches come
// back in order. So the batches depend only on (dataset, options, epoch), never on thread timing or the
// number of workers.
//
// Corrupt files: a sample whose get() throws graft::FormatError is left out, so its batch is shorter
// (batches are NOT refilled from later samples, which would make every batch depend on all the
// earlier ones). The file is named once on stderr, remembered (not decoded again in later epochs) and
// counted in skipped_files(). A batch whose every sample is skipped is not returned at all. Any other
// exception from get() is rethrown by next().
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, LoaderOptions options);
  ~DataLoader();  // stops and joins the workers, even mid-epoch
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Starts (or restarts) an epoch; work still in flight for a previous epoch is discarded.
  void start_epoch(int64_t epoch);
  // The next batch of the current epoch, or nullopt when the epoch is over (or none was started).
  std::optional<Batch> next();

  size_t num_batches() const;    // per epoch, before any skipping
  size_t skipped_files() const;  // distinct files skipped so far
  int workers() const;
  const Dataset& dataset() const { return *dataset_; }

 private:
  struct State;
  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions options_;
  std::unique_ptr<State> state_;
};

}  // namespace graft
