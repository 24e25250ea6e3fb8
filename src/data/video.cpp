// Video clips: FFmpeg decoding and encoding, frame folders, frame sampling, the clip dataset.
#include "graft/video.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>

#include "graft/errors.h"
#include "graft/strings.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

std::string av_error(int code) {
  char text[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, text, sizeof text);
  return text;
}

// Owners of FFmpeg's objects, so that every early exit frees them.
struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecFreer {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameFreer {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketFreer {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFreer {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
struct AvFreer {
  void operator()(uint8_t* p) const { av_free(p); }
};

// An RGB24 picture laid out as swscale needs it. Its SIMD code reads and writes whole vectors, so a tight
// width*3-byte row is overrun on narrow frames (a 4x4 frame took an 8-byte write at byte 44 of 48): rows are
// 64-byte aligned and padded, with a spare row and 64 bytes at the end, and pixels are copied in and out.
class SwsRgb {
 public:
  SwsRgb(int width, int height)
      : width_(width),
        height_(height),
        stride_(FFALIGN(width * 3, 64)),
        data_(static_cast<uint8_t*>(av_mallocz(size_t(stride_) * size_t(height + 1) + 64))) {
    if (!data_)
      throw Error("out of memory allocating a " + std::to_string(width) + "x" + std::to_string(height) +
                  " video frame");
    planes[0] = data_.get();
    strides[0] = stride_;
  }
  uint8_t* planes[4] = {nullptr, nullptr, nullptr, nullptr};  // sws_scale's arguments
  int strides[4] = {0, 0, 0, 0};
  void copy_to(std::vector<uint8_t>& rgb) const {
    rgb.resize(size_t(width_) * height_ * 3);
    for (int y = 0; y < height_; ++y)
      std::copy_n(data_.get() + size_t(y) * stride_, size_t(width_) * 3, rgb.data() + size_t(y) * width_ * 3);
  }
  void copy_from(const std::vector<uint8_t>& rgb) {
    for (int y = 0; y < height_; ++y)
      std::copy_n(rgb.data() + size_t(y) * width_ * 3, size_t(width_) * 3, data_.get() + size_t(y) * stride_);
  }

 private:
  int width_, height_, stride_;
  std::unique_ptr<uint8_t, AvFreer> data_;
};

std::string lower_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool is_video_file(const fs::path& path) {
  const std::string ext = lower_extension(path);
  return ext == ".mp4" || ext == ".avi" || ext == ".mkv" || ext == ".mov" || ext == ".webm" || ext == ".m4v";
}

bool is_image_file(const fs::path& path) {
  const std::string ext = lower_extension(path);
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

// The output size for a frame whose shorter side becomes min_side (when larger), as resize_shorter_side.
std::pair<int, int> scaled_size(int width, int height, int min_side) {
  const int shorter = std::min(width, height);
  if (min_side <= 0 || shorter <= min_side) return {width, height};
  const bool wide = width >= height;
  const int longer = wide ? width : height;
  const int new_long = static_cast<int>(double(int64_t{min_side} * longer) / shorter);
  return wide ? std::make_pair(new_long, min_side) : std::make_pair(min_side, new_long);
}

}  // namespace

std::vector<Image> decode_video(const std::string& path, int min_side) {
  regular_file_size(path, "video file");  // FFmpeg would block on a FIFO and read a device without end
  AVFormatContext* raw_format = nullptr;
  int rc = avformat_open_input(&raw_format, path.c_str(), nullptr, nullptr);
  if (rc < 0) throw FormatError(path, "cannot open the video: " + av_error(rc));
  std::unique_ptr<AVFormatContext, FormatCloser> format(raw_format);
  if ((rc = avformat_find_stream_info(format.get(), nullptr)) < 0)
    throw FormatError(path, "cannot read the stream information: " + av_error(rc));
  const AVCodec* codec = nullptr;
  const int stream = av_find_best_stream(format.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
  if (stream < 0 || !codec) throw FormatError(path, "no decodable video stream");
  std::unique_ptr<AVCodecContext, CodecFreer> context(avcodec_alloc_context3(codec));
  if (!context) throw Error("out of memory allocating a video decoder");
  avcodec_parameters_to_context(context.get(), format->streams[stream]->codecpar);
  context->thread_count = 1;  // the data loader decodes clips on its own threads
  if ((rc = avcodec_open2(context.get(), codec, nullptr)) < 0)
    throw FormatError(path, std::string("cannot open the ") + codec->name + " decoder: " + av_error(rc));
  const int width = context->width, height = context->height;
  if (width <= 0 || height <= 0 || int64_t{width} * height > kMaxImagePixels) {
    throw FormatError(path, "frames of " + std::to_string(width) + "x" + std::to_string(height) +
                                " pixels (at most " + std::to_string(kMaxImagePixels) + " pixels per frame)");
  }
  // Plain ints, not a structured binding: clang 14 (the sanitizer build) cannot capture those in a lambda.
  const std::pair<int, int> scaled = scaled_size(width, height, min_side);
  const int out_w = scaled.first, out_h = scaled.second;

  std::unique_ptr<AVFrame, FrameFreer> frame(av_frame_alloc());
  std::unique_ptr<AVPacket, PacketFreer> packet(av_packet_alloc());
  std::unique_ptr<SwsContext, SwsFreer> scaler;
  int scaler_format = -1;
  SwsRgb rgb(out_w, out_h);
  std::vector<Image> frames;
  auto take_frames = [&]() {
    while (true) {
      const int got = avcodec_receive_frame(context.get(), frame.get());
      if (got == AVERROR(EAGAIN) || got == AVERROR_EOF) return;
      if (got < 0) throw FormatError(path, "cannot decode a frame: " + av_error(got));
      if (frame->width != width || frame->height != height)
        throw FormatError(path, "the frame size changes within the video; graft reads constant-size videos");
      if (static_cast<int64_t>(frames.size()) >= kMaxClipFrames)
        throw FormatError(path,
                          "more than " + std::to_string(kMaxClipFrames) + " frames; cut the clip shorter");
      if (!scaler || scaler_format != frame->format) {
        scaler.reset(sws_getContext(width, height, static_cast<AVPixelFormat>(frame->format), out_w, out_h,
                                    AV_PIX_FMT_RGB24, out_w == width ? SWS_POINT : SWS_AREA, nullptr, nullptr,
                                    nullptr));
        scaler_format = frame->format;
        if (!scaler) throw FormatError(path, "cannot convert its pixel format to RGB");
      }
      Image image;
      image.width = out_w;
      image.height = out_h;
      sws_scale(scaler.get(), frame->data, frame->linesize, 0, height, rgb.planes, rgb.strides);
      rgb.copy_to(image.rgb);
      frames.push_back(std::move(image));
      av_frame_unref(frame.get());
    }
  };
  while ((rc = av_read_frame(format.get(), packet.get())) >= 0) {
    if (packet->stream_index == stream) {
      int sent = avcodec_send_packet(context.get(), packet.get());
      if (sent == AVERROR(EAGAIN)) {  // the decoder's output is full: take its frames, then send again
        take_frames();
        sent = avcodec_send_packet(context.get(), packet.get());
      }
      av_packet_unref(packet.get());
      if (sent < 0) throw FormatError(path, "corrupt video data: " + av_error(sent));
      take_frames();
    } else {
      av_packet_unref(packet.get());
    }
  }
  if (rc != AVERROR_EOF) throw FormatError(path, "cannot read the file: " + av_error(rc));
  avcodec_send_packet(context.get(), nullptr);  // flush the decoder's delayed frames
  take_frames();
  if (frames.empty()) throw FormatError(path, "the video has no frames");
  return frames;
}

std::vector<Image> load_frame_folder(const std::string& dir, int min_side) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && is_image_file(entry.path()) && entry.path().filename().string()[0] != '.')
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw FormatError(dir, "no frames (*.jpg, *.png) in the folder");
  if (static_cast<int64_t>(files.size()) > kMaxClipFrames)
    throw FormatError(dir, "more than " + std::to_string(kMaxClipFrames) + " frames");
  std::vector<Image> frames;
  frames.reserve(files.size());
  for (const auto& file : files) {
    Image image = decode_image(file.string());
    const auto [w, h] = scaled_size(image.width, image.height, min_side);
    if (w != image.width) image = resize(image, w, h);
    if (!frames.empty() && (image.width != frames[0].width || image.height != frames[0].height))
      throw FormatError(file.string(), "a frame of another size than the clip's first frame");
    frames.push_back(std::move(image));
  }
  return frames;
}

std::vector<Image> load_clip(const std::string& path, int min_side) {
  return fs::is_directory(path) ? load_frame_folder(path, min_side) : decode_video(path, min_side);
}

// FFmpeg's encode sequence in one function (about 85 lines): open, stream, codec, header, frames, flush,
// trailer, each resource released on every path, then the rename that makes the file whole.
void write_video(const std::string& path, const std::vector<Image>& frames, int fps) {
  if (frames.empty()) throw Error(path + ": no frames to write");
  const int width = frames[0].width, height = frames[0].height;
  for (const auto& f : frames)
    if (f.width != width || f.height != height || f.rgb.size() != size_t(width) * height * 3)
      throw Error(path + ": frames of different sizes (or pixels that do not fill width x height x 3 bytes)");
  const std::string ext = lower_extension(path);
  const bool lossless = ext == ".mkv" || ext == ".avi";
  if (!lossless && ext != ".mp4")
    throw Error(path + ": graft writes .mkv/.avi (lossless FFV1) or .mp4 (MPEG-4)");
  const AVCodecID codec_id = lossless ? AV_CODEC_ID_FFV1 : AV_CODEC_ID_MPEG4;
  if (!lossless && (width % 2 || height % 2)) throw Error(path + ": MPEG-4 needs an even width and height");
  const std::string temporary = path + ".tmp" + ext;  // the muxer picks the container from the extension

  AVFormatContext* raw = nullptr;
  int rc = avformat_alloc_output_context2(&raw, nullptr, nullptr, temporary.c_str());
  if (rc < 0 || !raw) throw Error(path + ": cannot create the container: " + av_error(rc));
  std::unique_ptr<AVFormatContext, void (*)(AVFormatContext*)> format(raw, [](AVFormatContext* f) {
    if (f->pb) avio_closep(&f->pb);
    avformat_free_context(f);
  });
  const AVCodec* codec = avcodec_find_encoder(codec_id);
  if (!codec) throw Error(path + ": this FFmpeg has no " + avcodec_get_name(codec_id) + " encoder");
  // Lossless: an 8-bit RGB layout the encoder takes (FFV1 takes BGR0, i.e. 0RGB32 on little-endian).
  AVPixelFormat pixel_format = AV_PIX_FMT_YUV420P;
  if (lossless) {
    pixel_format = AV_PIX_FMT_NONE;
    for (AVPixelFormat wanted :
         {AV_PIX_FMT_RGB24, AV_PIX_FMT_BGR0, AV_PIX_FMT_0RGB32, AV_PIX_FMT_RGB32, AV_PIX_FMT_GBRP}) {
      for (const AVPixelFormat* f = codec->pix_fmts;
           f && *f != AV_PIX_FMT_NONE && pixel_format == AV_PIX_FMT_NONE; ++f)
        if (*f == wanted) pixel_format = wanted;
    }
    if (pixel_format == AV_PIX_FMT_NONE)
      throw Error(path + ": the FFV1 encoder takes no 8-bit RGB format here");
  }
  AVStream* stream = avformat_new_stream(format.get(), nullptr);
  std::unique_ptr<AVCodecContext, CodecFreer> context(avcodec_alloc_context3(codec));
  context->width = width;
  context->height = height;
  context->pix_fmt = pixel_format;
  context->time_base = AVRational{1, fps};
  context->framerate = AVRational{fps, 1};
  context->gop_size = 12;
  if (!lossless) context->bit_rate = int64_t{width} * height * fps * 4;  // generous: small artefacts
  if (format->oformat->flags & AVFMT_GLOBALHEADER) context->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  if ((rc = avcodec_open2(context.get(), codec, nullptr)) < 0)
    throw Error(path + ": cannot open the " + codec->name + " encoder: " + av_error(rc));
  avcodec_parameters_from_context(stream->codecpar, context.get());
  stream->time_base = context->time_base;
  if ((rc = avio_open(&format->pb, temporary.c_str(), AVIO_FLAG_WRITE)) < 0)
    throw Error(temporary + ": cannot open for writing: " + av_error(rc));
  if ((rc = avformat_write_header(format.get(), nullptr)) < 0) throw Error(path + ": " + av_error(rc));

  std::unique_ptr<SwsContext, SwsFreer> scaler(sws_getContext(
      width, height, AV_PIX_FMT_RGB24, width, height, pixel_format, SWS_POINT, nullptr, nullptr, nullptr));
  std::unique_ptr<AVFrame, FrameFreer> frame(av_frame_alloc());
  frame->format = pixel_format;
  frame->width = width;
  frame->height = height;
  if (av_frame_get_buffer(frame.get(), 0) < 0) throw Error("out of memory allocating a video frame");
  std::unique_ptr<AVPacket, PacketFreer> packet(av_packet_alloc());
  auto drain = [&](const AVFrame* input) {
    if ((rc = avcodec_send_frame(context.get(), input)) < 0)
      throw Error(path + ": encoding: " + av_error(rc));
    while ((rc = avcodec_receive_packet(context.get(), packet.get())) >= 0) {
      packet->duration = 1;  // one frame; without it MP4's edit list leaves the last frame out
      av_packet_rescale_ts(packet.get(), context->time_base, stream->time_base);
      packet->stream_index = stream->index;
      if ((rc = av_interleaved_write_frame(format.get(), packet.get())) < 0)
        throw Error(path + ": writing: " + av_error(rc));
    }
  };
  SwsRgb rgb(width, height);
  for (size_t i = 0; i < frames.size(); ++i) {
    if (av_frame_make_writable(frame.get()) < 0) throw Error("out of memory allocating a video frame");
    rgb.copy_from(frames[i].rgb);
    sws_scale(scaler.get(), rgb.planes, rgb.strides, 0, height, frame->data, frame->linesize);
    frame->pts = static_cast<int64_t>(i);
    drain(frame.get());
  }
  drain(nullptr);
  if ((rc = av_write_trailer(format.get())) < 0) throw Error(path + ": " + av_error(rc));
  avio_closep(&format->pb);
  fs::rename(temporary, path);
}

std::vector<int64_t> sample_frame_indices(int64_t available, int64_t frames, bool random,
                                          std::mt19937_64& rng) {
  if (frames <= 0) throw Error("frames per clip must be > 0, got " + std::to_string(frames));
  if (available < frames)
    throw Error("the clip has " + std::to_string(available) + " frames, fewer than the " +
                std::to_string(frames) + " sampled per clip");
  std::vector<int64_t> indices(static_cast<size_t>(frames));
  const double segment = double(available) / double(frames);
  for (int64_t t = 0; t < frames; ++t) {
    const int64_t begin = static_cast<int64_t>(std::floor(segment * t));
    const int64_t end = std::max(begin + 1, static_cast<int64_t>(std::floor(segment * (t + 1))));
    indices[static_cast<size_t>(t)] =
        random ? begin + static_cast<int64_t>(rng() % static_cast<uint64_t>(end - begin))
               : (begin + end - 1) / 2;
  }
  return indices;
}

torch::Tensor transform_clip(const std::vector<Image>& frames, const ClipConfig& config,
                             std::mt19937_64& rng) {
  const std::vector<int64_t> picked =
      sample_frame_indices(static_cast<int64_t>(frames.size()), config.frames, config.transform.train, rng);
  // One crop box, flip and jitter for the whole clip: every frame draws from the same generator state.
  const std::mt19937_64 clip_rng = rng;
  std::vector<torch::Tensor> out;
  out.reserve(picked.size());
  for (int64_t index : picked) {
    std::mt19937_64 frame_rng = clip_rng;
    out.push_back(transform_image(frames[static_cast<size_t>(index)], config.transform, frame_rng));
  }
  rng.discard(1);
  return torch::stack(out);
}

ClipList scan_clip_folder(const std::string& root) {
  if (!fs::is_directory(root)) throw Error(root + ": no such folder (expected root/<class>/<clip>)");
  ClipList list;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory() && entry.path().filename().string()[0] != '.')
      list.classes.push_back(entry.path().filename().string());
  }
  std::sort(list.classes.begin(), list.classes.end());
  for (const std::string& name : list.classes) require_utf8(name, root, "class folder");
  for (size_t label = 0; label < list.classes.size(); ++label) {
    std::vector<std::string> clips;
    for (const auto& entry : fs::directory_iterator(fs::path(root) / list.classes[label])) {
      if (entry.path().filename().string()[0] == '.') continue;
      if ((entry.is_regular_file() && is_video_file(entry.path())) || entry.is_directory())
        clips.push_back(entry.path().string());
    }
    std::sort(clips.begin(), clips.end());
    for (auto& clip : clips) list.clips.push_back({std::move(clip), static_cast<int64_t>(label)});
  }
  if (list.clips.empty()) {
    throw Error(root +
                ": no clips found (expected root/<class>/<clip>.mp4|avi|mkv|mov|webm or "
                "root/<class>/<clip>/ folders of frames)");
  }
  return list;
}

ClipFolder::ClipFolder(ClipList list, ClipConfig config)
    : list_(std::move(list)), config_(std::move(config)) {}

Sample ClipFolder::get(size_t index, std::mt19937_64& rng) const {
  const LabeledPath& clip = list_.clips[index];
  const std::vector<Image> frames = load_clip(clip.path, decode_min_side(config_.transform));
  Sample sample;
  try {
    sample.image = transform_clip(frames, config_, rng);
  } catch (const FormatError&) {
    throw;
  } catch (const Error& e) {
    throw FormatError(clip.path, e.what());  // too short: skipped by the loader like an unreadable clip
  }
  sample.label = clip.label;
  sample.id = clip.path;
  return sample;
}

}  // namespace graft
