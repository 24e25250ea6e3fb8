// Video clips as training data: decoding (FFmpeg's libavformat/libavcodec/libswscale) and writing video
// files, folders of frames, frame sampling, consistent per-clip transforms, and the clip dataset.
//
// A clip data set is root/<class>/<clip>/ (a folder of frames, *.jpg|png sorted by name) or
// root/<class>/<clip>.mp4|avi|mkv|mov|webm, mixed freely. A sample is T frames, (T, 3, size, size) float32,
// sampled uniformly over the clip (eval) or one at random from each of T equal segments (training, as in
// TSN), resized and cropped with one box for the whole clip, flipped or not as a whole, normalised.
#pragma once
#include <torch/types.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "graft/data.h"

namespace graft {

// Clips longer than this many frames are refused (about 11 minutes at 30 fps): sample a shorter cut.
constexpr int64_t kMaxClipFrames = 20000;

// Every frame of a video file as RGB, scaled down (aspect kept) so that the shorter side is min_side when
// it is larger (0: full size). Throws graft::FormatError naming the file when it cannot be opened, has no
// video stream, cannot be decoded, or exceeds kMaxImagePixels per frame or kMaxClipFrames.
std::vector<Image> decode_video(const std::string& path, int min_side = 0);

// The frames of a frame folder (*.jpg, *.jpeg, *.png sorted by name), scaled as decode_video does.
std::vector<Image> load_frame_folder(const std::string& dir, int min_side = 0);

// A video file or a frame folder.
std::vector<Image> load_clip(const std::string& path, int min_side = 0);

// Writes frames (all the same size, even width and height for lossy codecs) as a video file: .mkv and .avi
// with FFV1 in planar RGB (lossless: decoding gives the same pixels back), .mp4 with MPEG-4 Part 2 in
// YUV 4:2:0 (lossy). Written to a temporary name and renamed, so the file is whole or absent.
void write_video(const std::string& path, const std::vector<Image>& frames, int fps = 25);

// Indices of T frames out of `available`: uniform (evenly spaced centres, eval) or one random frame from
// each of T equal segments (train). Throws graft::Error when available < T.
std::vector<int64_t> sample_frame_indices(int64_t available, int64_t frames, bool random,
                                          std::mt19937_64& rng);

struct ClipConfig {
  int64_t frames = 8;         // T
  TransformConfig transform;  // size, crop_pct, mean/std, train (random crop + flip for the whole clip)
};

// (T, 3, size, size) float32 from decoded frames.
torch::Tensor transform_clip(const std::vector<Image>& frames, const ClipConfig& config,
                             std::mt19937_64& rng);

struct ClipList {
  std::vector<LabeledPath> clips;  // a video file or a frame folder each
  std::vector<std::string> classes;
};
// root/<class>/<clip>: classes sorted by name. Throws graft::Error naming the path when root is missing or
// holds no clips.
ClipList scan_clip_folder(const std::string& root);

// The clip data set; get() throws graft::FormatError for an unreadable clip or one shorter than T frames,
// which the DataLoader skips with a warning and counts.
class ClipFolder : public Dataset {
 public:
  ClipFolder(ClipList list, ClipConfig config);
  size_t size() const override { return list_.clips.size(); }
  Sample get(size_t index, std::mt19937_64& rng) const override;  // image: (T, 3, size, size)
  const std::vector<std::string>& classes() const override { return list_.classes; }
  int64_t label(size_t index) const override { return list_.clips[index].label; }
  std::string id(size_t index) const override { return list_.clips[index].path; }

 private:
  ClipList list_;
  ClipConfig config_;
};

}  // namespace graft
