// The C API (include/edgeslim.h): sessions over a compiled bundle run through the TVM runtime's Relax VM,
// as edge_slim/runtime/backends/tvm_backend.py does from Python: load model.so as a tvm-ffi module, call its
// vm_load_executable, vm_initialization(cpu, 0, pooled allocator), then "main"(image, tokens) per query.
// Every exported function catches everything at the boundary: errors are a status + es_last_error().
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <optional>
#include <sstream>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include "bundle.h"

namespace ffi = tvm::ffi;

struct es_image {
  std::vector<float> tensor;  // [3, size, size]
  int width = 0, height = 0;  // as decoded
  int size = 0;
};

struct es_session {
  es::Manifest bundle;
  es::Tokenizer tokenizer;
  es::Preprocess pre;
  std::vector<std::string> answers;
  std::string name, target;
  int threads = 0;
  bool all_answers = false;
  std::map<std::string, std::vector<size_t>> family_answers;  // question family -> allowed answer indices
  std::optional<ffi::Module> lib, vm;  // Module has no empty state
  ffi::Function main;
  ffi::Tensor image_in, tokens_in;  // runtime-owned, 64-byte aligned inputs reused by every call
  std::vector<std::string> output_names;
  std::mutex mu;  // one VM: calls are serialized
};

namespace {

thread_local std::string last_error;
std::mutex load_mu;

struct AlignedAlloc {  // compiled CPU kernels assume 64-byte aligned buffers (tvm-facts.md)
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

es_status fail(es_status s, const std::string& msg) {
  last_error = msg;
  return s;
}

template <typename F>
es_status guard(F&& f) {
  try {
    last_error.clear();
    f();
    return ES_OK;
  } catch (const es::Failure& e) {
    return fail(e.status, e.what());
  } catch (const std::bad_alloc&) {
    return fail(ES_ERR_NOMEM, "out of memory");
  } catch (const std::exception& e) {  // tvm::ffi::Error is a std::exception
    std::string m = e.what();
    return fail(ES_ERR_RUNTIME, "TVM runtime: " + m.substr(0, m.find('\n')));
  } catch (...) {
    return fail(ES_ERR_RUNTIME, "unknown error in the TVM runtime");
  }
}

void load_runtime() {
  // model.so resolves TVMBackend* symbols from libtvm_runtime; it is a DT_NEEDED of libedgeslim, but a host
  // that dlopen'ed libedgeslim RTLD_LOCAL would hide it, so promote it to the global scope (no-op otherwise).
  std::lock_guard<std::mutex> lock(load_mu);
  if (!dlopen("libtvm_runtime.so", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD))
    throw es::Failure(ES_ERR_RUNTIME, "libtvm_runtime.so is not loaded (libedgeslim links it; check the library path)");
}

void set_threads(int n) {
  // TVM's pool is per calling thread; configuring it pins the caller to one core, so restore its CPU mask
  // (tvm_backend.py set_threads does the same).
  thread_local int current = 0;
  if (n <= 0 || current == n) return;
  cpu_set_t mask;
  bool have = sched_getaffinity(0, sizeof(mask), &mask) == 0;
  static ffi::Function config = ffi::Function::GetGlobalRequired("runtime.config_threadpool");
  config(1, n);
  if (have) sched_setaffinity(0, sizeof(mask), &mask);
  current = n;
}

ffi::Tensor alloc(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
}

const es::Json& key(const es::Json& obj, const char* k, es::Json::Kind kind, const std::string& what) {
  const es::Json* v = obj.get(k);
  if (!v || v->kind != kind) throw es::Failure(ES_ERR_BUNDLE, what + ": '" + k + "' is missing or has the wrong type");
  return *v;
}

std::vector<int64_t> shape_of(const es::Json& spec, const std::string& where) {
  std::vector<int64_t> s;
  for (const auto& d : key(spec, "shape", es::Json::Array, where).items) s.push_back(int64_t(d.num));
  return s;
}

// edge_slim/scenes/families.py: a question's family from its first (tokenizer) words, and each family's answers.
const std::vector<std::pair<std::vector<std::string>, std::string>> OPENINGS = {
    {{"what", "color"}, "color"}, {{"what", "shape"}, "shape"}, {{"what", "size"}, "size"},
    {{"how", "many"}, "count"},   {{"is", "there"}, "exists"},  {{"is", "the"}, "spatial"}};
const std::map<std::string, std::vector<std::string>> FAMILY_ANSWERS = {
    {"color", {"red", "green", "blue", "yellow", "purple", "cyan", "brown", "gray"}},
    {"shape", {"cube", "sphere", "cylinder", "cone", "torus"}},
    {"size", {"small", "large"}},
    {"count", {"0", "1", "2", "3", "4", "5", "6"}},  // 0..MAX_OBJECTS
    {"exists", {"yes", "no"}},
    {"spatial", {"yes", "no"}}};

const std::vector<size_t>* allowed_answers(const es_session* s, const std::string& question) {
  if (s->all_answers) return nullptr;
  std::vector<std::string> words = s->tokenizer.words(question);
  for (const auto& [opening, family] : OPENINGS) {
    if (words.size() >= opening.size() && std::equal(opening.begin(), opening.end(), words.begin())) {
      auto it = s->family_answers.find(family);
      return it == s->family_answers.end() || it->second.empty() ? nullptr : &it->second;
    }
  }
  return nullptr;
}

void setup(es_session* s) {
  const es::Json& m = s->bundle.json;
  const std::string& where = s->bundle.dir;
  s->name = key(m, "name", es::Json::String, where).str;
  if (const es::Json* t = m.get("target"); t && t->is_object())
    if (const es::Json* n = t->get("name"); n && n->is_string()) s->target = n->str;
  const es::Json& tok = key(m, "tokenizer", es::Json::Object, where + " tokenizer");
  std::vector<std::string> vocab;
  for (const auto& w : key(tok, "vocab", es::Json::Array, where + " tokenizer").items) vocab.push_back(w.str);
  std::map<std::string, std::string> syn;
  if (const es::Json* sy = tok.get("synonyms"); sy && sy->is_object())
    for (const auto& kv : sy->fields) syn[kv.first] = kv.second.str;
  s->tokenizer = es::Tokenizer(vocab, size_t(key(tok, "max_len", es::Json::Number, where).num), syn);
  for (const auto& a : key(m, "answers", es::Json::Array, where).items) s->answers.push_back(a.str);
  if (s->answers.empty()) throw es::Failure(ES_ERR_BUNDLE, where + " is not a SlimPajama bundle (no answers)");
  for (const auto& [family, words] : FAMILY_ANSWERS)
    for (size_t i = 0; i < s->answers.size(); i++)
      if (std::find(words.begin(), words.end(), s->answers[i]) != words.end()) s->family_answers[family].push_back(i);
  const es::Json& pre = key(m, "preprocess", es::Json::Object, where);
  s->pre.size = int(key(pre, "size", es::Json::Number, where + " preprocess").num);
  if (const es::Json* v = pre.get("mean"); v && v->is_number()) s->pre.mean = float(v->num);
  if (const es::Json* v = pre.get("std"); v && v->is_number()) s->pre.std = float(v->num);
  if (const es::Json* v = pre.get("resize"); v && v->is_string() && v->str != "bilinear")
    throw es::Failure(ES_ERR_BUNDLE, where + ": preprocess resize '" + v->str + "' is not supported (bilinear)");
  // the SlimPajama graph contract (docs/bundle.md): image float32 [1,3,S,S], tokens int64 [1,max_len]
  const auto& ins = key(m, "inputs", es::Json::Array, where).items;
  if (ins.size() != 2 || key(ins[0], "name", es::Json::String, where).str != "image" ||
      key(ins[1], "name", es::Json::String, where).str != "tokens" ||
      shape_of(ins[0], where) != std::vector<int64_t>{1, 3, s->pre.size, s->pre.size} ||
      shape_of(ins[1], where) != std::vector<int64_t>{1, int64_t(s->tokenizer.max_len())})
    throw es::Failure(ES_ERR_BUNDLE, where + ": inputs are not SlimPajama's image [1,3,S,S] and tokens [1,L]");
  for (const auto& o : key(m, "outputs", es::Json::Array, where).items)
    s->output_names.push_back(key(o, "name", es::Json::String, where).str);
  for (const char* need : {"answer_logits", "match_logit", "box", "box_score"})
    if (std::find(s->output_names.begin(), s->output_names.end(), need) == s->output_names.end())
      throw es::Failure(ES_ERR_BUNDLE, where + ": the model has no output " + need);
}

void load_model(es_session* s) {
  load_runtime();
  try {
    s->lib = ffi::Module::LoadFromFile(s->bundle.model_path);
    ffi::Optional<ffi::Function> load = (*s->lib)->GetFunction("vm_load_executable");
    if (!load.has_value()) throw es::Failure(ES_ERR_RUNTIME, s->bundle.model_path + " is not a Relax VM executable");
    s->vm = (*load)().cast<ffi::Module>();
    ffi::Optional<ffi::Function> init = (*s->vm)->GetFunction("vm_initialization");
    ffi::Optional<ffi::Function> main = (*s->vm)->GetFunction("main");
    if (!init.has_value() || !main.has_value())
      throw es::Failure(ES_ERR_RUNTIME, s->bundle.model_path + ": the VM has no vm_initialization/main");
    (*init)(int(kDLCPU), 0, 2);  // device type, id, pooled allocator (as tvm_backend.py)
    s->main = *main;
  } catch (const es::Failure&) {
    throw;
  } catch (const std::exception& e) {
    std::string m = e.what();
    throw es::Failure(ES_ERR_RUNTIME, s->bundle.model_path + ": the TVM runtime cannot load it (" +
                                          m.substr(0, m.find('\n')) + ")");
  }
  int S = s->pre.size;
  s->image_in = alloc({1, 3, S, S}, DLDataType{kDLFloat, 32, 1});
  s->tokens_in = alloc({1, int64_t(s->tokenizer.max_len())}, DLDataType{kDLInt, 64, 1});
}

// One model call; returns the named outputs as float vectors. Caller holds s->mu.
std::map<std::string, std::vector<float>> run(es_session* s, const es_image* img, const std::vector<int64_t>& ids) {
  if (img->size != s->pre.size)
    throw es::Failure(ES_ERR_ARGUMENT, "the image was prepared for another model (size " + std::to_string(img->size) + ")");
  set_threads(s->threads);
  std::memcpy(s->image_in.data_ptr(), img->tensor.data(), img->tensor.size() * sizeof(float));
  std::memcpy(s->tokens_in.data_ptr(), ids.data(), ids.size() * sizeof(int64_t));
  ffi::Any res = s->main(s->image_in, s->tokens_in);
  std::vector<ffi::Tensor> outs;
  if (auto t = res.as<ffi::Tensor>()) {
    outs.push_back(*t);
  } else {
    for (const ffi::Any& a : res.cast<ffi::Array<ffi::Any>>()) outs.push_back(a.cast<ffi::Tensor>());
  }
  std::map<std::string, std::vector<float>> named;
  for (size_t i = 0; i < outs.size() && i < s->output_names.size(); i++) {
    const DLTensor* t = outs[i].GetDLTensorPtr();
    if (t->dtype.code != kDLFloat || t->dtype.bits != 32 || t->device.device_type != kDLCPU)
      throw es::Failure(ES_ERR_RUNTIME, "output " + s->output_names[i] + " is not a float32 CPU tensor");
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    const float* p = reinterpret_cast<const float*>(static_cast<const char*>(t->data) + t->byte_offset);
    named[s->output_names[i]] = std::vector<float>(p, p + n);
  }
  return named;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

es_status make_image(const es_session* s, std::vector<uint8_t> rgb, int w, int h, es_image** out) {
  return guard([&] {
    auto img = std::make_unique<es_image>();
    img->tensor = es::prepare_rgb8(rgb, w, h, s->pre);
    img->width = w;
    img->height = h;
    img->size = s->pre.size;
    *out = img.release();
  });
}

}  // namespace

extern "C" {

const char* es_version(void) { return ES_VERSION; }
const char* es_last_error(void) { return last_error.c_str(); }

const char* es_status_name(es_status st) {
  switch (st) {
    case ES_OK: return "ok";
    case ES_ERR_ARGUMENT: return "bad argument";
    case ES_ERR_INPUT: return "bad input";
    case ES_ERR_BUNDLE: return "bad bundle";
    case ES_ERR_TAMPERED: return "tampered bundle";
    case ES_ERR_TARGET: return "wrong target";
    case ES_ERR_RUNTIME: return "runtime error";
    case ES_ERR_NOMEM: return "out of memory";
  }
  return "unknown status";
}

es_status es_open(const char* bundle_dir, const es_options* opts, es_session** out) {
  if (!out) return fail(ES_ERR_ARGUMENT, "es_open: out is NULL");
  *out = nullptr;
  if (!bundle_dir || !*bundle_dir) return fail(ES_ERR_ARGUMENT, "es_open: no bundle directory given");
  return guard([&] {
    auto s = std::make_unique<es_session>();
    s->bundle = es::open_manifest(bundle_dir, opts ? opts->verify != 0 : true);
    es::check_target(s->bundle);
    setup(s.get());
    s->threads = opts ? opts->threads : 0;
    s->all_answers = opts && opts->all_answers;
    load_model(s.get());
    *out = s.release();
  });
}

void es_close(es_session* s) {
  try {
    delete s;
  } catch (...) {
  }
}

const char* es_model_name(const es_session* s) { return s ? s->name.c_str() : ""; }
const char* es_model_target(const es_session* s) { return s ? s->target.c_str() : ""; }
int es_image_size(const es_session* s) { return s ? s->pre.size : 0; }

es_status es_tokenize(const es_session* s, const char* text, const char* task, int64_t* ids, size_t capacity,
                      size_t* n_ids) {
  if (!s || !text || !task || !ids) return fail(ES_ERR_ARGUMENT, "es_tokenize: NULL argument");
  return guard([&] {
    std::vector<int64_t> v = s->tokenizer.encode(text, task);
    if (capacity < v.size())
      throw es::Failure(ES_ERR_ARGUMENT, "es_tokenize: capacity " + std::to_string(capacity) + " < max_len " +
                                             std::to_string(v.size()));
    std::copy(v.begin(), v.end(), ids);
    if (n_ids) *n_ids = v.size();
  });
}

es_status es_image_from_pixels(const es_session* s, const uint8_t* px, int w, int h, size_t stride, int channels,
                               es_image** out) {
  if (!s || !px || !out) return fail(ES_ERR_ARGUMENT, "es_image_from_pixels: NULL argument");
  *out = nullptr;
  if (w < 1 || h < 1) return fail(ES_ERR_INPUT, "image has no pixels");
  if (channels != 1 && channels != 3 && channels != 4)
    return fail(ES_ERR_ARGUMENT, "channels must be 1 (gray), 3 (RGB) or 4 (RGBA)");
  if ((long long)w * h > 80000000LL) return fail(ES_ERR_INPUT, "image is too large (limit 80000000 pixels)");
  if (stride == 0) stride = size_t(w) * channels;
  if (stride < size_t(w) * channels) return fail(ES_ERR_ARGUMENT, "stride is smaller than width * channels");
  std::vector<uint8_t> rgb;
  es_status st = guard([&] {
    if (channels == 3) {
      rgb.resize(size_t(w) * h * 3);
      for (int y = 0; y < h; y++) std::memcpy(&rgb[size_t(y) * w * 3], px + size_t(y) * stride, size_t(w) * 3);
    } else {
      rgb = es::to_rgb8(px, w, h, stride, channels);
    }
  });
  if (st != ES_OK) return st;
  return make_image(s, std::move(rgb), w, h, out);
}

es_status es_image_from_memory(const es_session* s, const uint8_t* data, size_t size, es_image** out) {
  if (!s || !data || !out) return fail(ES_ERR_ARGUMENT, "es_image_from_memory: NULL argument");
  *out = nullptr;
  int w = 0, h = 0;
  std::vector<uint8_t> rgb;
  es_status st = guard([&] { rgb = es::decode_image(data, size, &w, &h); });
  if (st != ES_OK) return st;
  return make_image(s, std::move(rgb), w, h, out);
}

es_status es_image_from_file(const es_session* s, const char* path, es_image** out) {
  if (!s || !path || !out) return fail(ES_ERR_ARGUMENT, "es_image_from_file: NULL argument");
  *out = nullptr;
  std::string bytes;
  es_status st = guard([&] {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw es::Failure(ES_ERR_INPUT, std::string("image file not found: ") + path);
    std::ostringstream ss;
    ss << f.rdbuf();
    bytes = ss.str();
  });
  if (st != ES_OK) return st;
  st = es_image_from_memory(s, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), out);
  if (st != ES_OK) last_error = std::string(path) + ": " + last_error;
  return st;
}

void es_image_free(es_image* img) { delete img; }

const float* es_image_tensor(const es_image* img, int* w, int* h) {
  if (!img) return nullptr;
  if (w) *w = img->width;
  if (h) *h = img->height;
  return img->tensor.data();
}

es_status es_ask(es_session* s, const es_image* img, const char* question, es_answer* out) {
  if (!s || !img || !question || !out) return fail(ES_ERR_ARGUMENT, "es_ask: NULL argument");
  return guard([&] {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int64_t> ids = s->tokenizer.encode(question, "ask");
    std::vector<float> logits;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      logits = run(s, img, ids)["answer_logits"];
    }
    if (logits.size() != s->answers.size())
      throw es::Failure(ES_ERR_BUNDLE, "answer_logits has " + std::to_string(logits.size()) + " values for " +
                                           std::to_string(s->answers.size()) + " answers");
    // session.py: softmax in float64 over the answers of the question's family (the others get 0), best first
    const std::vector<size_t>* allowed = allowed_answers(s, question);
    std::vector<size_t> idx;
    if (allowed) idx = *allowed;
    else for (size_t i = 0; i < logits.size(); i++) idx.push_back(i);
    double mx = -INFINITY, sum = 0;
    for (size_t i : idx) mx = std::max(mx, double(logits[i]));
    std::vector<double> p(logits.size(), 0.0);
    for (size_t i : idx) sum += (p[i] = std::exp(double(logits[i]) - mx));
    for (size_t i : idx) p[i] /= sum;
    std::vector<size_t> order(p.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
    size_t positive = size_t(std::count_if(p.begin(), p.end(), [](double v) { return v > 0; }));
    out->answer = s->answers[order[0]].c_str();
    out->score = p[order[0]];
    out->n_top = int(std::max<size_t>(1, std::min<size_t>(ES_TOP_K, positive)));
    for (int i = 0; i < out->n_top; i++) {
      out->top_answer[i] = s->answers[order[i]].c_str();
      out->top_score[i] = p[order[i]];
    }
    out->latency_ms = ms_since(t0);
  });
}

es_status es_match(es_session* s, const es_image* img, const char* const* texts, size_t n, double* scores,
                   size_t* best, double* latency_ms) {
  if (!s || !img || !texts || !scores) return fail(ES_ERR_ARGUMENT, "es_match: NULL argument");
  if (n == 0) return fail(ES_ERR_ARGUMENT, "match needs a list of one or more texts");
  return guard([&] {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::vector<int64_t>> toks;
    for (size_t i = 0; i < n; i++) {
      if (!texts[i]) throw es::Failure(ES_ERR_ARGUMENT, "es_match: text " + std::to_string(i) + " is NULL");
      toks.push_back(s->tokenizer.encode(texts[i], "match"));
    }
    std::vector<double> logits;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      for (const auto& t : toks) logits.push_back(double(run(s, img, t)["match_logit"].at(0)));
    }
    size_t b = 0;
    for (size_t i = 0; i < n; i++) {
      scores[i] = 1.0 / (1.0 + std::exp(-logits[i]));
      if (logits[i] > logits[b]) b = i;
    }
    if (best) *best = b;
    if (latency_ms) *latency_ms = ms_since(t0);
  });
}

es_status es_locate(es_session* s, const es_image* img, const char* phrase, es_location* out) {
  if (!s || !img || !phrase || !out) return fail(ES_ERR_ARGUMENT, "es_locate: NULL argument");
  return guard([&] {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<int64_t> ids = s->tokenizer.encode(phrase, "locate");
    std::map<std::string, std::vector<float>> o;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      o = run(s, img, ids);
    }
    const std::vector<float>& box = o["box"];
    if (box.size() != 4 || o["box_score"].empty()) throw es::Failure(ES_ERR_BUNDLE, "box/box_score have the wrong size");
    const double wh[4] = {double(img->width), double(img->height), double(img->width), double(img->height)};
    for (int i = 0; i < 4; i++) out->box[i] = std::min(1.0, std::max(0.0, double(box[i]))) * wh[i];
    out->score = double(o["box_score"][0]);
    out->latency_ms = ms_since(t0);
  });
}

}  // extern "C"
