// The Hugging Face Hub downloader (src/io/hub*.cpp, http_client.cpp) against a local fake Hub
// (tests/fake_hub.h): cache layout equal to huggingface_hub's, pickles never fetched, resumed downloads,
// checksum failures, file names that escape the cache, offline mode, tokens; and SHA-256 against the FIPS
// 180-4 test vectors.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "fake_hub.h"
#include "graft/errors.h"
#include "graft/hub.h"
#include "graft/sha256.h"

namespace {

namespace fs = std::filesystem;
using graft::testing::contains;
using graft::testing::FakeFile;
using graft::testing::FakeHub;
using graft::testing::FakeRepo;
using graft::testing::git_file;
using graft::testing::lfs_file;
using graft::testing::read_file;

const std::string kCommit = "0123456789abcdef0123456789abcdef01234567";
const std::string kCommit2 = "89abcdef0123456789abcdef0123456789abcdef";

std::string random_bytes(size_t size, unsigned seed) {
  std::mt19937 generator(seed);
  std::string bytes(size, '\0');
  for (auto& b : bytes) b = static_cast<char>(generator() & 0xff);
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// SHA-256: FIPS 180-4 / NIST CAVS examples.

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(graft::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(graft::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(graft::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(graft::sha256_hex(
                "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
                "lmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(graft::sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Padding edge cases: 55, 56 and 64 bytes (the length field fits, does not fit, a whole block).
  EXPECT_EQ(graft::sha256_hex(std::string(55, 'a')),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(graft::sha256_hex(std::string(56, 'a')),
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(graft::sha256_hex(std::string(64, 'a')),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, IncrementalUpdatesAndFilesAgreeWithOneShot) {
  const std::string data = random_bytes(100003, 7);
  const std::string expected = graft::sha256_hex(data);
  for (size_t chunk : {1, 3, 63, 64, 65, 1000}) {
    graft::Sha256 hash;
    for (size_t i = 0; i < data.size(); i += chunk)
      hash.update(data.data() + i, std::min(chunk, data.size() - i));
    EXPECT_EQ(hash.hex_digest(), expected) << "chunk " << chunk;
  }
  const fs::path file = fs::temp_directory_path() / ("graft_sha_" + std::to_string(getpid()));
  std::ofstream(file, std::ios::binary) << data;
  EXPECT_EQ(graft::sha256_file(file.string()), expected);
  fs::remove(file);
  EXPECT_THROW(graft::sha256_file("/nonexistent/file"), graft::Error);
}

// NIST's SHA-1 examples (FIPS 180-4 example set) and `git hash-object` for the blob ids.
TEST(Sha1, KnownVectorsAndGitBlobIds) {
  const auto sha1 = [](const std::string& data) {
    graft::Sha1 hash;
    hash.update(data);
    return hash.hex_digest();
  };
  EXPECT_EQ(sha1(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  EXPECT_EQ(sha1("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
  EXPECT_EQ(sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  EXPECT_EQ(sha1(std::string(1000000, 'a')), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
  // printf 'hello' | git hash-object --stdin, and the same for "" and 100000 'x'.
  EXPECT_EQ(graft::git_blob_sha1("hello"), "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0");
  EXPECT_EQ(graft::git_blob_sha1(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
  EXPECT_EQ(graft::git_blob_sha1(std::string(100000, 'x')), "56e0448612acbb706b96b7e8e46a210f15386a38");
  const fs::path file = fs::temp_directory_path() / ("graft_sha1_" + std::to_string(getpid()));
  std::ofstream(file, std::ios::binary) << std::string(100000, 'x');
  EXPECT_EQ(graft::git_blob_sha1_file(file.string()), "56e0448612acbb706b96b7e8e46a210f15386a38");
  fs::remove(file);
  EXPECT_THROW(graft::git_blob_sha1_file("/nonexistent/file"), graft::Error);
}

// ---------------------------------------------------------------------------------------------------
// Names

TEST(HubNames, FileNamesThatEscapeTheCacheAreRefused) {
  for (const std::string ok :
       {"config.json", "model.safetensors", "tfjs/model.json", "a.b/c-d_e.h5", "..a", "a.."})
    EXPECT_NO_THROW(graft::check_hub_file_name(ok)) << ok;
  for (const std::string& bad :
       std::vector<std::string>{"", "..", "../x", "a/../../b", "a/..", "/etc/passwd", "a\\..\\b", "a//b",
                                "./a", "a/./b", "a/", "a\nb", std::string(1001, 'a')}) {
    try {
      graft::check_hub_file_name(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const graft::Error& e) {
      EXPECT_TRUE(contains(e.what(), "refused")) << e.what();
    }
  }
}

TEST(HubNames, RepositoryIdsAndFolders) {
  const auto repo = graft::HubRepo::parse("google-bert/bert-base-uncased");
  EXPECT_EQ(repo.id, "google-bert/bert-base-uncased");
  EXPECT_EQ(repo.revision, "main");
  EXPECT_EQ(repo.folder_name(), "models--google-bert--bert-base-uncased");
  const auto pinned = graft::HubRepo::parse("org/name@v1.0");
  EXPECT_EQ(pinned.id, "org/name");
  EXPECT_EQ(pinned.revision, "v1.0");
  EXPECT_EQ(graft::HubRepo::parse("gpt2").folder_name(), "models--gpt2");
  for (const std::string bad :
       {"a/b/c", "org/../x", "org/na--me", "-org/x", "org/x.", "org/x@", "org/x@../y", "o rg/x", "/x"})
    EXPECT_THROW(graft::HubRepo::parse(bad), graft::SpecError) << bad;
  EXPECT_TRUE(graft::looks_like_hub_repo("org/name"));
  EXPECT_TRUE(graft::looks_like_hub_repo("org/name@refs/pr/1"));
  EXPECT_FALSE(graft::looks_like_hub_repo("model.safetensors"));  // no ORG/: a missing file, not a repo
  EXPECT_FALSE(graft::looks_like_hub_repo("runs/a/model.safetensors"));
  EXPECT_FALSE(graft::looks_like_hub_repo("./org/name"));
}

TEST(HubNames, DefaultSelectionNeverTakesPickles) {
  for (const std::string taken :
       {"config.json", "model.safetensors", "model-00001-of-00002.safetensors", "tokenizer.json", "vocab.txt",
        "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tf_model.h5",
        "model.json"})
    EXPECT_EQ(graft::hub_skip_reason(taken), "") << taken;
  for (const std::string pickle :
       {"pytorch_model.bin", "model.pt", "model.PTH", "last.ckpt", "x.pkl", "training_args.bin"}) {
    EXPECT_TRUE(graft::is_pickle_file(pickle)) << pickle;
    EXPECT_TRUE(contains(graft::hub_skip_reason(pickle), "pickle")) << pickle;
  }
  EXPECT_TRUE(contains(graft::hub_skip_reason("README.md"), "--files README.md"));
  EXPECT_TRUE(contains(graft::hub_skip_reason("onnx/model.safetensors"), "subfolder"));
}

TEST(HubOptions, ReadFromTheEnvironment) {
  setenv("HF_HOME", "/tmp/hf_home_test", 1);
  unsetenv("HF_HUB_CACHE");
  setenv("HF_ENDPOINT", "http://127.0.0.1:9/", 1);
  setenv("HF_HUB_OFFLINE", "1", 1);
  setenv("HF_TOKEN", " hf_abc \n", 1);
  auto options = graft::HubOptions::from_environment();
  EXPECT_EQ(options.cache_dir, "/tmp/hf_home_test/hub");
  EXPECT_EQ(options.endpoint, "http://127.0.0.1:9");
  EXPECT_TRUE(options.offline);
  EXPECT_EQ(options.token, "hf_abc");
  setenv("HF_HUB_CACHE", "/tmp/hf_cache_test", 1);
  setenv("HF_HUB_OFFLINE", "0", 1);
  setenv("HF_ENDPOINT", "ftp://mirror", 1);
  EXPECT_THROW(graft::HubOptions::from_environment(), graft::Error);
  unsetenv("HF_ENDPOINT");
  options = graft::HubOptions::from_environment();
  EXPECT_EQ(options.cache_dir, "/tmp/hf_cache_test");
  EXPECT_EQ(options.endpoint, "https://huggingface.co");
  EXPECT_FALSE(options.offline);
  for (const char* name : {"HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"}) unsetenv(name);
}

// ---------------------------------------------------------------------------------------------------
// Pulls against the fake Hub

class HubPull : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = fs::temp_directory_path() / ("graft_hub_unit_" + std::to_string(getpid()) + "_" +
                                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(cache_);
    options_.endpoint = hub_.endpoint();
    options_.cache_dir = cache_.string();
    options_.retry_delay_seconds = 0.01;
    options_.log = &log_;
    FakeRepo repo;
    repo.commit = kCommit;
    repo.branches = {"main", "v1"};
    repo.files["config.json"] = git_file("{\"model_type\": \"bert\"}");
    weights_ = random_bytes(3 << 20, 1);  // 3 MiB: large enough for a progress bar and a mid-file drop
    repo.files["model.safetensors"] = lfs_file(weights_);
    repo.files["pytorch_model.bin"] = lfs_file("PICKLE");
    repo.files["README.md"] = git_file("# readme");
    hub_.set_repo("org/model", repo);
  }
  void TearDown() override { fs::remove_all(cache_); }

  fs::path repo_folder() const { return cache_ / "models--org--model"; }
  std::vector<graft::testing::FakeRequest> content_gets(const std::string& path_part) const {
    std::vector<graft::testing::FakeRequest> found;
    for (const auto& request : hub_.requests())
      if (request.method == "GET" && contains(request.path, path_part)) found.push_back(request);
    return found;
  }

  FakeHub hub_;
  fs::path cache_;
  graft::HubOptions options_;
  std::ostringstream log_;
  std::string weights_;
};

TEST_F(HubPull, LaysOutTheCacheAsHuggingfaceHubAndSkipsPickles) {
  const auto result = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_EQ(result.commit, kCommit);
  EXPECT_EQ(result.files, (std::vector<std::string>{"config.json", "model.safetensors"}));
  bool pickle_skipped = false;
  for (const auto& [name, why] : result.skipped)
    if (name == "pytorch_model.bin") pickle_skipped = contains(why, "pickle");
  EXPECT_TRUE(pickle_skipped) << log_.str();
  EXPECT_TRUE(content_gets("pytorch_model").empty());
  for (const auto& request : hub_.requests())
    EXPECT_FALSE(contains(request.path, "pytorch_model.bin")) << request.path;

  const std::string sha = graft::sha256_hex(weights_);
  const fs::path snapshot = repo_folder() / "snapshots" / kCommit;
  EXPECT_EQ(result.snapshot, snapshot.string());
  EXPECT_EQ(read_file(repo_folder() / "refs" / "main"), kCommit);
  EXPECT_TRUE(fs::is_symlink(snapshot / "model.safetensors"));
  EXPECT_EQ(fs::read_symlink(snapshot / "model.safetensors"), fs::path("../../blobs") / sha);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), weights_);
  EXPECT_EQ(read_file(repo_folder() / "blobs" / sha), weights_);
  const std::string config_etag = graft::git_blob_sha1("{\"model_type\": \"bert\"}");
  EXPECT_EQ(fs::read_symlink(snapshot / "config.json"), fs::path("../../blobs") / config_etag);
  EXPECT_EQ(read_file(snapshot / "config.json"), "{\"model_type\": \"bert\"}");
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / (sha + ".incomplete")));
  EXPECT_EQ(result.downloaded_bytes, static_cast<int64_t>(weights_.size() + 22));
  EXPECT_TRUE(contains(log_.str(), "sha256 ok")) << log_.str();
  EXPECT_TRUE(contains(log_.str(), "MiB/s")) << log_.str();  // the progress bar of the 3 MiB file

  // Pulled again: nothing is downloaded, only asked about.
  hub_.clear_requests();
  const auto again = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_EQ(again.downloaded_bytes, 0);
  EXPECT_TRUE(content_gets("/cdn/").empty());
  EXPECT_EQ(again.files, result.files);
}

TEST_F(HubPull, ResumesADroppedConnectionWithARangeRequest) {
  const size_t half = weights_.size() / 2;
  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.files["model.safetensors"].drops = 1;
    repo.files["model.safetensors"].drop_after = half;
  });
  const auto result = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_EQ(read_file(fs::path(result.snapshot) / "model.safetensors"), weights_);
  const auto gets = content_gets("/cdn/");
  ASSERT_EQ(gets.size(), 2u);
  EXPECT_EQ(gets[0].headers.count("range"), 0u);
  EXPECT_EQ(gets[1].headers.at("range"), "bytes=" + std::to_string(half) + "-");
  EXPECT_EQ(gets[1].status, 206);
  EXPECT_TRUE(contains(log_.str(), "resuming")) << log_.str();
  EXPECT_TRUE(contains(log_.str(), "downloaded (resumed), sha256 ok")) << log_.str();
}

TEST_F(HubPull, AFailedPullKeepsThePartialFileAndTheNextPullResumesIt) {
  const size_t part = 1 << 20;
  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.files["model.safetensors"].drops = 100;
    repo.files["model.safetensors"].drop_after = part;
  });
  options_.attempts = 1;
  const std::string sha = graft::sha256_hex(weights_);
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
    ADD_FAILURE() << "a dropped connection passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), hub_.endpoint() + "/org/model/resolve/" + kCommit + "/model.safetensors"))
        << e.what();
    EXPECT_TRUE(contains(e.what(), std::to_string(part) + " of " + std::to_string(weights_.size())))
        << e.what();
    EXPECT_TRUE(contains(e.what(), "pull again to resume")) << e.what();
  }
  EXPECT_EQ(fs::file_size(repo_folder() / "blobs" / (sha + ".incomplete")), part);
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / sha));
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kCommit / "model.safetensors"));

  hub_.edit_repo("org/model", [](FakeRepo& repo) { repo.files["model.safetensors"].drops = 0; });
  hub_.clear_requests();
  const auto result = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_EQ(read_file(fs::path(result.snapshot) / "model.safetensors"), weights_);
  const auto gets = content_gets("/cdn/");
  ASSERT_EQ(gets.size(), 1u);
  EXPECT_EQ(gets[0].headers.at("range"), "bytes=" + std::to_string(part) + "-");
  EXPECT_EQ(result.downloaded_bytes, static_cast<int64_t>(weights_.size() - part));
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / (sha + ".incomplete")));
}

TEST_F(HubPull, WaitsForTheLockHuggingfaceHubTakesOnABlob) {
  // Another downloader (huggingface_hub's filelock is flock on Unix) holds the blob's lock for a while.
  const std::string sha = graft::sha256_hex(weights_);
  const fs::path locks = cache_ / ".locks" / "models--org--model";
  fs::create_directories(locks);
  const int held = ::open((locks / (sha + ".lock")).c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_EQ(::flock(held, LOCK_EX), 0);
  std::thread release([held] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ::close(held);
  });
  const auto start = std::chrono::steady_clock::now();
  const auto result = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  release.join();
  EXPECT_GE(waited, 0.25);
  EXPECT_TRUE(contains(log_.str(), "another process is downloading it")) << log_.str();
  EXPECT_EQ(read_file(fs::path(result.snapshot) / "model.safetensors"), weights_);
}

TEST_F(HubPull, AWrongChecksumIsAClearErrorAndPublishesNothing) {
  const std::string claimed = graft::sha256_hex("something else");
  hub_.edit_repo("org/model",
                 [&](FakeRepo& repo) { repo.files["model.safetensors"].sha256_override = claimed; });
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"model.safetensors"}, options_);
    ADD_FAILURE() << "a corrupt file passed";
  } catch (const graft::Error& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message, "model.safetensors has SHA-256 " + graft::sha256_hex(weights_))) << message;
    EXPECT_TRUE(contains(message, "expected " + claimed)) << message;
    EXPECT_TRUE(contains(message, "/resolve/" + kCommit + "/model.safetensors")) << message;
  }
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / claimed));
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / (claimed + ".incomplete")));
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kCommit / "model.safetensors"));
  EXPECT_FALSE(fs::exists(repo_folder() / "refs" / "main"));
}

