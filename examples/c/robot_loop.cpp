// A robot loop over libedgeslim (C API, no Python): read camera frames (PNG/JPEG files in a folder, in name
// order), ask questions about each, print the answers and each call's latency.
//
//   robot_loop BUNDLE FRAMES_DIR [-q QUESTION]... [-l PHRASE] [-m TEXT]... [--threads N] [--all-answers]
//   robot_loop BUNDLE --script FILE      one call per line: IMAGE<TAB>ask|locate|match<TAB>TEXT[<TAB>TEXT...]
//                                        (one JSON object per line out; tests/test_capi.py drives it)
//
// Exit codes as edge-slim's: 0 ok, 2 usage, 3 bad input, 4 model or artifact problem.
#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "edgeslim.h"

namespace {

int exit_code(es_status st) {
  switch (st) {
    case ES_OK: return 0;
    case ES_ERR_ARGUMENT: return 2;
    case ES_ERR_INPUT: return 3;
    default: return 4;
  }
}

int die(es_status st, const char* what) {
  std::fprintf(stderr, "robot_loop: %s: %s (%s)\n", what, es_last_error(), es_status_name(st));
  return exit_code(st);
}

std::string json_str(const char* s) {
  std::string o = "\"";
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') { o += '\\'; o += *s; }
    else if (static_cast<unsigned char>(*s) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", *s); o += b; }
    else o += *s;
  }
  return o + "\"";
}

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  size_t start = 0, pos;
  while ((pos = line.find(sep, start)) != std::string::npos) { out.push_back(line.substr(start, pos - start)); start = pos + 1; }
  out.push_back(line.substr(start));
  return out;
}

