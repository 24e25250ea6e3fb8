// The safetensors format: a validating, memory-mapped reader and an atomic writer (graft/files.h).
// Format: https://github.com/huggingface/safetensors (README, "Format"). The writer lays files out like
// the reference serializer (safetensors/src/tensor.rs, `prepare`, v0.4): header padded with spaces to a
// multiple of 8 bytes, wider element types first, so every tensor's data is aligned to its element size
// and the data section has no gaps (the reference reader rejects gaps).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <system_error>
#include <unordered_set>

#include "graft/errors.h"
#include "graft/files.h"
#include "graft/json_file.h"
#include "graft/weights.h"

namespace graft {

// Tensor bytes are memcpy'd between the file (little-endian by definition) and host memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "graft's safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
  size_t itemsize;
};

constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kDouble, 8},    {"F32", torch::kFloat, 4}, {"F16", torch::kHalf, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kLong, 8},  {"I32", torch::kInt, 4},
    {"I16", torch::kShort, 2},     {"I8", torch::kChar, 1},   {"U8", torch::kByte, 1},
    {"BOOL", torch::kBool, 1},
};
constexpr const char* kKnownDtypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

// A valid header nests three levels deep ({name: {shape: [..]}}); anything much deeper is hostile.
constexpr int kMaxHeaderDepth = 8;
constexpr size_t kMaxRank = 64;
constexpr const char* kMetadataKey = "__metadata__";

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& entry : kDtypes)
    if (name == entry.name) return &entry;
  return nullptr;
}

std::string errno_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

std::string quoted(const std::string& name) {
  return "'" + name + "'";
}

// The JSON value's type for messages, with the value itself when it is short.
std::string describe(const json& value) {
  return std::string(value.type_name()) + " " + json_excerpt(value, 57);
}

std::string range_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

// Owns a read-only mapping until released into the reader, so a constructor that throws unmaps it.
struct MappingGuard {
  void* address = nullptr;
  size_t size = 0;
  ~MappingGuard() {
    if (address != nullptr) ::munmap(address, size);
  }
};

// Validates one header entry and returns it; `data_size` is the length of the data section.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json& entry,
                       uint64_t data_size) {
  const std::string where = "tensor " + quoted(name);
  if (!entry.is_object())
    throw FormatError(
        path, where + ": entry must be an object with dtype, shape and data_offsets, got " + describe(entry));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) throw FormatError(path, where + ": entry has no \"" + key + "\"");

  TensorInfo info;
  info.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) throw FormatError(path, where + ": dtype must be a string, got " + describe(dtype));
  info.dtype = dtype.get<std::string>();
  const DtypeEntry* known = find_dtype(info.dtype);
  if (known == nullptr)
    throw FormatError(path, where + ": unknown dtype \"" + info.dtype + "\"",
                      std::string("expected one of ") + kKnownDtypes);

  const json& shape = entry["shape"];
  if (!shape.is_array()) throw FormatError(path, where + ": shape must be an array, got " + describe(shape));
  if (shape.size() > kMaxRank)
    throw FormatError(path, where + ": shape has " + std::to_string(shape.size()) +
                                " dimensions, more than " + std::to_string(kMaxRank));
  uint64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const json& dim = shape[i];
    const std::string at = where + ": shape " + json_excerpt(shape) + " dimension " + std::to_string(i);
    if (!dim.is_number_integer()) throw FormatError(path, at + " must be an integer, got " + describe(dim));
    if (dim.is_number_unsigned()) {
      const uint64_t value = dim.get<uint64_t>();
      if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw FormatError(path, at + " is " + std::to_string(value) + ", too large");
      info.shape.push_back(static_cast<int64_t>(value));
    } else {
      const int64_t value = dim.get<int64_t>();
      if (value < 0) throw FormatError(path, at + " is " + std::to_string(value) + ", expected >= 0");
      info.shape.push_back(value);
    }
    // Overflow-checked: a hostile shape must not wrap around to a small, plausible byte count.
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(info.shape.back()), &numel))
      throw FormatError(path,
                        where + ": shape " + json_excerpt(shape) + " has more elements than fit in 64 bits");
  }
  uint64_t expected_bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(known->itemsize), &expected_bytes))
    throw FormatError(path, where + ": shape " + json_excerpt(shape) + " x " + info.dtype +
                                " is more bytes than fit in 64 bits");

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    throw FormatError(path, where + ": data_offsets must be two non-negative integers [begin, end], got " +
                                describe(offsets));
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.begin > info.end)
    throw FormatError(path, where + ": data_offsets " + json_excerpt(offsets) + " are not ascending (begin " +
                                std::to_string(info.begin) + " > end " + std::to_string(info.end) + ")");
  if (info.end > data_size)
    throw FormatError(path,
                      where + ": data_offsets " + json_excerpt(offsets) + " end at byte " +
                          std::to_string(info.end) + " but the data section is only " +
                          std::to_string(data_size) + " bytes",
                      "the file is truncated or the header is corrupt");
  const uint64_t bytes = info.end - info.begin;
  if (bytes != expected_bytes)
    throw FormatError(path, where + ": data_offsets " + json_excerpt(offsets) + " span " +
                                std::to_string(bytes) + " bytes, but shape " + json_excerpt(shape) + " of " +
                                info.dtype + " needs " + std::to_string(numel) + " x " +
                                std::to_string(known->itemsize) + " = " + std::to_string(expected_bytes) +
                                " bytes");
  return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& metadata) {
  std::map<std::string, std::string> out;
  if (metadata.is_null()) return out;
  if (!metadata.is_object())
    throw FormatError(path,
                      std::string(kMetadataKey) + " must be an object of strings, got " + describe(metadata));
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string())
      throw FormatError(path, std::string(kMetadataKey) + " value for key " + quoted(key) +
                                  " must be a string, got " + describe(value));
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