TEST_F(HubPull, AFileKeptInGitIsCheckedAgainstItsGitBlobId) {
  const std::string claimed = graft::git_blob_sha1("{\"model_type\": \"gpt2\"}");
  hub_.edit_repo("org/model", [&](FakeRepo& repo) { repo.files["config.json"].git_etag_override = claimed; });
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
    ADD_FAILURE() << "a corrupt file passed";
  } catch (const graft::Error& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message, "config.json has git blob id " +
                                      graft::git_blob_sha1("{\"model_type\": \"bert\"}") + ", expected " +
                                      claimed))
        << message;
  }
  EXPECT_FALSE(fs::exists(repo_folder() / "blobs" / claimed));
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kCommit / "config.json"));
  // The true id passes, and the log says it was checked.
  hub_.edit_repo("org/model", [&](FakeRepo& repo) { repo.files["config.json"].git_etag_override.clear(); });
  graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
  EXPECT_TRUE(contains(log_.str(), "config.json  22 bytes  downloaded, git blob id ok")) << log_.str();
}

// A server whose body runs past the size it announced (it wrote 15 GB in 20 s before) is cut off at that
// size, and nothing of the file is kept; a file announced with no size stops at max_unsized_bytes.
TEST_F(HubPull, ADownloadStopsAtItsAnnouncedSizeAndKeepsNothingOfAnOverrun) {
  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.files["config.json"].content = random_bytes(1 << 20, 7);  // 1 MiB sent...
    repo.files["config.json"].announced_size = 100;                // ...for 100 announced
  });
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
    ADD_FAILURE() << "a body longer than announced was accepted";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "config.json: the server sent more than the 100 bytes it announced"))
        << e.what();
  }
  for (const auto& entry : fs::recursive_directory_iterator(repo_folder()))
    EXPECT_FALSE(entry.is_regular_file() && entry.file_size() > 100) << entry.path() << " kept";
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kCommit / "config.json"));

  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.files["config.json"].announced_size = -1;
    repo.files["config.json"].no_size = true;
  });
  options_.max_unsized_bytes = 4096;
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
    ADD_FAILURE() << "a file of no size ran past max_unsized_bytes";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "more than the 4096 bytes graft accepts for a file of no announced size"))
        << e.what();
  }
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots" / kCommit / "config.json"));
}

