// Opening a compiled bundle: the manifest (docs/bundle.md), every file's size and sha256 before anything is
// dlopen'ed, and the artifact's ELF machine and CPU features against this host -- the checks
// edge_slim/runtime/bundle.py and backends/tvm_backend.py make, with the same messages where they apply.
#include "bundle.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "sha256.h"

namespace es {
namespace {

const char* REQUIRED[] = {"schema", "name", "format", "precision", "model_file", "config", "inputs", "outputs",
                          "tokenizer", "answers", "preprocess", "files"};

#if defined(__x86_64__)
const int HOST_ELF = 62;
const char* HOST_NAME = "x86-64";
#elif defined(__aarch64__)
const int HOST_ELF = 183;
const char* HOST_NAME = "aarch64";
#else
const int HOST_ELF = 0;
const char* HOST_NAME = "this architecture";
#endif

std::string elf_name(int m) {
  switch (m) {
    case 62: return "x86-64";
    case 183: return "aarch64";
    case 40: return "arm";
    case 243: return "riscv";
    default: return "ELF machine " + std::to_string(m);
  }
}

bool read_file(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return bool(f) || f.eof();
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

const Json& need(const Json& m, const char* key, Json::Kind kind, const std::string& where) {
  const Json* v = m.get(key);
  if (!v || v->kind != kind) throw Failure(ES_ERR_BUNDLE, where + ": manifest key '" + key + "' is missing or has the wrong type");
  return *v;
}

std::set<std::string> host_cpu_flags() {
  std::set<std::string> out;
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    for (auto& c : key) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (key == "flags" || key == "features") {
      std::istringstream ss(line.substr(colon + 1));
      std::string w;
      while (ss >> w) out.insert(w);
      break;
    }
  }
  return out;
}

// One file a manifest lists, against its entry's sha256 (and byte count, where given): the check every bundle file
// and every variant's manifest goes through before anything is read from it.
void check_listed_file(const std::string& dir, const std::string& name, const std::string& path, const Json* entry,
                       const char* remedy) {
  const Json* want_sha = entry ? entry->get("sha256") : nullptr;
  const Json* want_bytes = entry ? entry->get("bytes") : nullptr;
  if (!want_sha || !want_sha->is_string())
    throw Failure(ES_ERR_TAMPERED, dir + ": " + name + " has no checksum in the manifest");
  std::string hex, err;
  uint64_t bytes = 0;
  if (!sha256_file(path, &hex, &bytes, &err))
    throw Failure(ES_ERR_TAMPERED, dir + ": " + name + " cannot be read (" + err + ")");
  bool size_ok = !want_bytes || (want_bytes->is_number() && uint64_t(want_bytes->num) == bytes);
  if (!size_ok || want_sha->str != hex)
    throw Failure(ES_ERR_TAMPERED, dir + ": checksum mismatch for " + name + "; the file was modified or damaged - " +
                                   remedy);
}

// A variant set (format "variants", `edge-slim compile -t x86-64-multi`): the sub-directory of the variant to
// open, as edge_slim/runtime/bundle.py picks it -- EDGE_SLIM_VARIANT by target name, else the first (they are
// listed best first) whose cpu_flags this host has, else the last (the baseline, whose own check then names
// what is missing) -- after checking that variant's manifest against the set's checksum.
std::string variant_dir(const Manifest& b, bool verify) {
  const Json* schema = b.json.get("schema");
  const Json* list = b.json.get("variants");
  auto bad = [&]() {
    return Failure(ES_ERR_BUNDLE, b.dir + "/manifest.json: a variant set needs schema 1 and a list of variants "
                                  "(dir, target, cpu_flags); the artifact is damaged or from another tool");
  };
  if (!schema || !schema->is_number() || schema->num != 1 || !list || !list->is_array() || list->items.empty())
    throw bad();
  for (const auto& v : list->items) {
    const Json* d = v.get("dir");
    const Json* t = v.get("target");
    if (!d || !d->is_string() || !t || !t->is_string() || d->str.empty() || d->str == "." || d->str == ".." ||
        d->str.find('/') != std::string::npos)
      throw bad();
  }
  const char* want = std::getenv("EDGE_SLIM_VARIANT");
  const Json* pick = nullptr;
  if (want && *want) {
    std::string names;
    for (const auto& v : list->items) {
      if (v.get("target")->str == want) pick = &v;
      names += (names.empty() ? "" : ", ") + v.get("target")->str;
    }
    if (!pick)
      throw Failure(ES_ERR_BUNDLE, std::string("EDGE_SLIM_VARIANT=") + want + " names no variant of this artifact; "
                                   "it holds: " + names);
  } else {
    std::set<std::string> have = host_cpu_flags();
    for (const auto& v : list->items) {
      const Json* flags = v.get("cpu_flags");
      bool ok = !have.empty();
      if (ok && flags && flags->is_array())
        for (const auto& f : flags->items) ok = ok && f.is_string() && have.count(f.str);
      if (ok) { pick = &v; break; }
    }
    if (!pick) pick = &list->items.back();
  }
  std::string dir = pick->get("dir")->str, name = dir + "/manifest.json";
  if (verify) {
    const Json* files = b.json.get("files");
    check_listed_file(b.dir, name, b.dir + "/" + name, files && files->is_object() ? files->get(name) : nullptr,
                      "restore or re-compile the artifact");
  }
  return dir;
}

}  // namespace

int elf_machine(const std::string& path) {
  unsigned char head[20] = {0};
  FILE* f = std::fopen(path.c_str(), "rb");
  size_t n = f ? std::fread(head, 1, sizeof(head), f) : 0;
  if (f) std::fclose(f);
  if (n < 20 || head[0] != 0x7f || head[1] != 'E' || head[2] != 'L' || head[3] != 'F')
    throw Failure(ES_ERR_TARGET, path + " is not an ELF shared library");
  return head[5] == 1 ? head[18] | head[19] << 8 : head[19] | head[18] << 8;
}

Manifest open_manifest(const std::string& dir, bool verify) {
  Manifest b;
  b.dir = dir;
  while (b.dir.size() > 1 && b.dir.back() == '/') b.dir.pop_back();
  std::string mf = b.dir + "/manifest.json", text, err;
  if (real(b.dir).empty()) throw Failure(ES_ERR_BUNDLE, "model not found: " + dir);
  if (!read_file(mf, &text)) throw Failure(ES_ERR_BUNDLE, b.dir + " is not a model bundle: manifest.json is missing");
  if (!parse_json(text, &b.json, &err))
    throw Failure(ES_ERR_BUNDLE, mf + " is not valid JSON (" + err + "); the bundle is damaged, export or compile it again");
  if (!b.json.is_object()) throw Failure(ES_ERR_BUNDLE, mf + " is not a manifest object");
  if (const Json* f = b.json.get("format"); f && f->is_string() && f->str == "variants")
    return open_manifest(b.dir + "/" + variant_dir(b, verify), verify);
  std::string missing;
  for (const char* k : REQUIRED)
    if (!b.json.get(k)) missing += std::string(missing.empty() ? "" : ", ") + k;
  if (!missing.empty()) throw Failure(ES_ERR_BUNDLE, mf + " lacks " + missing + "; the bundle is damaged or from another tool");
  const Json& schema = *b.json.get("schema");
  if (!schema.is_number() || schema.num != 1)
    throw Failure(ES_ERR_BUNDLE, b.dir + ": bundle schema is not supported (libedgeslim reads schema 1); "
                                 "upgrade libedgeslim or re-export the model");
  const Json& format = need(b.json, "format", Json::String, b.dir);
  if (format.str != "tvm")
    throw Failure(ES_ERR_BUNDLE, b.dir + " is a " + format.str + " bundle; libedgeslim runs compiled bundles "
                                 "(make one with `edge-slim compile`)");
  b.model_file = need(b.json, "model_file", Json::String, b.dir).str;
  const Json& files = need(b.json, "files", Json::Object, b.dir);
  if (!files.get(b.model_file))
    throw Failure(ES_ERR_TAMPERED, b.dir + ": the model file " + b.model_file + " has no checksum in the manifest");
  // the model file is checked like every other, and must also not escape the bundle
  std::string root = real(b.dir);
  for (const auto& kv : files.fields) {
    const std::string& name = kv.first;
    std::string path = b.dir + "/" + name, rp = real(path);
    bool dotdot = name == ".." || name.rfind("../", 0) == 0 || name.find("/../") != std::string::npos ||
                  (name.size() >= 3 && name.compare(name.size() - 3, 3, "/..") == 0);
    if (name.empty() || name[0] == '/' || (rp.empty() && dotdot) ||
        (!rp.empty() && rp.compare(0, root.size() + 1, root + "/") != 0))
      throw Failure(ES_ERR_TAMPERED, b.dir + ": manifest names a file outside the bundle: " + name);
    if (rp.empty()) throw Failure(ES_ERR_TAMPERED, b.dir + ": " + name + " is missing; the bundle is incomplete");
    if (verify) check_listed_file(b.dir, name, rp, &kv.second, "restore or re-export the bundle");
  }
  b.model_path = root + "/" + b.model_file;
  return b;
}

void check_target(const Manifest& b) {
  const Json* tgt = b.json.get("target");
  std::string tname = "?", kind = "cpu";
  if (tgt && tgt->is_object()) {
    if (const Json* n = tgt->get("name"); n && n->is_string()) tname = n->str;
    if (const Json* k = tgt->get("kind"); k && k->is_string()) kind = k->str;
  }
  int art = elf_machine(b.model_path);
  if (HOST_ELF != 0 && art != HOST_ELF)
    throw Failure(ES_ERR_TARGET, b.dir + " is built for " + elf_name(art) + " (target " + tname + "); this host is " +
                                 HOST_NAME + ": compile it with --target for this machine, or run it on the device");
  if (kind != "cpu")
    throw Failure(ES_ERR_TARGET, b.dir + " is a " + kind + " artifact (target " + tname + "); libedgeslim runs CPU "
                                 "artifacts only: use the Python runtime (--backend tvm) or compile for a CPU target");
  const Json* flags = tgt && tgt->is_object() ? tgt->get("cpu_flags") : nullptr;
  if (flags && flags->is_array() && !flags->items.empty()) {
    std::set<std::string> have = host_cpu_flags();
    std::string lack;
    for (const auto& f : flags->items)
      if (f.is_string() && !have.empty() && !have.count(f.str)) lack += (lack.empty() ? "" : ", ") + f.str;
    if (!lack.empty())
      throw Failure(ES_ERR_TARGET, b.dir + " is built for " + tname + " and needs CPU features " + lack +
                                   ", which this host's CPU lacks: compile for a baseline target (x86-64) instead");
  }
}

}  // namespace es
