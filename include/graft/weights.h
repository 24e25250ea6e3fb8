// Weights I/O: the safetensors format (read and write, written here) and loading a state dict into a
// module by name with a report of what did not fit.
//
// safetensors layout: u64 little-endian N, then N bytes of JSON header
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
// then the data section; offsets are relative to its start. https://github.com/huggingface/safetensors
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace graft {

// Upper bounds checked before anything is allocated: a header claiming more is refused.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;  // 100 MiB of JSON
constexpr size_t kMaxSafetensorsTensors = 1u << 20;

struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors dtype string: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
};

// A safetensors file opened for reading: the header is parsed and every entry validated (dtype known,
// shape x dtype size == byte length, offsets inside the file, no overlaps) at open; tensor data is
// memory-mapped and copied out on demand.
class SafeTensorsReader {
 public:
  explicit SafeTensorsReader(const std::string& path);  // throws FormatError naming file and tensor
  ~SafeTensorsReader();
  SafeTensorsReader(const SafeTensorsReader&) = delete;
  SafeTensorsReader& operator=(const SafeTensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws WeightNotFound
  // A CPU tensor that owns a copy of the data, in the file's dtype.
  torch::Tensor load(const std::string& name) const;

 private:
  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
};

// The weights of a Hugging Face model as one set: a single .safetensors file, or the shards that a
// model.safetensors.index.json names in its weight_map (model-00001-of-00002.safetensors, ...), each opened
// as a SafeTensorsReader. The index is checked against the shards at open: every shard beside the index
// (a plain file name), every tensor of the map in the shard it names, no tensor in two shards.
class SafeTensorsSet {
 public:
  explicit SafeTensorsSet(const std::string& path);  // a .safetensors file or a *.safetensors.index.json
  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // shard by shard, in file order
  bool contains(const std::string& name) const { return shard_of_.count(name) != 0; }
  torch::Tensor load(const std::string& name) const;  // throws WeightNotFound
  std::vector<std::string> files() const;             // the shards (or the one file)
  bool sharded() const { return sharded_; }

 private:
  std::string path_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafeTensorsReader>> shards_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> shard_of_;
};

// Whether a path names a sharded checkpoint's index (ends in .safetensors.index.json).
bool is_safetensors_index(const std::string& path);

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Reads every tensor of a safetensors file.
NamedTensors read_safetensors(const std::string& path);

// Writes tensors (moved to CPU, made contiguous) atomically: a temporary file in the same folder is
// written, flushed and fsync'ed, then renamed over `path`. Duplicate names and unsupported dtypes throw.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

std::string safetensors_dtype(torch::ScalarType type);  // throws for types safetensors lacks
// The inverse: "F16" -> torch::kHalf. Throws graft::Error for a dtype graft cannot read.
torch::ScalarType safetensors_scalar_type(const std::string& dtype);
// Bytes per element of a safetensors dtype, 0 when the dtype is unknown.
size_t safetensors_itemsize(const std::string& dtype);

struct ShapeMismatchEntry {
  std::string name;
  std::vector<int64_t> expected;  // the module's
  std::vector<int64_t> got;       // the file's
};

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;     // in the module, absent from the source
  std::vector<std::string> unexpected;  // in the source, absent from the module
  std::vector<ShapeMismatchEntry> mismatched;
  std::vector<std::string> skipped;  // under a skip prefix, skipped on purpose (replaced head)
  // Shape of each missing name (the module's) and unexpected name (the source's), for messages.
  std::map<std::string, std::vector<int64_t>> shapes;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  // Multi-line: the counts, then the names of each kind with both shapes, at most `listed` of each (the
  // rest counted).
  std::string to_string(size_t listed = SIZE_MAX) const;
};

struct LoadOptions {
  bool strict = true;  // throw graft::Error carrying the report unless report.ok()
  // Module names whose parameters/buffers are neither loaded nor reported missing/unexpected, e.g. the
  // classifier when the head is being replaced ("fc" skips "fc.weight", "fc.bias", "fc.1.weight").
  std::vector<std::string> skip_prefixes;
  std::string source_name = "state dict";  // used in messages (file path)
  // A strict failure's message: names listed of each kind, and what the caller can do about it (empty:
  // "set strict to false to load what fits"; a command says its own flag, or nothing it does not have).
  size_t listed = SIZE_MAX;
  std::string hint;
};

// Copies tensors into the module's named_parameters() + named_buffers() by full dotted name, casting
// floating dtypes (F16/BF16 -> the parameter's dtype). Never resizes: mismatches are reported.
LoadReport load_state_dict(torch::nn::Module& module, const NamedTensors& tensors,
                           const LoadOptions& options = {});
LoadReport load_safetensors(torch::nn::Module& module, const std::string& path, LoadOptions options = {});

// The module's parameters and buffers by full dotted name (what save writes).
NamedTensors state_dict(const torch::nn::Module& module);

}  // namespace graft