// Neither a checksum (an ETag that is no hash) nor a size: the file is linked but the log says it was not
// verified (it said "size checked").
TEST_F(HubPull, AFileWithNothingToCheckItAgainstIsSaidToBeUnverified) {
  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.files["config.json"].git_etag_override = "weak-etag-1";
    repo.files["config.json"].no_size = true;
  });
  graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
  EXPECT_TRUE(contains(log_.str(), "downloaded, not verified (no checksum, no size)")) << log_.str();
  EXPECT_TRUE(contains(log_.str(), "the server gave neither a checksum nor a size")) << log_.str();
  EXPECT_FALSE(contains(log_.str(), "size checked")) << log_.str();
}

TEST_F(HubPull, ListingsWithFileNamesThatEscapeTheCacheAreRefused) {
  for (const std::string evil :
       {"../../evil.safetensors", "/tmp/evil.safetensors", "a\\..\\evil.safetensors"}) {
    hub_.edit_repo("org/model", [&](FakeRepo& repo) { repo.listed_only = {evil}; });
    try {
      graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
      ADD_FAILURE() << "accepted " << evil;
    } catch (const graft::Error& e) {
      EXPECT_TRUE(contains(e.what(), "refused")) << e.what();
      EXPECT_TRUE(contains(e.what(), "/api/models/org/model/revision/main")) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(cache_ / "evil.safetensors"));
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots"));
  EXPECT_THROW(graft::hub_pull(graft::HubRepo::parse("org/model"), {"../x"}, options_), graft::Error);
}

// A hostile mirror's listing nested 100,000 levels deep crashed graft pull (stack overflow in nlohmann's
// serializer quoting it): nesting is bounded while parsing, and nothing is written.
TEST_F(HubPull, ADeeplyNestedListingIsRefusedWhileParsing) {
  hub_.edit_repo("org/model", [&](FakeRepo& repo) {
    repo.listing_override = "{\"sha\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  });
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
    ADD_FAILURE() << "a listing nested 100,000 levels deep passed";
  } catch (const graft::FormatError& e) {
    EXPECT_TRUE(contains(e.what(), "/api/models/org/model/revision/main")) << e.what();
    EXPECT_TRUE(contains(e.what(), "the revision listing nests JSON deeper than 128 levels")) << e.what();
  }
  EXPECT_FALSE(fs::exists(repo_folder() / "snapshots"));
}

TEST_F(HubPull, ASymlinkInTheSnapshotIsNotFollowed) {
  // A snapshot folder component that is a link (planted, or left by another file) is refused.
  hub_.edit_repo("org/model", [&](FakeRepo& repo) { repo.files["sub/config.json"] = git_file("{}"); });
  const fs::path snapshot = repo_folder() / "snapshots" / kCommit;
  fs::create_directories(snapshot);
  fs::create_directories(cache_ / "elsewhere");
  fs::create_directory_symlink(cache_ / "elsewhere", snapshot / "sub");
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"sub/config.json"}, options_);
    ADD_FAILURE() << "wrote through a symlink";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "symbolic link")) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(cache_ / "elsewhere"));
}

