// Keras .h5 reader through libhdf5's C API (HDF5 1.10+). Mirrors Keras 2.x
// keras/saving/legacy/hdf5_format.py: load_weights_from_hdf5_group (layer_names, then each layer's
// weight_names, in that order) and load_attributes_from_hdf5_group (attributes too big for an object
// header are split into name0, name1, ...).
#include "graft/keras_h5.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>

#include "graft/errors.h"
#include "graft/json_file.h"
#include "graft/strings.h"
#include "io/child_process.h"

namespace graft {
namespace {

// Owns an HDF5 identifier; closes it with the matching H5?close.
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : id_(other.id_), close_(other.close_) { other.id_ = -1; }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// A dataset's element count above which graft refuses to allocate (16 GiB of float32), and its rank limit.
constexpr hsize_t kMaxDatasetElements = hsize_t{1} << 32;
constexpr int kMaxRank = 8;

// libhdf5 (Debian's serial build) is not thread-safe: one in-process reader at a time.
std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

// "/model_weights" + "conv1" -> "/model_weights/conv1"; the root is "/".
std::string join(const std::string& group, const std::string& name) {
  return group == "/" ? "/" + name : group + "/" + name;
}

bool attribute_exists(hid_t object, const std::string& name) {
  return H5Aexists(object, name.c_str()) > 0;
}

// Reads a string attribute (scalar or 1-D; variable- or fixed-length). An empty attribute of any type
// (Keras writes weightless layers' weight_names as an empty float array) gives an empty list.
std::vector<std::string> read_string_attribute(hid_t object, const std::string& name, const std::string& file,
                                               const std::string& where) {
  const std::string at = "attribute '" + name + "' of " + where;
  Handle attribute(H5Aopen(object, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attribute.valid()) throw FormatError(file, at + " is missing");
  Handle type(H5Aget_type(attribute.get()), H5Tclose);
  Handle space(H5Aget_space(attribute.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw FormatError(file, at + " cannot be read");
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  if (count < 0) throw FormatError(file, at + " has an unreadable shape");
  if (count == 0) return {};
  if (H5Sget_simple_extent_ndims(space.get()) > 1)
    throw FormatError(file, at + " has more than one dimension");
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw FormatError(file, at + " is not a string or list of strings");

  std::vector<std::string> out;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory.get(), H5T_VARIABLE);
    H5Tset_cset(memory.get(), H5Tget_cset(type.get()));
    std::vector<char*> strings(static_cast<size_t>(count), nullptr);
    if (H5Aread(attribute.get(), memory.get(), strings.data()) < 0)
      throw FormatError(file, at + " cannot be read");
    for (char* s : strings) {
      out.emplace_back(s ? s : "");
      if (s) H5free_memory(s);
    }
  } else {
    const size_t size = H5Tget_size(type.get());
    if (size == 0) throw FormatError(file, at + " has a zero string size");
    Handle memory(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memory.get(), size);
    H5Tset_cset(memory.get(), H5Tget_cset(type.get()));
    H5Tset_strpad(memory.get(), H5T_STR_NULLPAD);
    std::vector<char> buffer(size * static_cast<size_t>(count), '\0');
    if (H5Aread(attribute.get(), memory.get(), buffer.data()) < 0)
      throw FormatError(file, at + " cannot be read");
    for (hssize_t i = 0; i < count; ++i) {
      const char* begin = buffer.data() + static_cast<size_t>(i) * size;
      out.emplace_back(begin, strnlen(begin, size));
    }
  }
  return out;
}

// Keras splits a list attribute that would overflow the 64 KiB object header into name0, name1, ...
std::vector<std::string> read_string_list(hid_t object, const std::string& name, const std::string& file,
                                          const std::string& where) {
  if (attribute_exists(object, name)) return read_string_attribute(object, name, file, where);
  std::vector<std::string> out;
  for (int chunk = 0; attribute_exists(object, name + std::to_string(chunk)); ++chunk) {
    auto part = read_string_attribute(object, name + std::to_string(chunk), file, where);
    out.insert(out.end(), part.begin(), part.end());
  }
  if (out.empty() && !attribute_exists(object, name + "0")) {
    throw FormatError(file, "attribute '" + name + "' of " + where + " is missing");
  }
  return out;
}

std::string read_optional_string(hid_t object, const std::string& name, const std::string& file,
                                 const std::string& where) {
  if (!attribute_exists(object, name)) return "";
  const auto values = read_string_attribute(object, name, file, where);
  return values.empty() ? "" : values.front();
}

// What the walk over a Keras .h5 file finds, in file order. The walk runs in a child process by default
// (KerasStreamWriter forwards to the parent); in the same process the builder is the sink.
class KerasH5Sink {
 public:
  virtual ~KerasH5Sink() = default;
  virtual void header(const std::string& format, const std::string& keras_version,
                      const std::string& model_config) = 0;
  virtual void layer(const std::string& name) = 0;
  // Where the float32 values of this weight go; filled before tensor_done(). file_offset is where the
  // values lie in the file when they are stored plainly (contiguous native float32, no filter); a sink
  // that returns nullptr reads them from there itself.
  virtual float* tensor(const std::string& name, const std::vector<int64_t>& shape,
                        std::optional<uint64_t> file_offset) = 0;
  virtual void tensor_done() = 0;
};

// Reads a float dataset into the sink; HDF5 converts float16/float64 on read.
void read_float_dataset(hid_t group, const std::string& name, const std::string& path,
                        const std::string& file, const std::string& layer, KerasH5Sink& sink) {
  Handle dataset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.valid()) {
    throw FormatError(file, "dataset '" + path + "' is missing",
                      "listed in weight_names of layer '" + layer + "'");
  }
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  if (!type.valid() || !space.valid()) throw FormatError(file, "dataset '" + path + "' cannot be read");
  if (H5Tget_class(type.get()) != H5T_FLOAT) {
    throw FormatError(file,
                      "dataset '" + path + "' is not floating point (HDF5 type class " +
                          std::to_string(static_cast<int>(H5Tget_class(type.get()))) + ")",
                      "Keras weights are float32");
  }
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > kMaxRank) {
    throw FormatError(
        file, "dataset '" + path + "' has rank " + std::to_string(rank) + "; weights have 0 to 8 dims");
  }
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) {
    throw FormatError(file, "dataset '" + path + "' has an unreadable shape");
  }
  std::vector<int64_t> shape;
  hsize_t count = 1;
  for (hsize_t d : dims) {
    if (d != 0 && count > kMaxDatasetElements / d) {
      throw FormatError(file, "dataset '" + path + "' claims more than 2^32 elements");
    }
    count *= d;
    shape.push_back(static_cast<int64_t>(d));
  }
  // Without filters (compression) the stored bytes must cover the shape; a short one is a damaged file.
  // With filters (compression) a few stored bytes may claim gigabytes: refuse more than kMaxInflation
  // times the stored size (float weights compress 1.1-2x; only a bomb or an all-zero tensor gets near).
  // A dataset that stores nothing at all (HDF5 would return its fill value) is not a Keras weight either.
  Handle plist(H5Dget_create_plist(dataset.get()), H5Pclose);
  const size_t element = H5Tget_size(type.get());
  if (count > 0) {
    const hsize_t stored = H5Dget_storage_size(dataset.get());
    const hsize_t needed = count * element;
    const bool filtered = !plist.valid() || H5Pget_nfilters(plist.get()) != 0;
    if (stored == 0) {
      throw FormatError(file, "dataset '" + path + "' has shape " + shape_str(shape) + " but stores no data",
                        "the file is damaged or was written without its weights");
    }
    if (!filtered && stored < needed) {
      throw FormatError(file, "dataset '" + path + "' stores " + std::to_string(stored) +
                                  " bytes, its shape " + shape_str(shape) + " needs " +
                                  std::to_string(needed));
    }
    constexpr hsize_t kMaxInflation = 1024;
    if (filtered && needed / kMaxInflation > stored) {
      throw FormatError(file,
                        "dataset '" + path + "' stores " + std::to_string(stored) +
                            " compressed bytes for shape " + shape_str(shape) + " (" +
                            std::to_string(needed) + " bytes), more than " + std::to_string(kMaxInflation) +
                            "x",
                        "refused as a possible decompression bomb");
    }
  }
  std::optional<uint64_t> file_offset;
  if (count > 0 && plist.valid() && H5Pget_layout(plist.get()) == H5D_CONTIGUOUS &&
      H5Pget_nfilters(plist.get()) == 0 && H5Pget_external_count(plist.get()) == 0 &&
      H5Tequal(type.get(), H5T_NATIVE_FLOAT) > 0) {
    const haddr_t address = H5Dget_offset(dataset.get());
    if (address != HADDR_UNDEF) file_offset = address;
  }
  float* values = sink.tensor(name, shape, file_offset);
  if (values != nullptr && count > 0 &&
      H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0) {
    throw FormatError(file, "dataset '" + path + "' cannot be read", "the file may be truncated or damaged");
  }
  sink.tensor_done();
}

