// Image preprocessing, the same function as edge_slim/vision/preprocess.py's prepare():
// decode -> RGB (alpha composited on white, as Pillow's alpha_composite) -> Pillow's bilinear resize ->
// (x/255 - mean)/std in float32, NCHW. The resize and the composite reproduce Pillow's integer arithmetic
// (libImaging/Resample.c, AlphaComposite.c), so the tensors are identical, not merely close.
#include <cmath>
#include <cstring>

#include "internal.h"

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_MAX_DIMENSIONS (1 << 20)
#define STBI_ASSERT(x) ((void)0)
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include "third_party/stb_image.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace es {
namespace {

const int PRECISION_BITS = 32 - 8 - 2;  // Resample.c
const long long MAX_PIXELS = 80000000;  // preprocess.py's MAX_PIXELS (decompression bombs)

double bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;   // [out*2]: first input index, count
  std::vector<int32_t> k;    // [out*ksize] fixed-point weights
};

// Resample.c precompute_coeffs + normalize_coeffs_8bpc with the bilinear filter (support 1), box [0, in_size].
Coeffs coeffs(int in_size, int out_size) {
  const float in0 = 0.0f, in1 = float(in_size);
  double scale = double(in1 - in0) / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; x++) {
      w[x] = bilinear((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; x++) {
      double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[size_t(xx) * c.ksize + x] = v < 0 ? int(-0.5 + v * (1 << PRECISION_BITS)) : int(0.5 + v * (1 << PRECISION_BITS));
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  if (v >= (1 << PRECISION_BITS << 8)) return 255;
  if (v <= 0) return 0;
  return uint8_t(v >> PRECISION_BITS);
}

inline uint32_t div255_shift(uint32_t a) { return ((a >> 8) + a) >> 8; }  // AlphaComposite.c SHIFTFORDIV255

}  // namespace

std::vector<uint8_t> resize_rgb8(const uint8_t* rgb, int w, int h, int out_w, int out_h) {
  // ImagingResampleInner: horizontal pass over the rows the vertical pass reads, then the vertical pass.
  Coeffs ch = coeffs(w, out_w), cv = coeffs(h, out_h);
  bool need_h = out_w != w, need_v = out_h != h;
  const uint8_t* src = rgb;
  int src_w = w;
  std::vector<uint8_t> tmp;
  if (need_h) {
    int first = cv.bounds[0], last = cv.bounds[out_h * 2 - 2] + cv.bounds[out_h * 2 - 1];
    for (int i = 0; i < out_h; i++) cv.bounds[i * 2] -= first;
    int rows = last - first;
    tmp.resize(size_t(rows) * out_w * 3);
    for (int yy = 0; yy < rows; yy++) {
      const uint8_t* row = rgb + size_t(yy + first) * w * 3;
      for (int xx = 0; xx < out_w; xx++) {
        int xmin = ch.bounds[xx * 2], xmax = ch.bounds[xx * 2 + 1];
        const int32_t* k = &ch.k[size_t(xx) * ch.ksize];
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xmax; x++) {
          const uint8_t* p = row + size_t(x + xmin) * 3;
          s0 += p[0] * k[x]; s1 += p[1] * k[x]; s2 += p[2] * k[x];
        }
        uint8_t* o = &tmp[(size_t(yy) * out_w + xx) * 3];
        o[0] = clip8(s0); o[1] = clip8(s1); o[2] = clip8(s2);
      }
    }
    src = tmp.data();
    src_w = out_w;
  }
  if (!need_v) return need_h ? tmp : std::vector<uint8_t>(rgb, rgb + size_t(w) * h * 3);
  std::vector<uint8_t> out(size_t(out_h) * src_w * 3);
  for (int yy = 0; yy < out_h; yy++) {
    int ymin = cv.bounds[yy * 2], ymax = cv.bounds[yy * 2 + 1];
    const int32_t* k = &cv.k[size_t(yy) * cv.ksize];
    for (int xx = 0; xx < src_w; xx++) {
      int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
      for (int y = 0; y < ymax; y++) {
        const uint8_t* p = src + (size_t(y + ymin) * src_w + xx) * 3;
        s0 += p[0] * k[y]; s1 += p[1] * k[y]; s2 += p[2] * k[y];
      }
      uint8_t* o = &out[(size_t(yy) * src_w + xx) * 3];
      o[0] = clip8(s0); o[1] = clip8(s1); o[2] = clip8(s2);
    }
  }
  return out;
}

