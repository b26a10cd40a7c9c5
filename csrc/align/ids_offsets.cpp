// Decode an id sequence from a piece table and give each token its code-point span (see
// ids_offsets.h). Three linear passes: pieces + byte-fallback runs, the byte buffer, one lossy
// UTF-8 decode that records the char index of every byte.
#include "ids_offsets.h"

#include <stdexcept>
#include <string>

namespace mta_align {

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (1..4), or -(bytes of the maximal
// invalid subpart) (Unicode's "maximal subpart" rule, as Rust's from_utf8_lossy and Python's
// errors="replace": one U+FFFD per maximal subpart).
int utf8_step(const uint8_t* s, size_t i, size_t n) {
  const uint8_t c = s[i];
  if (c < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return -1;  // a continuation byte or C0, C1, F5..FF: a subpart of one byte
  }
  for (int j = 1; j < len; ++j) {
    if (i + j >= n) return -j;
    const uint8_t d = s[i + j];
    const uint8_t l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
    if (d < l || d > h) return -j;
  }
  return len;
}

bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    const int k = utf8_step(p, i, s.size());
    if (k < 0) return false;
    i += static_cast<size_t>(k);
  }
  return true;
}

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

IdsDecoded decode_ids(const PieceTableView& table, const int64_t* ids, int64_t n,
                      bool skip_special) {
  // Pass 1: the piece of every token (skipped specials contribute nothing; the first emitted
  // token uses its "first" string), and broken byte-fallback runs.
  struct Piece {
    const uint8_t* data = nullptr;
    int64_t len = 0;
    int64_t sep = 0;  // leading separator bytes (in the text, in no span)
    bool special = false, broken = false, emitted = false;
    bool marker = false;  // first token made only of the prepended-space marker
  };
  std::vector<Piece> pieces(static_cast<size_t>(n));
  bool first = true;
  int64_t run_start = -1;  // index into `emitted` of the current byte-fallback run
  std::vector<int64_t> emitted;
  emitted.reserve(static_cast<size_t>(n));
  auto close_run = [&](int64_t end) {  // emitted[run_start, end) form one run
    if (run_start < 0) return;
    std::string bytes;
    for (int64_t k = run_start; k < end; ++k) {
      const Piece& p = pieces[emitted[k]];
      bytes.append(reinterpret_cast<const char*>(p.data), static_cast<size_t>(p.len));
    }
    if (!valid_utf8(bytes)) {
      for (int64_t k = run_start; k < end; ++k) {
        Piece& p = pieces[emitted[k]];
        p.data = reinterpret_cast<const uint8_t*>(kReplacement);
        p.len = 3;
        p.broken = true;
      }
    }
    run_start = -1;
  };
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids[t];
    if (id < 0 || id >= table.vocab || (table.flags[id] & kPieceUnknown)) {
      throw std::invalid_argument("offsets_for_ids: id " + std::to_string(id) + " at position " +
                                  std::to_string(t) + " is not in the tokenizer's vocabulary (" +
                                  std::to_string(table.vocab) + " ids)");
    }
    Piece& p = pieces[t];
    p.special = (table.flags[id] & kPieceSpecial) != 0;
    if (p.special && skip_special) continue;
    p.emitted = true;
    if (first) {
      p.data = table.first_bytes + table.first_off[id];
      p.len = table.first_off[id + 1] - table.first_off[id];
      // A lone prepended "▁" decodes to nothing; tokenizers align the marker it stands for
      // with the first char of the text, so the token spans that char.
      p.marker = p.len == 0 && table.rest_off[id + 1] > table.rest_off[id] && !p.special;
      first = false;
    } else {
      p.data = table.rest_bytes + table.rest_off[id];
      p.len = table.rest_off[id + 1] - table.rest_off[id];
      p.sep = table.rest_sep[id];
    }
    const bool bf = (table.flags[id] & kPieceByteFallback) != 0;
    const auto k = static_cast<int64_t>(emitted.size());
    if (bf && run_start < 0) run_start = k;
    if (!bf) close_run(k);
    emitted.push_back(t);
  }
  close_run(static_cast<int64_t>(emitted.size()));

  // Pass 2: the byte buffer and each token's byte range.
  std::vector<int64_t> bstart(static_cast<size_t>(n)), bend(static_cast<size_t>(n));
  std::string buf;
  for (int64_t t = 0; t < n; ++t) {
    const Piece& p = pieces[t];
    bstart[t] = static_cast<int64_t>(buf.size()) + p.sep;
    buf.append(reinterpret_cast<const char*>(p.data), static_cast<size_t>(p.len));
    bend[t] = static_cast<int64_t>(buf.size());
  }

  // Pass 3: lossy decode; char index of every byte, and whether it decoded validly.
  IdsDecoded out;
  const size_t nb = buf.size();
  const auto* bp = reinterpret_cast<const uint8_t*>(buf.data());
  std::vector<int64_t> char_of(nb + 1);
  std::vector<uint8_t> valid(nb);
  out.text.reserve(nb);
  int64_t chars = 0;
  size_t i = 0;
  while (i < nb) {
    const int k = utf8_step(bp, i, nb);
    const size_t len = static_cast<size_t>(k < 0 ? -k : k);
    for (size_t j = 0; j < len; ++j) {
      char_of[i + j] = chars;
      valid[i + j] = k > 0;
    }
    if (k > 0) {
      out.text.append(buf, i, len);
    } else {
      out.text.append(kReplacement, 3);
    }
    ++chars;
    i += len;
  }
  char_of[nb] = chars;

  out.offsets.assign(static_cast<size_t>(2 * n), 0);
  for (int64_t t = 0; t < n; ++t) {
    const Piece& p = pieces[t];
    int64_t s = bstart[t], e = bend[t];
    if (!p.special && !p.broken) {
      while (s < e && !valid[s]) ++s;
      while (e > s && !valid[e - 1]) --e;
    }
    int64_t a, b;
    if (p.marker) {
      a = char_of[static_cast<size_t>(bstart[t])];
      b = a < chars ? a + 1 : a;
    } else if (p.special || p.broken || s >= e) {  // no offsets: (p, p) at its position
      a = b = char_of[static_cast<size_t>(bstart[t])];
      if (!p.special && p.len > 0) ++out.broken;
    } else {
      a = char_of[static_cast<size_t>(s)];
      b = char_of[static_cast<size_t>(e - 1)] + 1;
    }
    out.offsets[2 * t] = a;
    out.offsets[2 * t + 1] = b;
  }
  return out;
}

}  // namespace mta_align