// The walk itself: the root's attributes, then each layer of layer_names and each weight of its
// weight_names, in that order. The caller holds hdf5_mutex() or is a child process.
void walk_keras_h5(const std::string& file, KerasH5Sink& sink) {
  // HDF5 prints its error stack to stderr by default; graft reports through exceptions instead.
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5Fis_hdf5(file.c_str()) <= 0) {
    throw FormatError(file, "not an HDF5 file", "a Keras .h5 file starts with the HDF5 signature");
  }
  Handle handle(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!handle.valid()) throw FormatError(file, "cannot be opened by libhdf5 (truncated or damaged?)");
  const hid_t root = handle.get();

  std::string format, model_config, weights_path;
  if (attribute_exists(root, "model_config")) {
    format = "keras-h5";
    model_config = read_optional_string(root, "model_config", file, "/");
    if (H5Lexists(root, "model_weights", H5P_DEFAULT) <= 0) {
      throw FormatError(file, "has a model_config but no group '/model_weights'",
                        "a model saved without weights cannot be loaded");
    }
    weights_path = "/model_weights";
  } else if (attribute_exists(root, "layer_names") || attribute_exists(root, "layer_names0")) {
    format = "keras-h5-weights";
    weights_path = "/";
  } else {
    const bool keras3 =
        H5Lexists(root, "layers", H5P_DEFAULT) > 0 || H5Lexists(root, "vars", H5P_DEFAULT) > 0;
    throw FormatError(file,
                      "neither a Keras model file (attribute model_config + group model_weights) nor a Keras "
                      "weights file (attribute layer_names)",
                      keras3 ? "this looks like a Keras 3 .weights.h5, which graft does not read; save with "
                               "Keras 2 / tf.keras (model.save('x.h5'))"
                             : "");
  }

  Handle weights(H5Gopen2(root, weights_path.c_str(), H5P_DEFAULT), H5Gclose);
  if (!weights.valid()) throw FormatError(file, "group '" + weights_path + "' cannot be opened");
  std::string keras_version = read_optional_string(root, "keras_version", file, "/");
  if (keras_version.empty())
    keras_version = read_optional_string(weights.get(), "keras_version", file, weights_path);
  sink.header(format, keras_version, model_config);

  const std::vector<std::string> layer_names =
      read_string_list(weights.get(), "layer_names", file, weights_path);
  for (const std::string& layer : layer_names) {
    const std::string layer_path = join(weights_path, layer);
    Handle group(H5Gopen2(weights.get(), layer.c_str(), H5P_DEFAULT), H5Gclose);
    if (!group.valid()) {
      throw FormatError(file, "group '" + layer_path + "' is missing",
                        "listed in layer_names of " + weights_path);
    }
    const std::vector<std::string> weight_names =
        read_string_list(group.get(), "weight_names", file, layer_path);
    if (weight_names.empty()) continue;
    sink.layer(layer);
    for (const std::string& weight : weight_names) {
      read_float_dataset(group.get(), weight, join(layer_path, weight), file, layer, sink);
    }
  }
}

