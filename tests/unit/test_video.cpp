// Video decoding and encoding at the edges: frames narrower than swscale's vectors, and paths that are not
// regular files. Also run under ASan + UBSan (tests/fuzz/CMakeLists.txt), where an overrun fails at once.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/video.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

fs::path fresh(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("graft_test_video_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<Image> noise_frames(int width, int height, int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Image> frames(static_cast<size_t>(count));
  for (auto& frame : frames) {
    frame.width = width;
    frame.height = height;
    frame.rgb.resize(size_t(width) * height * 3);
    for (auto& byte : frame.rgb) byte = static_cast<uint8_t>(rng() & 0xFF);
  }
  return frames;
}

// A 4x4 frame took an 8-byte write at byte 44 of its 48-byte RGB buffer inside sws_scale, and widths 12 and
// 14 also wrote past the end (heap corruption, or a crash later). Lossless FFV1 must come back byte for byte.
TEST(VideoDecode, NarrowFramesRoundTripExactly) {
  const fs::path dir = fresh("narrow");
  for (const auto& [width, height] : std::vector<std::pair<int, int>>{
           {1, 1}, {4, 4}, {5, 3}, {6, 6}, {10, 10}, {12, 12}, {14, 14}, {3, 17}}) {
    SCOPED_TRACE(std::to_string(width) + "x" + std::to_string(height));
    const auto frames = noise_frames(width, height, 3, static_cast<uint32_t>(width * 100 + height));
    const std::string path =
        (dir / ("clip_" + std::to_string(width) + "x" + std::to_string(height) + ".mkv")).string();
    write_video(path, frames, 10);
    const auto decoded = decode_video(path);
    ASSERT_EQ(decoded.size(), frames.size());
    for (size_t i = 0; i < frames.size(); ++i) {
      EXPECT_EQ(decoded[i].width, width);
      EXPECT_EQ(decoded[i].height, height);
      EXPECT_EQ(decoded[i].rgb, frames[i].rgb) << "frame " << i;
    }
  }
  fs::remove_all(dir);
}

// MPEG-4 (4:2:0) at small even sizes, decoded whole and scaled down (SWS_AREA): sizes as asked, and the
// colours of a flat frame survive (4:2:0 and DCT rounding move a flat colour by a few levels at most).
TEST(VideoDecode, NarrowMpeg4FramesAndScaledDecodes) {
  const fs::path dir = fresh("mpeg4");
  for (const int side : {4, 12, 14}) {
    SCOPED_TRACE(side);
    std::vector<Image> frames(2);
    for (auto& frame : frames) {
      frame.width = frame.height = side;
      frame.rgb.assign(size_t(side) * side * 3, 0);
      for (size_t p = 0; p < frame.rgb.size(); p += 3)
        frame.rgb[p] = 200, frame.rgb[p + 1] = 100, frame.rgb[p + 2] = 50;
    }
    const std::string path = (dir / ("clip" + std::to_string(side) + ".mp4")).string();
    write_video(path, frames, 10);
    const auto decoded = decode_video(path);
    ASSERT_EQ(decoded.size(), 2u);
    ASSERT_EQ(decoded[0].rgb.size(), size_t(side) * side * 3);
    for (size_t p = 0; p < decoded[0].rgb.size(); ++p)
      EXPECT_NEAR(decoded[0].rgb[p], frames[0].rgb[p], 12) << "byte " << p;
    const auto scaled = decode_video(path, 2);
    ASSERT_EQ(scaled.size(), 2u);
    EXPECT_EQ(scaled[0].width, 2);
    EXPECT_EQ(scaled[0].height, 2);
  }
  fs::remove_all(dir);
}

// A FIFO would block the open forever; a folder or a device is not a video or image either.
TEST(VideoDecode, OnlyRegularFilesAreOpened) {
  const fs::path dir = fresh("fifo");
  const std::string fifo = (dir / "pipe.mp4").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto expect_error = [](const std::function<void()>& call, const std::string& expected) {
    try {
      call();
      ADD_FAILURE() << "no error; expected: " << expected;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  expect_error([&] { decode_video(fifo); }, fifo + ": is a FIFO, not a video file");
  expect_error([&] { load_clip(fifo); }, fifo + ": is a FIFO, not a video file");
  expect_error([&] { decode_image(fifo); }, fifo + ": is a FIFO, not an image file");
  expect_error([&] { decode_video("/dev/zero"); }, "/dev/zero: is a device or socket, not a video file");
  expect_error([&] { decode_image(dir.string()); }, dir.string() + ": is a folder, not an image file");
  expect_error([&] { decode_video((dir / "none.mp4").string()); }, "none.mp4: no such video file");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
