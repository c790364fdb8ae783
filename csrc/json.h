// A minimal JSON reader (RFC 8259) for bundle manifests; written for libedgeslim, public domain.
// Numbers are doubles, strings are UTF-8 (\uXXXX escapes and surrogate pairs decoded), objects keep key order.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace es {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;                           // Array
  std::vector<std::pair<std::string, Json>> fields;  // Object, in file order

  const Json* get(const std::string& key) const;     // nullptr when absent or not an object
  bool is_string() const { return kind == String; }
  bool is_array() const { return kind == Array; }
  bool is_object() const { return kind == Object; }
  bool is_number() const { return kind == Number; }
};

// Parse text; false with *err ("line L col C: ...") on malformed input or nesting deeper than 64.
bool parse_json(const std::string& text, Json* out, std::string* err);

}  // namespace es