// Builds the KerasModel from the walk's events (in this process, or from the child's stream).
class KerasModelBuilder : public KerasH5Sink {
 public:
  explicit KerasModelBuilder(const std::string& file) { model_.source = file; }
  void header(const std::string& format, const std::string& keras_version,
              const std::string& model_config) override {
    model_.format = format;
    model_.keras_version = keras_version;
    if (format != "keras-h5") return;
    model_.model_config = parse_json(model_config, model_.source, "attribute 'model_config' of /");
    model_.layers = parse_keras_layers(model_.model_config, model_.source);
  }
  void layer(const std::string& name) override { model_.weights.push_back(KerasLayerWeights{name, {}}); }
  float* tensor(const std::string& name, const std::vector<int64_t>& shape,
                std::optional<uint64_t>) override {
    if (model_.weights.empty()) throw FormatError(model_.source, "weight '" + name + "' outside any layer");
    auto& tensors = model_.weights.back().tensors;
    tensors.emplace_back(name, torch::empty(shape, torch::kFloat32));
    return tensors.back().second.data_ptr<float>();
  }
  void tensor_done() override {}
  KerasModel take() { return std::move(model_); }

 private:
  KerasModel model_;
};

// The child's side: each event as a record [tag: 1 byte][length: 8 bytes][payload] on the pipe.
namespace record {
constexpr char kFormat = 'F', kVersion = 'V', kConfig = 'C', kLayer = 'L', kName = 'W', kShape = 'S',
               kData = 'D', kOffset = 'O', kError = 'E', kEnd = 'Z';
constexpr uint64_t kMaxString = uint64_t{256} << 20;  // a model_config of 256 MiB is far past any real one
}  // namespace record

