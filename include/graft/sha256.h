// SHA-256 (FIPS 180-4), written here so that verifying downloads needs no crypto library. Used by the
// hub downloader: a Hugging Face LFS file's ETag is the SHA-256 of its content.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace graft {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& data) { update(data.data(), data.size()); }
  // Ends the computation: the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  std::string hex_digest();  // 64 lowercase hex digits

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

std::string sha256_hex(const std::string& data);
// The SHA-256 of a file's bytes, read in chunks; throws graft::Error when the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace graft