// Tensors may sit in any order in the data section, with gaps, but no two may share a byte.
void check_no_overlap(const std::string& path, const std::vector<TensorInfo>& tensors) {
  std::vector<size_t> order;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].end > tensors[i].begin) order.push_back(i);  // empty tensors occupy no bytes
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::tie(tensors[a].begin, tensors[a].end) < std::tie(tensors[b].begin, tensors[b].end);
  });
  // Sorted by begin, a range overlaps some earlier one exactly when it starts before the furthest end so far.
  size_t furthest = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const TensorInfo& current = tensors[order[k]];
    if (k > 0) {
      const TensorInfo& previous = tensors[furthest];
      if (current.begin < previous.end)
        throw FormatError(path, "tensors " + quoted(previous.name) + " (bytes " +
                                    range_str(previous.begin, previous.end) + ") and " +
                                    quoted(current.name) + " (bytes " +
                                    range_str(current.begin, current.end) + ") overlap");
    }
    if (k == 0 || current.end > tensors[furthest].end) furthest = order[k];
  }
}

}  // namespace

std::string safetensors_dtype(torch::ScalarType type) {
  for (const auto& entry : kDtypes)
    if (entry.type == type) return entry.name;
  throw Error(std::string("safetensors has no dtype for torch type ") + c10::toString(type) +
              " (supported: float64, float32, float16, bfloat16, int64, int32, int16, int8, uint8, bool)");
}

torch::ScalarType safetensors_scalar_type(const std::string& dtype) {
  const DtypeEntry* entry = find_dtype(dtype);
  if (entry == nullptr)
    throw Error("unknown safetensors dtype \"" + dtype + "\" (expected one of " + kKnownDtypes + ")");
  return entry->type;
}

size_t safetensors_itemsize(const std::string& dtype) {
  const DtypeEntry* entry = find_dtype(dtype);
  return entry == nullptr ? 0 : entry->itemsize;
}