class KerasStreamWriter : public KerasH5Sink {
 public:
  explicit KerasStreamWriter(int fd) : fd_(fd) {}
  void header(const std::string& format, const std::string& keras_version,
              const std::string& model_config) override {
    put(record::kFormat, format);
    put(record::kVersion, keras_version);
    put(record::kConfig, model_config);
  }
  void layer(const std::string& name) override { put(record::kLayer, name); }
  // Plainly stored values (Keras' usual case) go as their offset in the file: the parent reads them
  // from there straight into the tensor, and 500 MB need not pass through the pipe.
  float* tensor(const std::string& name, const std::vector<int64_t>& shape,
                std::optional<uint64_t> file_offset) override {
    put(record::kName, name);
    put(record::kShape, shape.data(), shape.size() * sizeof(int64_t));
    sent_as_offset_ = file_offset.has_value();
    if (file_offset) {
      put(record::kOffset, &*file_offset, sizeof(uint64_t));
      return nullptr;
    }
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    values_.assign(static_cast<size_t>(count), 0.0f);
    return values_.data();
  }
  void tensor_done() override {
    if (sent_as_offset_) return;
    put(record::kData, values_.data(), values_.size() * sizeof(float));
    values_ = {};
  }
  void put(char tag, const void* data, size_t n) {
    const uint64_t length = n;
    if (!detail::write_all(fd_, &tag, 1) || !detail::write_all(fd_, &length, sizeof length) ||
        !detail::write_all(fd_, data, n)) {
      _exit(2);  // the parent is gone or gave up on us
    }
  }
  void put(char tag, const std::string& text) { put(tag, text.data(), text.size()); }

 private:
  int fd_;
  std::vector<float> values_;
  bool sent_as_offset_ = false;
};

// The .h5 file opened once by the parent, for the datasets the child sent as offsets.
class RawFile {
 public:
  explicit RawFile(const std::string& file) : file_(file) {}
  ~RawFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;

  // Reads a plainly stored dataset's values from where the child said they lie, inside the file.
  void read(uint64_t offset, const std::vector<int64_t>& shape, const std::string& name, float* values) {
    if (fd_ < 0) open();
    uint64_t bytes = sizeof(float);
    for (int64_t d : shape) bytes *= static_cast<uint64_t>(d);
    if (offset > size_ || bytes > size_ - offset) {
      throw FormatError(file_,
                        "dataset '" + name + "' of shape " + shape_str(shape) + " lies at bytes " +
                            std::to_string(offset) + "+" + std::to_string(bytes) + ", past the file's end (" +
                            std::to_string(size_) + " bytes)",
                        "the file is truncated");
    }
    char* out = reinterpret_cast<char*>(values);
    while (bytes > 0) {
      const ssize_t got = ::pread(fd_, out, bytes, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        throw FormatError(file_, "cannot read dataset '" + name +
                                     "': " + (got < 0 ? std::strerror(errno) : "unexpected end of file"));
      }
      out += got;
      offset += static_cast<uint64_t>(got);
      bytes -= static_cast<uint64_t>(got);
    }
  }

 private:
  void open() {
    fd_ = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat info {};
    if (fd_ < 0 || ::fstat(fd_, &info) != 0) {
      throw FormatError(file_, std::string("cannot open: ") + std::strerror(errno));
    }
    size_ = static_cast<uint64_t>(info.st_size);
  }

