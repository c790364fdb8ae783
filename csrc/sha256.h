// SHA-256 (FIPS 180-4), written for libedgeslim; public domain. Used to verify bundle files before dlopen.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace es {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  std::string hex();  // finishes the hash; lower-case hex, as Python's hashlib.hexdigest()

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t len_ = 0;    // bytes in buf_
  uint64_t total_ = 0;
};

// sha256 of a file; false (and *err set) when it cannot be read.
bool sha256_file(const std::string& path, std::string* hex, uint64_t* bytes, std::string* err);

}  // namespace es
