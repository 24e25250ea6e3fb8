// Image-folder datasets: root/<class>/**/<image>, listed in torchvision's ImageFolder order
// (torchvision/datasets/folder.py 0.14: classes sorted, then each class's files in sorted os.walk order),
// plus train/validation split discovery (folders, or a seeded split stratified by class).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <set>
#include <utility>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/strings.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

bool is_hidden(const fs::path& path) {
  const std::string name = path.filename().string();
  return !name.empty() && name[0] == '.';
}

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

bool is_folder(const fs::path& path) {
  std::error_code error;
  return fs::is_directory(path, error);
}

// Image files under dir, recursively (symlinks followed, hidden names skipped), ordered as os.walk
// sorted by directory, then file name.
std::vector<std::string> list_images(const fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> found;  // (directory, file name)
  std::error_code error;
  fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, error);
  if (error) throw Error(dir.string() + ": cannot list folder: " + error.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (error) throw Error(dir.string() + ": cannot list folder: " + error.message());
    const fs::path& path = it->path();
    if (is_hidden(path)) {
      if (it->is_directory(error)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(error) && has_image_extension(path)) {
      found.emplace_back(path.parent_path().string(), path.filename().string());
    }
  }
  if (error) throw Error(dir.string() + ": cannot list folder: " + error.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  paths.reserve(found.size());
  for (const auto& [directory, name] : found) paths.push_back((fs::path(directory) / name).string());
  return paths;
}

std::vector<std::string> list_class_folders(const fs::path& root) {
  std::vector<std::string> names;
  std::error_code error;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    if (!is_hidden(it->path()) && is_folder(it->path())) names.push_back(it->path().filename().string());
  }
  if (error) throw Error(root.string() + ": cannot list folder: " + error.message());
  for (const std::string& name : names) require_utf8(name, root.string(), "class folder");
  std::sort(names.begin(), names.end());
  return names;
}

void require_folder(const std::string& root) {
  std::error_code error;
  if (!fs::exists(root, error)) throw Error(root + ": image folder does not exist");
  if (!is_folder(root)) throw Error(root + ": expected an image folder (root/<class>/<image>), found a file");
}

ImageList stratified_part(const ImageList& all, const std::vector<size_t>& indices) {
  ImageList part{all.root, all.classes, {}};
  part.samples.reserve(indices.size());
  for (size_t i : indices) part.samples.push_back(all.samples[i]);
  return part;
}

}  // namespace

ImageList scan_image_folder(const std::string& root) {
  require_folder(root);
  const std::vector<std::string> classes = list_class_folders(root);
  if (classes.empty()) {
    const size_t loose = list_images(root).size();
    throw Error(root + ": no class folders" +
                (loose ? " (found " + std::to_string(loose) + " images directly in it)" : std::string()) +
                "; expected root/<class name>/<image>.{jpg,jpeg,png}");
  }
  ImageList list{root, classes, {}};
  std::vector<std::string> empty;
  for (size_t label = 0; label < classes.size(); ++label) {
    const std::vector<std::string> images = list_images(fs::path(root) / classes[label]);
    if (images.empty()) empty.push_back(classes[label]);
    for (const std::string& path : images) list.samples.push_back({path, int64_t(label)});
  }
  if (list.samples.empty()) {
    throw Error(root + ": no images (.jpg, .jpeg, .png) in any of its " + std::to_string(classes.size()) +
                " class folders");
  }
  if (!empty.empty()) {
    std::string names;
    for (const std::string& name : empty)
      names += (names.empty() ? "" : ", ") + (fs::path(root) / name).string();
    throw Error(root + ": class folder" + (empty.size() > 1 ? "s" : "") +
                " with no images (.jpg, .jpeg, .png): " + names + "; remove " +
                (empty.size() > 1 ? "them" : "it") + " or add images");
  }
  return list;
}

ImageList scan_image_folder(const std::string& root, const std::vector<std::string>& classes) {
  require_folder(root);
  for (const std::string& name : list_class_folders(root)) {
    if (std::find(classes.begin(), classes.end(), name) == classes.end()) {
      throw Error((fs::path(root) / name).string() + ": class '" + name +
                  "' is not among the training classes; every validation class needs training images");
    }
  }
  ImageList list{root, classes, {}};
  for (size_t label = 0; label < classes.size(); ++label) {
    const fs::path dir = fs::path(root) / classes[label];
    if (!is_folder(dir)) continue;
    for (const std::string& path : list_images(dir)) list.samples.push_back({path, int64_t(label)});
  }
  return list;
}

ImageSplits discover_image_splits(const std::string& root, double val_split, uint64_t seed) {
  require_folder(root);
  const fs::path train_dir = fs::path(root) / "train";
  if (is_folder(train_dir)) {
    for (const char* name : {"val", "validation", "test"}) {
      const fs::path val_dir = fs::path(root) / name;
      if (!is_folder(val_dir)) continue;
      ImageSplits splits;
      splits.from_folders = true;
      splits.train = scan_image_folder(train_dir.string());
      splits.val = scan_image_folder(val_dir.string(), splits.train.classes);
      if (splits.val.samples.empty()) throw Error(val_dir.string() + ": validation folder has no images");
      return splits;
    }
  }
  if (!(val_split >= 0 && val_split < 1)) {
    throw Error("validation split must be in [0, 1), got " + std::to_string(val_split));
  }
  const ImageList all = scan_image_folder(is_folder(train_dir) ? train_dir.string() : root);
  ImageSplits splits;
  if (val_split == 0) {
    splits.train = all;
    splits.val = ImageList{all.root, all.classes, {}};
    return splits;
  }
  // Per class, in class order: shuffle that class's indices, the first round(n * val_split) go to val
  // (at most n - 1, so every class keeps a training image); both parts keep the listing's order.
  std::mt19937_64 rng(seed);
  std::vector<size_t> train_indices, val_indices;
  for (size_t label = 0; label < all.classes.size(); ++label) {
    std::vector<size_t> members;
    for (size_t i = 0; i < all.samples.size(); ++i) {
      if (all.samples[i].label == int64_t(label)) members.push_back(i);
    }
    portable_shuffle(members, rng);
    const size_t wanted = static_cast<size_t>(std::llround(double(members.size()) * val_split));
    const size_t n_val = members.empty() ? 0 : std::min(wanted, members.size() - 1);
    val_indices.insert(val_indices.end(), members.begin(), members.begin() + n_val);
    train_indices.insert(train_indices.end(), members.begin() + n_val, members.end());
  }
  std::sort(train_indices.begin(), train_indices.end());
  std::sort(val_indices.begin(), val_indices.end());
  splits.train = stratified_part(all, train_indices);
  splits.val = stratified_part(all, val_indices);
  return splits;
}

ImageFolder::ImageFolder(const std::string& root, TransformConfig transform)
    : list_(scan_image_folder(root)), transform_(std::move(transform)) {}

ImageFolder::ImageFolder(ImageList list, TransformConfig transform)
    : list_(std::move(list)), transform_(std::move(transform)) {}

Sample ImageFolder::get(size_t index, std::mt19937_64& rng) const {
  const LabeledPath& sample = list_.samples.at(index);
  return Sample{load_and_transform(sample.path, transform_, rng), sample.label, sample.path};
}

int64_t ImageFolder::label(size_t index) const {
  return list_.samples.at(index).label;
}

std::string ImageFolder::id(size_t index) const {
  return list_.samples.at(index).path;
}

}  // namespace graft