TEST_F(HubPull, OfflineUsesTheCacheOnlyOrSaysWhatIsMissing) {
  options_.offline = true;
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
    ADD_FAILURE() << "offline pull of an uncached repo passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "HF_HUB_OFFLINE")) << e.what();
    EXPECT_TRUE(contains(e.what(), "graft pull org/model")) << e.what();
  }
  EXPECT_TRUE(hub_.requests().empty());
  options_.offline = false;
  graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  hub_.clear_requests();
  options_.offline = true;
  const auto cached = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_TRUE(cached.from_cache_only);
  EXPECT_EQ(cached.commit, kCommit);
  EXPECT_EQ(cached.files, (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_TRUE(hub_.requests().empty());
  EXPECT_EQ(graft::resolve_weights("org/model", options_), cached.snapshot + "/model.safetensors");
  EXPECT_THROW(graft::hub_pull(graft::HubRepo::parse("org/model"), {"tokenizer.json"}, options_),
               graft::Error);
  EXPECT_THROW(graft::resolve_weights("org/model@v1", options_), graft::Error);  // v1 never pulled
}

TEST_F(HubPull, AnUnreachableHubFallsBackToTheCache) {
  graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  options_.endpoint = "http://127.0.0.1:1";  // nothing listens there
  const auto cached = graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  EXPECT_TRUE(cached.from_cache_only);
  EXPECT_TRUE(contains(log_.str(), "using the cached snapshot")) << log_.str();
  EXPECT_THROW(graft::hub_pull(graft::HubRepo::parse("org/other"), {}, options_), graft::Error);
}

TEST_F(HubPull, SendsTheTokenAndExplainsA401) {
  hub_.require_token("hf_secret");
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
    ADD_FAILURE() << "no token passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "HTTP 401")) << e.what();
    EXPECT_TRUE(contains(e.what(), "HF_TOKEN")) << e.what();
  }
  hub_.clear_requests();
  options_.token = "hf_secret";
  graft::hub_pull(graft::HubRepo::parse("org/model"), {}, options_);
  int authorised = 0;
  for (const auto& request : hub_.requests()) {
    if (request.path.rfind("/cdn/", 0) == 0) continue;
    EXPECT_EQ(request.headers.at("authorization"), "Bearer hf_secret") << request.path;
    ++authorised;
  }
  EXPECT_GE(authorised, 3);  // the listing and a HEAD per file
}

