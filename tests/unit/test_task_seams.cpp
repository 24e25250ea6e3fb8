// The seams between the image, text and video tasks (#13): one portable shuffle for every seeded split,
// and names that must become JSON checked when the data is scanned, not when the run is saved.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "graft/data.h"
#include "graft/errors.h"
#include "graft/strings.h"
#include "graft/video.h"

namespace graft {
namespace {

namespace fs = std::filesystem;

fs::path fresh(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("graft_seams_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// std::mt19937_64's outputs are fixed by the standard (its 10000th is 9981545732273789042), so a shuffle that
// draws raw outputs and reduces them itself gives one order everywhere; std::shuffle and
// std::uniform_int_distribution do not (their reduction is implementation-defined).
TEST(PortableShuffle, IsFisherYatesOverRawMt19937Draws) {
  std::mt19937_64 check;
  check.discard(9999);
  ASSERT_EQ(check(), 9981545732273789042ull);
  std::vector<int> values(10);
  for (int i = 0; i < 10; ++i) values[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(42), draws(42);
  portable_shuffle(values, rng);
  std::vector<int> expected(10);
  for (int i = 0; i < 10; ++i) expected[static_cast<size_t>(i)] = i;
  for (size_t i = expected.size(); i > 1; --i) std::swap(expected[i - 1], expected[draws() % i]);
  EXPECT_EQ(values, expected);
}

// Every seeded split in the product goes through portable_shuffle: a std::shuffle in src/ would make the
// text and video splits differ between standard libraries (they did, while image splits did not).
TEST(PortableShuffle, NoSourceFileUsesStdShuffle) {
  std::vector<std::string> offenders;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(GRAFT_SOURCE_DIR) / "src")) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    if (std::regex_search(text.str(), std::regex(R"(std::shuffle\s*\()"))) offenders.push_back(entry.path().string());
  }
  EXPECT_TRUE(offenders.empty()) << offenders.front();
}

TEST(Utf8, InvalidSequencesAreFoundWhereTheyStart) {
  EXPECT_EQ(invalid_utf8_at("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), std::string::npos);
  EXPECT_EQ(invalid_utf8_at("ab\xFF"), 2u);
  EXPECT_EQ(invalid_utf8_at("a\xC0\xAF"), 1u);          // overlong '/'
  EXPECT_EQ(invalid_utf8_at("a\xED\xA0\x80"), 1u);      // a surrogate
  EXPECT_EQ(invalid_utf8_at("a\xE2\x82"), 1u);          // cut short
  EXPECT_EQ(invalid_utf8_at("\xF4\x90\x80\x80"), 0u);   // above U+10FFFF
}

// A class folder whose name is not UTF-8 used to train to the end and then lose the run writing graft.json.
TEST(Utf8, ClassFolderNamesAreCheckedWhenScanned) {
  const fs::path dir = fresh("utf8");
  fs::create_directories(dir / "images" / "cat");
  fs::create_directories(dir / "images" / "d\xFFg");
  fs::create_directories(dir / "clips" / "cat");
  fs::create_directories(dir / "clips" / "d\xFFg");
  for (const char* name : {"images/cat/a.png", "images/d\xFFg/b.png"}) std::ofstream(dir / name) << "x";
  for (const char* name : {"clips/cat/a.mp4", "clips/d\xFFg/b.mp4"}) std::ofstream(dir / name) << "x";
  for (const auto& scan : std::vector<std::function<void()>>{
           [&] { scan_image_folder((dir / "images").string()); },
           [&] { discover_image_splits((dir / "images").string(), 0.2, 1); },
           [&] { scan_clip_folder((dir / "clips").string()); }}) {
    try {
      scan();
      ADD_FAILURE() << "a class folder name that is not UTF-8 passed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("class folder 'd\\xFFg' is not valid UTF-8 (byte 0xFF at offset 1)"),
                std::string::npos)
          << e.what();
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace graft
