// The bundle's word tokenizer, exactly as edge_slim/text/tokenizer.py on UTF-8 text:
// Python lower-cases with str.lower() and keeps runs of [a-z0-9]. Only two non-ASCII code points
// lower-case to ASCII letters (U+212A KELVIN SIGN -> "k", U+0130 -> "i" + a combining dot), so
// ASCII folding plus those two is the same function; any other non-ASCII character separates words.
#include <utility>

#include "internal.h"

namespace es {

static const size_t MAX_CHARS = 2000;  // tokenizer.py's MAX_CHARS, counted in code points

Tokenizer::Tokenizer(std::vector<std::string> vocab, size_t max_len, std::map<std::string, std::string> synonyms)
    : vocab_(std::move(vocab)), synonyms_(std::move(synonyms)), max_len_(max_len) {
  for (size_t i = 0; i < vocab_.size(); i++) {
    if (!ids_.emplace(vocab_[i], int64_t(i)).second) throw Failure(ES_ERR_BUNDLE, "vocabulary has duplicate words");
  }
  auto need = [&](const char* w) {
    auto it = ids_.find(w);
    if (it == ids_.end()) throw Failure(ES_ERR_BUNDLE, std::string("the vocabulary lacks ") + w);
    return it->second;
  };
  pad_ = need("[pad]");
  unk_ = need("[unk]");
  if (max_len_ < 1) throw Failure(ES_ERR_BUNDLE, "tokenizer max_len must be >= 1");
}

std::vector<std::string> Tokenizer::words(const std::string& text) const {
  std::vector<std::string> out;
  std::string cur;
  size_t chars = 0;
  auto flush = [&]() {
    if (!cur.empty()) {
      auto it = synonyms_.find(cur);
      out.push_back(it == synonyms_.end() ? cur : it->second);
      cur.clear();
    }
  };
  const unsigned char* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    unsigned char c = s[i];
    chars++;
    if (c < 0x80) {
      if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c - 'A' + 'a');
      if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) cur.push_back(char(c));
      else flush();
      i++;
      continue;
    }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;  // a stray byte counts as one character
    if (i + len > n) len = 1;
    if (len == 3 && s[i] == 0xE2 && s[i + 1] == 0x84 && s[i + 2] == 0xAA) {  // U+212A KELVIN SIGN
      cur.push_back('k');
    } else if (len == 2 && s[i] == 0xC4 && s[i + 1] == 0xB0) {  // U+0130 -> "i\u0307": 'i', then a separator
      cur.push_back('i');
      flush();
    } else {
      flush();
    }
    i += len;
  }
  flush();
  if (chars > MAX_CHARS)
    throw Failure(ES_ERR_INPUT, "text is " + std::to_string(chars) + " characters long; the limit is " +
                                    std::to_string(MAX_CHARS));
  if (out.empty()) throw Failure(ES_ERR_INPUT, "text is empty (no words)");
  return out;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, const std::string& task) const {
  auto t = ids_.find("[" + task + "]");
  if (t == ids_.end()) throw Failure(ES_ERR_ARGUMENT, "unknown task '" + task + "' (ask, match or locate)");
  std::vector<int64_t> ids{t->second};
  for (const auto& w : words(text)) {
    auto it = ids_.find(w);
    ids.push_back(it == ids_.end() ? unk_ : it->second);
  }
  ids.resize(max_len_, pad_);  // truncates long texts, pads short ones
  return ids;
}

}  // namespace es