// One function (about 90 lines) because each check of the header guards the next read: open, size,
// header length, header JSON, then every entry's dtype, shape and offsets against the file.
SafeTensorsReader::SafeTensorsReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open safetensors file: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(path + ": cannot stat safetensors file: " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file, expected a .safetensors file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw FormatError(path,
                      "file is " + std::to_string(file_size) +
                          " bytes, shorter than the 8-byte header length that starts a safetensors file",
                      "the file is truncated or not a safetensors file");
  }
  MappingGuard mapping;
  mapping.size = static_cast<size_t>(file_size);
  void* address = ::mmap(nullptr, mapping.size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (address == MAP_FAILED)
    throw Error(path + ": cannot memory-map safetensors file: " + errno_text(mmap_errno));
  mapping.address = address;
  const auto* base = static_cast<const uint8_t*>(address);

  uint64_t header_size = 0;
  std::memcpy(&header_size, base, sizeof header_size);
  if (header_size > kMaxSafetensorsHeaderBytes)
    throw FormatError(path,
                      "header length field claims " + std::to_string(header_size) +
                          " bytes, more than the limit of " + std::to_string(kMaxSafetensorsHeaderBytes),
                      "the file is corrupt or not a safetensors file");
  if (header_size > file_size - 8)
    throw FormatError(path,
                      "header length field claims " + std::to_string(header_size) + " bytes, but only " +
                          std::to_string(file_size - 8) + " bytes follow it (file size " +
                          std::to_string(file_size) + ")",
                      "the file is truncated");
  const uint64_t data_size = file_size - 8 - header_size;

  // The callback keeps the header's key order (json objects are sorted maps), refuses duplicate names and
  // stops hostile headers (deep nesting, too many entries) while parsing rather than after.
  std::vector<std::string> names;
  std::unordered_set<std::string> seen;
  const json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxHeaderDepth)
      throw FormatError(path, "header nests deeper than " + std::to_string(kMaxHeaderDepth) +
                                  " levels; a safetensors header nests 3");
    if (event == json::parse_event_t::key && depth == 1) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) throw FormatError(path, "header has two entries named " + quoted(key));
      if (key != kMetadataKey) {
        if (names.size() >= kMaxSafetensorsTensors)
          throw FormatError(path,
                            "header has more than " + std::to_string(kMaxSafetensorsTensors) + " tensors");
        names.push_back(key);
      }
    }
    return true;
  };
  json header;
  const auto* header_begin = reinterpret_cast<const char*>(base + 8);
  try {
    header = json::parse(header_begin, header_begin + header_size, callback);
  } catch (const json::exception& e) {
    throw FormatError(path,
                      "header (" + std::to_string(header_size) + " bytes) is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw FormatError(path, "header must be a JSON object, got " + describe(header));

  tensors_.reserve(names.size());
  for (const std::string& name : names) {
    tensors_.push_back(parse_entry(path, name, header[name], data_size));
    index_.emplace(name, tensors_.size() - 1);
  }
  if (header.contains(kMetadataKey)) metadata_ = parse_metadata(path, header[kMetadataKey]);
  check_no_overlap(path, tensors_);

  data_ = base + 8 + header_size;
  mapping_ = mapping.address;
  mapping_size_ = mapping.size;
  mapping.address = nullptr;  // owned by the reader from here on
}

SafeTensorsReader::~SafeTensorsReader() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

bool SafeTensorsReader::contains(const std::string& name) const {
  return index_.count(name) != 0;
}

const TensorInfo& SafeTensorsReader::info(const std::string& name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) throw WeightNotFound(path_, name);
  return tensors_[it->second];
}

torch::Tensor SafeTensorsReader::load(const std::string& name) const {
  const TensorInfo& entry = info(name);
  const torch::ScalarType type = safetensors_scalar_type(entry.dtype);
  // A bool byte other than 0 or 1 is undefined behaviour in torch; read bytes and normalise instead.
  const torch::ScalarType storage_type = type == torch::kBool ? torch::kByte : type;
  torch::Tensor tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(storage_type));
  const size_t bytes = static_cast<size_t>(entry.end - entry.begin);
  if (bytes > 0) std::memcpy(tensor.data_ptr(), data_ + entry.begin, bytes);
  return type == torch::kBool ? tensor.ne(0) : tensor;
}

NamedTensors read_safetensors(const std::string& path) {
  const SafeTensorsReader reader(path);
  NamedTensors out;
  out.reserve(reader.tensors().size());
  for (const TensorInfo& entry : reader.tensors()) out.emplace_back(entry.name, reader.load(entry.name));
  return out;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  struct Item {
    std::string dtype;
    torch::Tensor data;  // CPU, contiguous
    uint64_t begin = 0, end = 0;
  };
  std::vector<Item> items(tensors.size());
  std::map<std::string, size_t> first_index;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    const std::string where = path + ": tensor " + quoted(name);
    if (name == kMetadataKey) throw Error(where + ": the name is reserved for the file's metadata");
    const auto [it, inserted] = first_index.emplace(name, i);
    if (!inserted)
      throw Error(where + " appears twice (entries " + std::to_string(it->second) + " and " +
                  std::to_string(i) + "); names must be unique");
    if (!tensor.defined()) throw Error(where + " is undefined");
    try {
      items[i].dtype = safetensors_dtype(tensor.scalar_type());
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
    items[i].data = tensor.detach().to(torch::kCPU).contiguous();
  }

  // Data layout: wider element types first (stable, so equal widths keep the given order).
  std::vector<size_t> layout(items.size());
  std::iota(layout.begin(), layout.end(), size_t{0});
  std::stable_sort(layout.begin(), layout.end(), [&](size_t a, size_t b) {
    return safetensors_itemsize(items[a].dtype) > safetensors_itemsize(items[b].dtype);
  });
  uint64_t offset = 0;
  for (size_t i : layout) {
    items[i].begin = offset;
    offset += static_cast<uint64_t>(items[i].data.numel()) * items[i].data.element_size();
    items[i].end = offset;
  }

  // The header is assembled by hand to keep the given order (nlohmann's ordered_json inserts in O(n)).
  std::string header = "{";
  try {
    if (!metadata.empty()) header += json(kMetadataKey).dump() + ":" + json(metadata).dump();
    for (size_t i = 0; i < items.size(); ++i) {
      json entry = {{"dtype", items[i].dtype},
                    {"shape", items[i].data.sizes().vec()},
                    {"data_offsets", {items[i].begin, items[i].end}}};
      if (header.size() > 1) header += ",";
      header += json(tensors[i].first).dump() + ":" + entry.dump();
    }
  } catch (const json::exception& e) {
    throw Error(path +
                ": cannot encode the safetensors header (a tensor name or metadata string is not valid "
                "UTF-8?): " +
                e.what());
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > kMaxSafetensorsHeaderBytes)
    throw Error(path + ": the safetensors header would be " + std::to_string(header.size()) +
                " bytes, more than the " + std::to_string(kMaxSafetensorsHeaderBytes) + " a reader accepts");

  AtomicFile file(path, "safetensors file");
  const uint64_t header_size = header.size();
  std::string prefix(8, '\0');
  std::memcpy(prefix.data(), &header_size, sizeof header_size);
  file.write(prefix.data(), prefix.size());
  file.write(header.data(), header.size());
  for (size_t i : layout)
    file.write(items[i].data.data_ptr(), static_cast<size_t>(items[i].end - items[i].begin));
  file.commit();
}

