// A minimal JSON reader for bundle manifests; written for libedgeslim, public domain.
#include "json.h"

#include <cstdlib>
#include <cstring>

namespace es {

const Json* Json::get(const std::string& key) const {
  if (kind != Object) return nullptr;
  for (const auto& kv : fields)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

struct Parser {
  const std::string& s;
  size_t i = 0;
  std::string err;

  bool fail(const char* what) {
    if (err.empty()) {
      size_t line = 1, col = 1;
      for (size_t k = 0; k < i && k < s.size(); k++) {
        if (s[k] == '\n') { line++; col = 1; } else { col++; }
      }
      err = "line " + std::to_string(line) + " col " + std::to_string(col) + ": " + what;
    }
    return false;
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  }
  bool lit(const char* word) {
    size_t n = std::strlen(word);
    if (s.compare(i, n, word) != 0) return fail("invalid literal");
    i += n;
    return true;
  }
  static void put_utf8(std::string* o, unsigned cp) {
    if (cp < 0x80) { o->push_back(char(cp)); }
    else if (cp < 0x800) { o->push_back(char(0xC0 | cp >> 6)); o->push_back(char(0x80 | (cp & 63))); }
    else if (cp < 0x10000) {
      o->push_back(char(0xE0 | cp >> 12)); o->push_back(char(0x80 | ((cp >> 6) & 63)));
      o->push_back(char(0x80 | (cp & 63)));
    } else {
      o->push_back(char(0xF0 | cp >> 18)); o->push_back(char(0x80 | ((cp >> 12) & 63)));
      o->push_back(char(0x80 | ((cp >> 6) & 63))); o->push_back(char(0x80 | (cp & 63)));
    }
  }
  bool hex4(unsigned* v) {
    if (i + 4 > s.size()) return fail("short \\u escape");
    *v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i++];
      *v <<= 4;
      if (c >= '0' && c <= '9') *v |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') *v |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') *v |= unsigned(c - 'A' + 10);
      else return fail("bad \\u escape");
    }
    return true;
  }
  bool string(std::string* o) {
    i++;  // opening quote
    while (true) {
      if (i >= s.size()) return fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s[i++]);
      if (c == '"') return true;
      if (c < 0x20) return fail("control character in string");
      if (c != '\\') { o->push_back(char(c)); continue; }
      if (i >= s.size()) return fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': o->push_back('"'); break;
        case '\\': o->push_back('\\'); break;
        case '/': o->push_back('/'); break;
        case 'b': o->push_back('\b'); break;
        case 'f': o->push_back('\f'); break;
        case 'n': o->push_back('\n'); break;
        case 'r': o->push_back('\r'); break;
        case 't': o->push_back('\t'); break;
        case 'u': {
          unsigned cp = 0;
          if (!hex4(&cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            size_t save = i;
            i += 2;
            unsigned lo = 0;
            if (!hex4(&lo)) return false;
            if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else i = save;
          }
          put_utf8(o, cp);
          break;
        }
        default: return fail("bad escape");
      }
    }
  }
  bool number(double* v) {
    size_t start = i;
    if (s[i] == '-') i++;
    while (i < s.size() && (std::strchr("0123456789.eE+-", s[i]) != nullptr)) i++;
    std::string tok = s.substr(start, i - start);
    char* end = nullptr;
    *v = std::strtod(tok.c_str(), &end);
    if (tok.empty() || end != tok.c_str() + tok.size()) { i = start; return fail("bad number"); }
    return true;
  }
  bool value(Json* v, int depth) {
    if (depth > 64) return fail("nesting too deep");
    ws();
    if (i >= s.size()) return fail("unexpected end");
    char c = s[i];
    if (c == '{') {
      v->kind = Json::Object;
      i++; ws();
      if (i < s.size() && s[i] == '}') { i++; return true; }
      while (true) {
        ws();
        if (i >= s.size() || s[i] != '"') return fail("expected a key");
        std::string key;
        if (!string(&key)) return false;
        ws();
        if (i >= s.size() || s[i] != ':') return fail("expected ':'");
        i++;
        v->fields.emplace_back(std::move(key), Json());
        if (!value(&v->fields.back().second, depth + 1)) return false;
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == '}') { i++; return true; }
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v->kind = Json::Array;
      i++; ws();
      if (i < s.size() && s[i] == ']') { i++; return true; }
      while (true) {
        v->items.emplace_back();
        if (!value(&v->items.back(), depth + 1)) return false;
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == ']') { i++; return true; }
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') { v->kind = Json::String; return string(&v->str); }
    if (c == 't') { v->kind = Json::Bool; v->b = true; return lit("true"); }
    if (c == 'f') { v->kind = Json::Bool; v->b = false; return lit("false"); }
    if (c == 'n') { v->kind = Json::Null; return lit("null"); }
    if (c == '-' || (c >= '0' && c <= '9')) { v->kind = Json::Number; return number(&v->num); }
    // Python's json.dumps writes NaN/Infinity for non-finite floats (eval numbers); read them as numbers
    if (s.compare(i, 3, "NaN") == 0) { v->kind = Json::Number; v->num = 0.0 / 0.0; i += 3; return true; }
    if (s.compare(i, 8, "Infinity") == 0) { v->kind = Json::Number; v->num = 1e308 * 10; i += 8; return true; }
    return fail("unexpected character");
  }
};

}  // namespace

bool parse_json(const std::string& text, Json* out, std::string* err) {
  Parser p{text, 0, std::string()};
  *out = Json();
  if (!p.value(out, 0)) { *err = p.err; return false; }
  p.ws();
  if (p.i != text.size()) { p.fail("trailing characters"); *err = p.err; return false; }
  return true;
}

}  // namespace es
