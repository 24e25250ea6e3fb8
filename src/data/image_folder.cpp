// Image-folder datasets: root/<class>/**/<image>, listed in torchvision's ImageFolder order
// (torchvision/datasets/folder.py 0.14: classes sorted, then each class's files in sorted os.walk order),
// plus train/validation split discovery (folders, or a seeded split stratified by class).
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <optional>
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

// A file or folder as the file system knows it, whatever path or link reaches it.
struct FileId {
  dev_t device;
  ino_t inode;
  bool operator<(const FileId& other) const {
    return device != other.device ? device < other.device : inode < other.inode;
  }
};

std::optional<FileId> file_id(const fs::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return std::nullopt;
  return FileId{info.st_dev, info.st_ino};
}

// path lies at or below folder (both canonical).
bool is_within(const fs::path& path, const fs::path& folder) {
  auto p = path.begin();
  for (auto f = folder.begin(); f != folder.end(); ++f, ++p)
    if (p == path.end() || *p != *f) return false;
  return true;
}

// One scan of a data root's class folders. Symbolic links are followed, but every real folder is walked
// once and every real file counted once (device + inode), and a link never leads from one class's folder
// into the rest of the data root: links to '.', to '..' and to another class made the walk exponential or
// labelled dogs as cats. What is left out is said in `skipped`.
class FolderWalk {
 public:
  explicit FolderWalk(const fs::path& root) {
    std::error_code error;
    root_ = fs::canonical(root, error);
    if (error) throw Error(root.string() + ": cannot resolve the folder: " + error.message());
  }

  // Image files under the class folder dir, recursively (hidden names skipped), ordered as os.walk
  // sorted by directory, then file name.
  std::vector<std::string> list_images(const fs::path& dir) {
    std::error_code error;
    const fs::path class_root = fs::canonical(dir, error);
    if (error) throw Error(dir.string() + ": cannot resolve the folder: " + error.message());
    std::vector<std::pair<std::string, std::string>> found;  // (directory, file name)
    std::vector<fs::path> pending{dir};
    while (!pending.empty()) {
      const fs::path folder = pending.back();
      pending.pop_back();
      const std::optional<FileId> id = file_id(folder);
      if (!id) continue;
      if (!folders_.insert(*id).second) {
        skipped.push_back(folder.string() + ": a folder already listed (through a link); skipped");
        continue;
      }
      // Entries in name order, real entries before links, files before subfolders (os.walk's top-down
      // order): of two paths to one file the real one is kept and the link reported, whatever the
      // directory's own order.
      std::vector<fs::directory_entry> entries;
      fs::directory_iterator it(folder, error), end;
      for (; !error && it != end; it.increment(error)) entries.push_back(*it);
      if (error) throw Error(folder.string() + ": cannot list folder: " + error.message());
      std::sort(entries.begin(), entries.end(),
                [](const fs::directory_entry& a, const fs::directory_entry& b) {
                  std::error_code ignored;
                  const bool a_link = a.is_symlink(ignored), b_link = b.is_symlink(ignored);
                  return a_link != b_link ? b_link : a.path() < b.path();
                });
      std::vector<fs::path> subfolders;
      for (const fs::directory_entry& entry : entries) {
        const fs::path& path = entry.path();
        if (is_hidden(path)) continue;
        std::error_code ignored;  // an entry that cannot be inspected is not an image
        if (entry.is_symlink(ignored)) {
          const fs::path target = fs::canonical(path, ignored);
          if (ignored) {
            skipped.push_back(path.string() + ": a link to nothing; skipped");
            continue;
          }
          // A link stays within its class folder, or leaves the data root altogether (photos kept
          // elsewhere); one into another class, or to a folder that holds the data root, is not followed.
          const bool elsewhere_in_root =
              !is_within(target, class_root) && (is_within(target, root_) || is_within(root_, target));
          if (elsewhere_in_root && (fs::is_directory(target, ignored) || has_image_extension(path))) {
            skipped.push_back(path.string() + ": a link to " + target.string() +
                              ", outside its class folder " + dir.string() + "; skipped");
            continue;
          }
        }
        if (entry.is_directory(ignored)) {
          subfolders.push_back(path);
        } else if (entry.is_regular_file(ignored) && has_image_extension(path)) {
          const std::optional<FileId> file = file_id(path);
          if (file && !files_.insert(*file).second) {
            skipped.push_back(path.string() + ": the same file as an image already listed; skipped");
            continue;
          }
          found.emplace_back(path.parent_path().string(), path.filename().string());
        }
      }
      pending.insert(pending.end(), subfolders.rbegin(), subfolders.rend());  // popped in name order
    }
    std::sort(found.begin(), found.end());
    std::vector<std::string> paths;
    paths.reserve(found.size());
    for (const auto& [directory, name] : found) paths.push_back((fs::path(directory) / name).string());
    return paths;
  }

  std::vector<std::string> skipped;

 private:
  fs::path root_;
  std::set<FileId> folders_, files_;
};

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
  ImageList part{all.root, all.classes, {}, {}};
  part.samples.reserve(indices.size());
  for (size_t i : indices) part.samples.push_back(all.samples[i]);
  return part;
}

}  // namespace

ImageList scan_image_folder(const std::string& root) {
  require_folder(root);
  const std::vector<std::string> classes = list_class_folders(root);
  FolderWalk walk(root);
  if (classes.empty()) {
    const size_t loose = walk.list_images(root).size();
    throw Error(root + ": no class folders" +
                (loose ? " (found " + std::to_string(loose) + " images directly in it)" : std::string()) +
                "; expected root/<class name>/<image>.{jpg,jpeg,png}");
  }
  ImageList list{root, classes, {}, {}};
  std::vector<std::string> empty;
  for (size_t label = 0; label < classes.size(); ++label) {
    const std::vector<std::string> images = walk.list_images(fs::path(root) / classes[label]);
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
  list.skipped = std::move(walk.skipped);
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
  ImageList list{root, classes, {}, {}};
  FolderWalk walk(root);
  for (size_t label = 0; label < classes.size(); ++label) {
    const fs::path dir = fs::path(root) / classes[label];
    if (!is_folder(dir)) continue;
    for (const std::string& path : walk.list_images(dir)) list.samples.push_back({path, int64_t(label)});
  }
  list.skipped = std::move(walk.skipped);
  return list;
}

SplitIndices stratified_split(const std::vector<LabeledPath>& samples, size_t classes, double fraction,
                              uint64_t seed) {
  std::mt19937_64 rng(seed);
  SplitIndices parts;
  for (size_t label = 0; label < classes; ++label) {
    std::vector<size_t> members;
    for (size_t i = 0; i < samples.size(); ++i)
      if (samples[i].label == int64_t(label)) members.push_back(i);
    portable_shuffle(members, rng);
    const size_t wanted = static_cast<size_t>(std::llround(double(members.size()) * fraction));
    const size_t n_val = members.empty() ? 0 : std::min(wanted, members.size() - 1);
    parts.val.insert(parts.val.end(), members.begin(), members.begin() + n_val);
    parts.train.insert(parts.train.end(), members.begin() + n_val, members.end());
  }
  std::sort(parts.train.begin(), parts.train.end());
  std::sort(parts.val.begin(), parts.val.end());
  return parts;
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
    splits.val = ImageList{all.root, all.classes, {}, {}};
    return splits;
  }
  const SplitIndices parts = stratified_split(all.samples, all.classes.size(), val_split, seed);
  splits.train = stratified_part(all, parts.train);
  splits.train.skipped = all.skipped;
  splits.val = stratified_part(all, parts.val);
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