bool is_safetensors_index(const std::string& path) {
  const std::string suffix = ".safetensors.index.json";
  return path.size() > suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
}

SafeTensorsSet::SafeTensorsSet(const std::string& path) : path_(path), sharded_(is_safetensors_index(path)) {
  if (!sharded_) {
    shards_.push_back(std::make_unique<SafeTensorsReader>(path));
  } else {
    // transformers' index: {"metadata": {...}, "weight_map": {"tensor name": "shard file name", ...}}.
    const nlohmann::json index = read_json_file(path, uint64_t{64} << 20);
    if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object() ||
        index.at("weight_map").empty())
      throw FormatError(path,
                        "expected a sharded checkpoint's index: an object whose \"weight_map\" maps each "
                        "tensor name to its shard file");
    std::map<std::string, size_t> shard_index;                // file name -> position in shards_
    std::vector<std::pair<std::string, std::string>> wanted;  // tensor, shard
    for (const auto& [name, file] : index.at("weight_map").items()) {
      if (!file.is_string())
        throw FormatError(
            path, "weight_map[\"" + name + "\"] must be a shard's file name, found " + file.type_name());
      const std::string shard = file.get<std::string>();
      // Shards sit beside the index: a path elsewhere (../, /etc/...) is not a shard of this model.
      if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
          shard == "." || shard == "..")
        throw FormatError(path,
                          "weight_map[\"" + name + "\"] is \"" + shard +
                              "\"; expected a file name beside the index (model-00001-of-00002.safetensors)");
      if (!shard_index.count(shard)) {
        const std::filesystem::path shard_path = std::filesystem::path(path).parent_path() / shard;
        if (!std::filesystem::is_regular_file(shard_path))
          throw FormatError(path, "names the shard " + shard + ", which is not there (" +
                                      shard_path.string() + "); download every shard of the model");
        shard_index[shard] = shards_.size();
        shards_.push_back(std::make_unique<SafeTensorsReader>(shard_path.string()));
      }
      wanted.emplace_back(name, shard);
    }
    for (const auto& [name, shard] : wanted)
      if (!shards_[shard_index.at(shard)]->contains(name))
        throw FormatError(path,
                          "weight_map puts tensor '" + name + "' in " + shard + ", which does not hold it");
  }
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const TensorInfo& info : shards_[i]->tensors()) {
      if (!shard_of_.emplace(info.name, i).second)
        throw FormatError(path, "tensor '" + info.name + "' is in two shards, " +
                                    shards_[shard_of_.at(info.name)]->path() + " and " + shards_[i]->path());
      tensors_.push_back(info);
    }
  }
}

torch::Tensor SafeTensorsSet::load(const std::string& name) const {
  const auto it = shard_of_.find(name);
  if (it == shard_of_.end()) throw WeightNotFound(path_, name);
  return shards_[it->second]->load(name);
}

std::vector<std::string> SafeTensorsSet::files() const {
  std::vector<std::string> out;
  for (const auto& shard : shards_) out.push_back(shard->path());
  return out;
}

}  // namespace graft
