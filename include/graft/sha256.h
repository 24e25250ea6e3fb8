// SHA-256 and SHA-1 (FIPS 180-4), written here so that verifying downloads needs no crypto library. Used
// by the hub downloader: a Hugging Face LFS file's ETag is the SHA-256 of its content, a file kept in git
// has its git blob id as ETag, the SHA-1 of "blob <size>\0<content>".
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace graft {
namespace detail {

// The framing both hashes share: 64-byte blocks fed to Hash::compress, then the padding (0x80, zeros
// up to 56 mod 64, the message length in bits, big-endian) and the state words read out big-endian.
template <class Hash, size_t kWords>
class BlockHash {
 public:
  void update(const void* data, size_t size);
  void update(const std::string& data) { update(data.data(), data.size()); }
  // Ends the computation: the object must not be updated afterwards.
  std::array<uint8_t, 4 * kWords> digest();
  std::string hex_digest();  // lowercase hex digits

 protected:
  explicit BlockHash(const std::array<uint32_t, kWords>& initial) : state_(initial) {}
  std::array<uint32_t, kWords> state_;

 private:
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

}  // namespace detail

class Sha256 : public detail::BlockHash<Sha256, 8> {
 public:
  Sha256();
  void compress(const uint8_t* block);
};

class Sha1 : public detail::BlockHash<Sha1, 5> {
 public:
  Sha1();
  void compress(const uint8_t* block);
};

std::string sha256_hex(const std::string& data);
// The SHA-256 of a file's bytes, read in chunks; throws graft::Error when the file cannot be read.
std::string sha256_file(const std::string& path);
// Git's object id of a file's bytes as a blob: SHA-1 of "blob <size>\0" + content.
std::string git_blob_sha1(const std::string& content);
std::string git_blob_sha1_file(const std::string& path);

}  // namespace graft