std::vector<uint8_t> to_rgb8(const uint8_t* px, int w, int h, size_t stride, int channels) {
  std::vector<uint8_t> out(size_t(w) * h * 3);
  for (int y = 0; y < h; y++) {
    const uint8_t* row = px + size_t(y) * stride;
    uint8_t* o = &out[size_t(y) * w * 3];
    for (int x = 0; x < w; x++, o += 3) {
      const uint8_t* p = row + size_t(x) * channels;
      uint32_t r, g, b, a = 255;
      if (channels <= 2) { r = g = b = p[0]; if (channels == 2) a = p[1]; }
      else { r = p[0]; g = p[1]; b = p[2]; if (channels == 4) a = p[3]; }
      if (channels == 2 || channels == 4) {
        // alpha_composite(dst = opaque white, src = pixel), AlphaComposite.c's integer path
        if (a == 0) { r = g = b = 255; }
        else {
          const uint32_t P = 7, dst = 255;
          uint32_t blend = 255 * (255 - a), outa255 = a * 255 + blend;
          uint32_t coef1 = a * 255 * 255 * (1u << P) / outa255, coef2 = 255 * (1u << P) - coef1;
          r = div255_shift(r * coef1 + dst * coef2 + (0x80u << P)) >> P;
          g = div255_shift(g * coef1 + dst * coef2 + (0x80u << P)) >> P;
          b = div255_shift(b * coef1 + dst * coef2 + (0x80u << P)) >> P;
        }
      }
      o[0] = uint8_t(r); o[1] = uint8_t(g); o[2] = uint8_t(b);
    }
  }
  return out;
}

std::vector<float> prepare_rgb8(const std::vector<uint8_t>& rgb, int w, int h, const Preprocess& p) {
  const int s = p.size;
  std::vector<uint8_t> resized;
  const uint8_t* px = rgb.data();
  if (w != s || h != s) {
    resized = resize_rgb8(rgb.data(), w, h, s, s);
    px = resized.data();
  }
  // numpy: float32(u8) * float32(1/255), then (x - mean) / std, all in float32 (built with -ffp-contract=off)
  const float inv255 = float(1.0 / 255.0);
  std::vector<float> out(size_t(3) * s * s);
  for (int i = 0; i < s * s; i++)
    for (int c = 0; c < 3; c++) {
      float x = float(px[size_t(i) * 3 + c]) * inv255;
      out[size_t(c) * s * s + i] = (x - p.mean) / p.std;
    }
  return out;
}

std::vector<uint8_t> decode_image(const uint8_t* data, size_t size, int* w, int* h) {
  if (size == 0) throw Failure(ES_ERR_INPUT, "image bytes are empty");
  if (size > size_t(INT32_MAX)) throw Failure(ES_ERR_INPUT, "image file is too large");
  int iw = 0, ih = 0, n = 0;
  if (!stbi_info_from_memory(data, int(size), &iw, &ih, &n))
    throw Failure(ES_ERR_INPUT, std::string("not a readable PNG or JPEG image (") + stbi_failure_reason() + ")");
  if (iw < 1 || ih < 1) throw Failure(ES_ERR_INPUT, "image has no pixels");
  if ((long long)iw * ih > MAX_PIXELS)
    throw Failure(ES_ERR_INPUT, std::to_string(iw) + "x" + std::to_string(ih) + " is too large (limit " +
                                    std::to_string(MAX_PIXELS) + " pixels)");
  unsigned char* px = stbi_load_from_memory(data, int(size), &iw, &ih, &n, 0);
  if (!px) throw Failure(ES_ERR_INPUT, std::string("not a readable PNG or JPEG image (") + stbi_failure_reason() + ")");
  std::vector<uint8_t> rgb;
  try {
    rgb = n == 3 ? std::vector<uint8_t>(px, px + size_t(iw) * ih * 3) : to_rgb8(px, iw, ih, size_t(iw) * n, n);
  } catch (...) {
    stbi_image_free(px);
    throw;
  }
  stbi_image_free(px);
  *w = iw;
  *h = ih;
  return rgb;
}

}  // namespace es
