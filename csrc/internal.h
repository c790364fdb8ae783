// Internal pieces of libedgeslim shared by its source files (not installed).
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "edgeslim.h"

namespace es {

// Thrown inside the library, turned into a status + es_last_error() at the C boundary (api.cpp).
struct Failure : std::runtime_error {
  es_status status;
  Failure(es_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

// edge_slim/text/tokenizer.py, byte for byte on UTF-8 input.
class Tokenizer {
 public:
  Tokenizer() = default;
  Tokenizer(std::vector<std::string> vocab, size_t max_len, std::map<std::string, std::string> synonyms);
  std::vector<std::string> words(const std::string& text) const;  // throws Failure(ES_ERR_INPUT)
  std::vector<int64_t> encode(const std::string& text, const std::string& task) const;
  size_t max_len() const { return max_len_; }

 private:
  std::vector<std::string> vocab_;
  std::map<std::string, int64_t> ids_;
  std::map<std::string, std::string> synonyms_;
  size_t max_len_ = 0;
  int64_t pad_ = 0, unk_ = 1;
};

struct Preprocess {
  int size = 96;
  float mean = 0.5f, std = 0.25f;
};

// Pillow's Image.resize(..., BILINEAR) on 8-bit RGB (two passes, 22-bit fixed-point coefficients).
std::vector<uint8_t> resize_rgb8(const uint8_t* rgb, int w, int h, int out_w, int out_h);
// Pillow's Image.alpha_composite(white, rgba).convert("RGB"), for RGBA or gray+alpha pixels.
std::vector<uint8_t> to_rgb8(const uint8_t* px, int w, int h, size_t stride, int channels);
// RGB8 [h, w, 3] -> float32 [3, size, size]: resize when needed, then (x/255 - mean)/std.
std::vector<float> prepare_rgb8(const std::vector<uint8_t>& rgb, int w, int h, const Preprocess& p);
// PNG/JPEG bytes -> RGB8 as edge_slim/vision/preprocess.py's load_image (see docs/c-api.md for the limits).
std::vector<uint8_t> decode_image(const uint8_t* data, size_t size, int* w, int* h);

}  // namespace es