  const std::string& file_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The parent's side: replays the child's records into the builder, checking every length (a child
// that libhdf5 let a hostile file take over must not be able to do more than fail the read). One function
// (about 80 lines) because each record's checks guard the read that follows them.
void replay_stream(detail::ChildProcess& child, const std::string& file, KerasModelBuilder& builder) {
  const auto next = [&](char* tag) {
    uint64_t length = 0;
    child.read_exact(tag, 1);
    child.read_exact(&length, sizeof length);
    return length;
  };
  const auto text = [&](uint64_t length) {
    std::string out(length, '\0');
    child.read_exact(out.data(), length);
    return out;
  };
  RawFile raw(file);
  std::string format, version, name;
  std::vector<int64_t> shape;
  for (;;) {
    char tag = 0;
    const uint64_t length = next(&tag);
    if (tag == record::kData) {
      uint64_t count = 1;
      for (int64_t d : shape) count *= static_cast<uint64_t>(d);
      if (length != count * sizeof(float)) {
        throw FormatError(file, "the .h5 reader process sent " + std::to_string(length) + " bytes for '" +
                                    name + "' of shape " + shape_str(shape));
      }
      child.read_exact(builder.tensor(name, shape, std::nullopt), length);
      builder.tensor_done();
      continue;
    }
    if (tag == record::kOffset) {
      uint64_t offset = 0;
      if (length != sizeof offset) throw FormatError(file, "the .h5 reader process sent a bad offset record");
      child.read_exact(&offset, sizeof offset);
      raw.read(offset, shape, name, builder.tensor(name, shape, offset));
      builder.tensor_done();
      continue;
    }
    if (length > record::kMaxString) {
      throw FormatError(file, "the .h5 reader process sent a record of " + std::to_string(length) + " bytes");
    }
    switch (tag) {
      case record::kFormat:
        format = text(length);
        break;
      case record::kVersion:
        version = text(length);
        break;
      case record::kConfig:
        builder.header(format, version, text(length));
        break;
      case record::kLayer:
        builder.layer(text(length));
        break;
      case record::kName:
        name = text(length);
        break;
      case record::kShape: {
        if (length % sizeof(int64_t) != 0 || length / sizeof(int64_t) > kMaxRank) {
          throw FormatError(file,
                            "the .h5 reader process sent a shape of " + std::to_string(length) + " bytes");
        }
        shape.assign(length / sizeof(int64_t), 0);
        child.read_exact(shape.data(), length);
        uint64_t count = 1;
        for (int64_t d : shape) {
          if (d < 0 || (d != 0 && count > kMaxDatasetElements / static_cast<uint64_t>(d))) {
            throw FormatError(file, "the .h5 reader process sent the bad shape " + shape_str(shape));
          }
          count *= static_cast<uint64_t>(d);
        }
        break;
      }
      case record::kError:
        throw FormatError(file, text(length));
      case record::kEnd:
        child.finish();
        return;
      default:
        throw FormatError(file,
                          "the .h5 reader process sent an unknown record tag " + std::to_string(int(tag)));
    }
  }
}

// 60 s plus 1 s per 20 MB: a 550 MB VGG16 .h5 reads in a few seconds on any disk.
std::chrono::milliseconds default_deadline(const std::string& path) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  return std::chrono::milliseconds(60'000 + (error ? 0 : static_cast<int64_t>(size / 20'000)));
}

}  // namespace

KerasModel read_keras_h5(const std::string& path, const KerasH5Options& options) {
  const std::string& file = path;
  const uint64_t size = regular_file_size(path, "Keras .h5 file");  // a folder, FIFO, missing file: said
  KerasModelBuilder builder(file);
  if (!options.separate_process) {
    std::lock_guard<std::mutex> lock(hdf5_mutex());  // libhdf5 (Debian's serial build) is not thread-safe
    walk_keras_h5(file, builder);
    return builder.take();
  }

  detail::ChildLimits limits;
  limits.deadline = options.timeout.count() > 0 ? options.timeout : default_deadline(path);
  limits.extra_address_space = (uint64_t{4} << 30) + 4 * size;
  const auto work = [&file](int fd) {
    KerasStreamWriter writer(fd);
    try {
      walk_keras_h5(file, writer);
    } catch (const FormatError& e) {
      std::string what = e.what();
      const std::string prefix = file + ": ";
      if (what.compare(0, prefix.size(), prefix) == 0) what.erase(0, prefix.size());
      writer.put(record::kError, what);
      return;
    } catch (const std::bad_alloc&) {
      writer.put(record::kError, "reading it ran out of memory (damaged sizes?)");
      return;
    } catch (const std::exception& e) {
      writer.put(record::kError, std::string("cannot be read: ") + e.what());
      return;
    }
    writer.put(record::kEnd, "");
  };
  try {
    detail::ChildProcess child(work, limits);
    replay_stream(child, file, builder);
  } catch (const detail::ChildFailed& failure) {
    throw FormatError(file, std::string("libhdf5 ") + failure.what() + " while reading the file",
                      "the file is damaged or was made to attack HDF5 readers; graft reads .h5 files in a "
                      "separate process, so nothing else was affected");
  }
  return builder.take();
}

}  // namespace graft