TEST_F(HubPull, RevisionsWriteRefsAndCommitsDoNot) {
  auto v1 = graft::hub_pull(graft::HubRepo::parse("org/model@v1"), {"config.json"}, options_);
  EXPECT_EQ(read_file(repo_folder() / "refs" / "v1"), kCommit);
  EXPECT_EQ(v1.files, std::vector<std::string>{"config.json"});
  hub_.edit_repo("org/model", [](FakeRepo& repo) { repo.commit = kCommit2; });
  auto pinned = graft::hub_pull(graft::HubRepo::parse("org/model@" + kCommit2), {"config.json"}, options_);
  EXPECT_EQ(pinned.commit, kCommit2);
  EXPECT_FALSE(fs::exists(repo_folder() / "refs" / kCommit2));
  EXPECT_TRUE(fs::exists(repo_folder() / "snapshots" / kCommit2 / "config.json"));
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model@nope"), {}, options_);
    ADD_FAILURE() << "an unknown revision passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "HTTP 404")) << e.what();
    EXPECT_TRUE(contains(e.what(), "/api/models/org/model/revision/nope")) << e.what();
  }
}

TEST_F(HubPull, ExplicitFilesAreCheckedAndPicklesRefused) {
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"pytorch_model.bin"}, options_);
    ADD_FAILURE() << "a pickle was fetched";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "pickle")) << e.what();
  }
  EXPECT_TRUE(content_gets("/cdn/").empty());
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"tokenizer.json"}, options_);
    ADD_FAILURE() << "a missing file passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), "has no file tokenizer.json")) << e.what();
    EXPECT_TRUE(contains(e.what(), "model.safetensors")) << e.what();  // what there is
  }
  const auto readme = graft::hub_pull(graft::HubRepo::parse("org/model"), {"README.md"}, options_);
  EXPECT_EQ(read_file(fs::path(readme.snapshot) / "README.md"), "# readme");
}

