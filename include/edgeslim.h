/* libedgeslim: run a compiled edge-slim bundle (the output of `edge-slim compile`) from C or C++,
 * with no Python: the TVM runtime (libtvm_runtime + libtvm_ffi), libc, libm and libstdc++ only.
 *
 *   es_session *s;
 *   if (es_open("slim-x86", NULL, &s) != ES_OK) { fprintf(stderr, "%s\n", es_last_error()); ... }
 *   es_image *img;
 *   es_image_from_file(s, "frame.png", &img);          // or es_image_from_pixels(s, rgb, w, h, w*3, 3, &img)
 *   es_answer a;
 *   es_ask(s, img, "what color is the cube?", &a);      // a.answer, a.score, a.top[...]
 *   es_image_free(img); es_close(s);
 *
 * Every function returns an es_status; on failure es_last_error() is a one-line message (per thread,
 * valid until that thread's next libedgeslim call). No function aborts or throws. One session may be
 * used from many threads (calls on it are serialized); images are read-only after creation.
 * docs/c-api.md has the build, the cross-build, the error codes and the install size.
 */
#ifndef EDGESLIM_H_
#define EDGESLIM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ES_API __attribute__((visibility("default")))
#else
#define ES_API
#endif

#define ES_VERSION "0.1.0"
#define ES_TOP_K 5

typedef enum {
  ES_OK = 0,
  ES_ERR_ARGUMENT = 1,  /* NULL pointer, bad size or count, unknown task */
  ES_ERR_INPUT = 2,     /* unreadable image, empty or too long text */
  ES_ERR_BUNDLE = 3,    /* missing or malformed bundle/manifest, unsupported schema or format */
  ES_ERR_TAMPERED = 4,  /* a listed file is missing, has another size or sha256, or escapes the bundle */
  ES_ERR_TARGET = 5,    /* built for another machine (ELF machine, CPU features, CUDA) */
  ES_ERR_RUNTIME = 6,   /* the TVM runtime failed to load or run the artifact */
  ES_ERR_NOMEM = 7
} es_status;

typedef struct es_session es_session;
typedef struct es_image es_image;

typedef struct {
  int threads; /* TVM worker threads for this process (the pool is process-wide); 0: leave TVM's default */
  int verify;  /* 1 (default when opts is NULL): check every file's sha256 before dlopen; 0 skips (tests only) */
  int all_answers; /* 0 (default): es_ask answers only with words of the question's type, as Session.ask does
                      (a colour for "what color ...", a number for "how many ..."); 1: softmax over every answer */
} es_options;

typedef struct {
  const char *answer; /* the best answer (owned by the session, valid until es_close) */
  double score;       /* its softmax probability (over the answers of the question's type) */
  int n_top;          /* up to ES_TOP_K, only answers with probability > 0 */
  const char *top_answer[ES_TOP_K]; /* best first */
  double top_score[ES_TOP_K];
  double latency_ms; /* model call + postprocessing (the image is prepared beforehand) */
} es_answer;

typedef struct {
  double box[4];     /* x0, y0, x1, y1 in pixels of the original image */
  double score;      /* the pointer's confidence */
  double latency_ms;
} es_location;

ES_API const char *es_version(void);
ES_API const char *es_last_error(void);
ES_API const char *es_status_name(es_status status);

/* Open and verify a compiled bundle directory: manifest schema 1, format "tvm", every file's size and sha256,
 * the artifact's ELF machine and CPU features against this host; then load it with the TVM runtime. */
ES_API es_status es_open(const char *bundle_dir, const es_options *opts, es_session **out);
ES_API void es_close(es_session *session);
/* The manifest's name, precision and target name ("x86-64", "rpi5", ...). */
ES_API const char *es_model_name(const es_session *session);
ES_API const char *es_model_target(const es_session *session);
ES_API int es_image_size(const es_session *session); /* the model's square input side (96) */

/* Text -> token ids exactly as edge_slim/text/tokenizer.py: task is "ask", "match" or "locate";
 * ids gets max_len (16) values; *n_ids (may be NULL) is set to max_len. */
ES_API es_status es_tokenize(const es_session *session, const char *text, const char *task, int64_t *ids,
                             size_t capacity, size_t *n_ids);

/* Pixels -> a prepared image (bilinear resize to size x size as Pillow does, then (x/255 - 0.5)/0.25, NCHW).
 * channels: 1 (gray), 3 (RGB) or 4 (RGBA, composited on white); stride: bytes per row (0: width*channels). */
ES_API es_status es_image_from_pixels(const es_session *session, const uint8_t *pixels, int width, int height,
                                      size_t stride, int channels, es_image **out);
/* A PNG or JPEG file (vendored stb_image decoder). */
ES_API es_status es_image_from_file(const es_session *session, const char *path, es_image **out);
ES_API es_status es_image_from_memory(const es_session *session, const uint8_t *data, size_t size, es_image **out);
ES_API void es_image_free(es_image *image);
/* The prepared tensor (3*size*size floats, NCHW) and the decoded width and height. */
ES_API const float *es_image_tensor(const es_image *image, int *width, int *height);

ES_API es_status es_ask(es_session *session, const es_image *image, const char *question, es_answer *out);
/* scores[i] = probability that texts[i] describes the image; *best = the index of the highest. */
ES_API es_status es_match(es_session *session, const es_image *image, const char *const *texts, size_t n_texts,
                          double *scores, size_t *best, double *latency_ms);
ES_API es_status es_locate(es_session *session, const es_image *image, const char *phrase, es_location *out);

#ifdef __cplusplus
}
#endif
#endif /* EDGESLIM_H_ */