std::vector<std::string> frames_in(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name, low = n;
      std::transform(low.begin(), low.end(), low.begin(), ::tolower);
      for (const char* ext : {".png", ".jpg", ".jpeg"}) {
        size_t k = std::strlen(ext);
        if (low.size() > k && low.compare(low.size() - k, k, ext) == 0) { out.push_back(dir + "/" + n); break; }
      }
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// --script: one JSON line per call, full precision, so a test can compare with the Python runtime.
int run_script(es_session* s, const char* path) {
  std::ifstream f(path);
  if (!f) { std::fprintf(stderr, "robot_loop: cannot read %s\n", path); return 3; }
  std::string line, cached_path;
  es_image* img = nullptr;
  int rc = 0;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    std::vector<std::string> col = split(line, '\t');
    if (col.size() < 3) { std::fprintf(stderr, "robot_loop: bad script line: %s\n", line.c_str()); rc = 2; break; }
    if (col[0] != cached_path) {  // consecutive calls on one frame decode it once
      es_image_free(img);
      img = nullptr;
      if (es_status st = es_image_from_file(s, col[0].c_str(), &img)) { rc = die(st, "image"); break; }
      cached_path = col[0];
    }
    const std::string& task = col[1];
    char buf[512];
    if (task == "ask") {
      es_answer a;
      if (es_status st = es_ask(s, img, col[2].c_str(), &a)) { rc = die(st, "ask"); break; }
      std::snprintf(buf, sizeof buf, "{\"task\": \"ask\", \"answer\": %s, \"score\": %.17g, \"ms\": %.3f}\n",
                    json_str(a.answer).c_str(), a.score, a.latency_ms);
      std::fputs(buf, stdout);
    } else if (task == "locate") {
      es_location l;
      if (es_status st = es_locate(s, img, col[2].c_str(), &l)) { rc = die(st, "locate"); break; }
      std::snprintf(buf, sizeof buf, "{\"task\": \"locate\", \"box\": [%.17g, %.17g, %.17g, %.17g], \"score\": %.17g, "
                    "\"ms\": %.3f}\n", l.box[0], l.box[1], l.box[2], l.box[3], l.score, l.latency_ms);
      std::fputs(buf, stdout);
    } else if (task == "match") {
      std::vector<const char*> texts;
      for (size_t i = 2; i < col.size(); i++) texts.push_back(col[i].c_str());
      std::vector<double> scores(texts.size());
      size_t best = 0;
      double ms = 0;
      if (es_status st = es_match(s, img, texts.data(), texts.size(), scores.data(), &best, &ms)) { rc = die(st, "match"); break; }
      std::string out = "{\"task\": \"match\", \"best\": " + std::to_string(best) + ", \"scores\": [";
      for (size_t i = 0; i < scores.size(); i++) {
        std::snprintf(buf, sizeof buf, "%s%.17g", i ? ", " : "", scores[i]);
        out += buf;
      }
      std::snprintf(buf, sizeof buf, "], \"ms\": %.3f}\n", ms);
      std::fputs((out + buf).c_str(), stdout);
    } else {
      std::fprintf(stderr, "robot_loop: unknown task %s\n", task.c_str());
      rc = 2;
      break;
    }
  }
  es_image_free(img);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: robot_loop BUNDLE FRAMES_DIR [-q QUESTION]... [-l PHRASE] [-m TEXT]... [--threads N] "
                         "[--all-answers]\n       robot_loop BUNDLE --script FILE [--threads N] [--all-answers]\n");
    return 2;
  }
  const char* bundle = argv[1];
  const char* script = nullptr;
  std::string frames;
  std::vector<std::string> questions, matches;
  std::string phrase;
  es_options opts{0, 1, 0};
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    bool has_value = i + 1 < argc;
    if (a == "--script" && has_value) script = argv[++i];
    else if (a == "-q" && has_value) questions.push_back(argv[++i]);
    else if (a == "-l" && has_value) phrase = argv[++i];
    else if (a == "-m" && has_value) matches.push_back(argv[++i]);
    else if (a == "--threads" && has_value) opts.threads = std::atoi(argv[++i]);
    else if (a == "--all-answers") opts.all_answers = 1;
    else if (frames.empty() && a[0] != '-') frames = a;
    else { std::fprintf(stderr, "robot_loop: unexpected argument %s\n", a.c_str()); return 2; }
  }
  auto t0 = std::chrono::steady_clock::now();
  es_session* s = nullptr;
  if (es_status st = es_open(bundle, &opts, &s)) return die(st, "cannot open the model");
  double open_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (script) {
    int rc = run_script(s, script);
    es_close(s);
    return rc;
  }
  std::printf("model %s for %s, opened and verified in %.1f ms\n", es_model_name(s), es_model_target(s), open_ms);
  if (questions.empty() && phrase.empty() && matches.empty()) questions = {"how many objects are there?"};
  std::vector<std::string> files = frames_in(frames);
  if (files.empty()) { std::fprintf(stderr, "robot_loop: no .png/.jpg frames in %s\n", frames.c_str()); es_close(s); return 3; }
  int rc = 0;
  for (const std::string& f : files) {
    auto t1 = std::chrono::steady_clock::now();
    es_image* img = nullptr;
    if (es_status st = es_image_from_file(s, f.c_str(), &img)) { rc = die(st, "frame"); continue; }
    double prep_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
    std::printf("%s (decode+preprocess %.2f ms)\n", f.c_str(), prep_ms);
    for (const std::string& q : questions) {
      es_answer a;
      if (es_status st = es_ask(s, img, q.c_str(), &a)) { rc = die(st, "ask"); continue; }
      std::printf("  ask    %-40s -> %-9s p=%.3f  %.2f ms\n", q.c_str(), a.answer, a.score, a.latency_ms);
    }
    if (!phrase.empty()) {
      es_location l;
      if (es_status st = es_locate(s, img, phrase.c_str(), &l)) { rc = die(st, "locate"); }
      else std::printf("  locate %-40s -> [%.0f %.0f %.0f %.0f] p=%.3f  %.2f ms\n", phrase.c_str(), l.box[0], l.box[1],
                       l.box[2], l.box[3], l.score, l.latency_ms);
    }
    if (!matches.empty()) {
      std::vector<const char*> texts;
      for (const auto& m : matches) texts.push_back(m.c_str());
      std::vector<double> scores(texts.size());
      size_t best = 0;
      double ms = 0;
      if (es_status st = es_match(s, img, texts.data(), texts.size(), scores.data(), &best, &ms)) { rc = die(st, "match"); }
      else std::printf("  match  best: %-34s p=%.3f  %.2f ms for %zu texts\n", texts[best], scores[best], ms, texts.size());
    }
    es_image_free(img);
  }
  es_close(s);
  return rc;
}