TEST_F(HubPull, TfjsShardsComeThroughTheirManifest) {
  FakeRepo repo;
  repo.commit = kCommit;
  repo.files["model.json"] =
      git_file(R"({"weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"]}]})");
  repo.files["group1-shard1of2.bin"] = lfs_file("shard one");
  repo.files["group1-shard2of2.bin"] = lfs_file("shard two");
  repo.files["pytorch_model.bin"] = lfs_file("PICKLE");
  hub_.set_repo("org/tfjs", repo);
  const auto result = graft::hub_pull(graft::HubRepo::parse("org/tfjs"), {}, options_);
  EXPECT_EQ(result.files,
            (std::vector<std::string>{"group1-shard1of2.bin", "group1-shard2of2.bin", "model.json"}));
  ASSERT_EQ(result.skipped.size(), 1u);
  EXPECT_EQ(result.skipped[0].first, "pytorch_model.bin");
  EXPECT_EQ(graft::resolve_weights("org/tfjs", options_), result.snapshot + "/model.json");
}

TEST_F(HubPull, ResolveWeightsLeavesPathsAlone) {
  EXPECT_EQ(graft::resolve_weights("", options_), "");
  EXPECT_EQ(graft::resolve_weights("missing.safetensors", options_), "missing.safetensors");
  // An existing folder named like ORG/NAME is a path, not a repository.
  const fs::path local = cache_ / "org" / "model";
  fs::create_directories(local);
  const fs::path cwd = fs::current_path();
  fs::current_path(cache_);
  EXPECT_EQ(graft::resolve_weights("org/model", options_), "org/model");
  fs::current_path(cwd);
  EXPECT_TRUE(hub_.requests().empty());
  EXPECT_EQ(graft::resolve_weights("org/model", options_),
            (repo_folder() / "snapshots" / kCommit / "model.safetensors").string());
}

}  // namespace

// refs/<revision> goes through core's atomic writer: a failed write is an error naming the file and leaves
// no temporary of its own behind (the hub's former writer threw a raw filesystem error and left one).
TEST_F(HubPull, AFailedRefWriteIsAnErrorAndLeavesNoTemporary) {
  fs::create_directories(repo_folder() / "refs" / "main" / "occupied");  // rename over it must fail
  try {
    graft::hub_pull(graft::HubRepo::parse("org/model"), {"config.json"}, options_);
    ADD_FAILURE() << "a ref that cannot be written passed";
  } catch (const graft::Error& e) {
    EXPECT_TRUE(contains(e.what(), (repo_folder() / "refs" / "main").string())) << e.what();
  }
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(repo_folder() / "refs"))
    left.push_back(entry.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"main"});
}
