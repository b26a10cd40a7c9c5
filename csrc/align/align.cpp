// The alignment merge. Per example and side: one pass over the tokens (validation, leading
// whitespace skip, the list of non-blank tokens), one pass over the chars (char -> first
// non-blank token starting at or after it), then O(1) per unit. O(chars + tokens + units).
#include "align.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mta_align {

bool is_space(uint32_t cp) {
  // Exactly the code points for which Python's str.isspace() is true.
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int choose_threads(int64_t work, int requested) {
#ifdef _OPENMP
  // A batch of 32 long texts is ~1 ms of work on one core: waking a thread team costs more
  // than it saves there (far more on a busy machine). One extra thread per ~1M chars + slots.
  const int64_t cap = 1 + work / (int64_t{1} << 20);
  int64_t nt = requested > 0 ? requested : omp_get_max_threads();
  return static_cast<int>(nt < cap ? nt : cap);
#else
  (void)work;
  (void)requested;
  return 1;
#endif
}

namespace {

// Per-side working arrays of one example; reused across examples by one thread.
struct SidePrep {
  std::vector<int32_t> nb_tok;    // token index of the k-th non-blank token
  std::vector<int64_t> nb_end;    // its end offset
  std::vector<int64_t> nb_start;  // its start after skipping leading whitespace
  std::vector<int32_t> start_k;   // [L+1]: first k with nb_start[k] >= c
  std::vector<int32_t> special;   // [n+1]: prefix count of empty-offset tokens from lo on
  int64_t lo = 0;                 // first real (unpadded) token
  int64_t raw_first = 0;          // first / last char covered by a non-empty token
  int64_t raw_last = 0;
  int64_t win_lo = 0;  // chars no truncated token overlaps: [win_lo, win_hi)
  int64_t win_hi = 0;
  bool any = false;  // at least one non-empty token
};

struct Scratch {
  std::vector<uint8_t> ws;  // per code point: is whitespace
  SidePrep side[2];
};

// UTF-8 -> one whitespace flag per code point. Input comes from Python str, so it is valid.
void decode_whitespace(const std::string& s, std::vector<uint8_t>& ws) {
  ws.clear();
  ws.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ws.push_back(is_space(c));
      ++i;
      continue;
    }
    uint32_t cp;
    int len;
    if ((c >> 5) == 0x6) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c >> 4) == 0xE) {
      cp = c & 0x0F;
      len = 3;
    } else {
      cp = c & 0x07;
      len = 4;
    }
    for (int j = 1; j < len && i + j < n; ++j) cp = (cp << 6) | (s[i + j] & 0x3F);
    ws.push_back(is_space(cp));
    i += len;
  }
}

std::string where(const SideView& sv, int64_t b) {
  return std::string(sv.name) + " example " + std::to_string(b);
}

// Validates one side of example b and fills p. Returns an error message, empty if fine.
std::string prepare_side(const SideView& sv, int64_t b, const std::vector<uint8_t>& ws,
                         SidePrep& p) {
  const int64_t T = sv.length;
  const int64_t L = static_cast<int64_t>(ws.size());
  const int64_t* off = sv.offsets + b * T * 2;
  const int64_t* m = sv.mask + b * T;

  int64_t lo = -1, hi = -1, ones = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (m[t] == 1) {
      if (lo < 0) lo = t;
      hi = t + 1;
      ++ones;
    } else if (m[t] != 0) {
      return where(sv, b) + ": attention_mask holds " + std::to_string(m[t]) + " at position " +
             std::to_string(t) + "; expected 0 or 1";
    }
  }
  if (lo < 0) lo = hi = 0;
  if (ones != hi - lo) {
    return where(sv, b) +
           ": attention_mask is not one contiguous block of ones (only left or right padding "
           "is supported)";
  }

  p.win_lo = 0;
  p.win_hi = L;
  if (sv.window != nullptr) {
    p.win_lo = sv.window[2 * b];
    p.win_hi = sv.window[2 * b + 1];
    if (p.win_lo < 0 || p.win_hi < p.win_lo || p.win_hi > L) {
      return where(sv, b) + ": window (" + std::to_string(p.win_lo) + ", " +
             std::to_string(p.win_hi) + ") needs 0 <= lo <= hi <= len(text) = " + std::to_string(L);
    }
  }

  p.nb_tok.clear();
  p.nb_end.clear();
  p.nb_start.clear();
  p.special.assign(static_cast<size_t>(hi - lo) + 1, 0);
  p.lo = lo;
  p.any = false;
  int64_t prev_a = -1, prev_e = -1;
  for (int64_t t = lo; t < hi; ++t) {
    p.special[t - lo + 1] = p.special[t - lo];
    const int64_t a = off[2 * t], e = off[2 * t + 1];
    if (a < 0 || e < a || e > L) {
      return where(sv, b) + ": offsets of token " + std::to_string(t) + " are (" +
             std::to_string(a) + ", " + std::to_string(e) + "), outside the text of length " +
             std::to_string(L) + " or start > end";
    }
    if (a == e) {  // special tokens (0,0) and other empty tokens belong to no unit
      p.special[t - lo + 1] += 1;
      continue;
    }
    if (p.any && (a < prev_a || e < prev_e)) {
      return where(sv, b) + ": offsets not monotone at token " + std::to_string(t) + ": (" +
             std::to_string(a) + ", " + std::to_string(e) + ") after (" + std::to_string(prev_a) +
             ", " + std::to_string(prev_e) + ")";
    }
    if (!p.any) p.raw_first = a;
    p.any = true;
    p.raw_last = e;
    prev_a = a;
    prev_e = e;
    int64_t s = a;
    while (s < e && ws[s]) ++s;  // drop the whitespace BPE / SentencePiece glue to the start
    if (s == e) continue;        // whitespace-only token: belongs to no unit by itself
    p.nb_tok.push_back(static_cast<int32_t>(t));
    p.nb_start.push_back(s);
    p.nb_end.push_back(e);
  }

  // Starts are non-decreasing (overlapping byte-fallback pieces included), so one sweep.
  p.start_k.resize(static_cast<size_t>(L) + 1);
  const int32_t n = static_cast<int32_t>(p.nb_tok.size());
  int32_t k = 0;
  for (int64_t c = 0; c <= L; ++c) {
    while (k < n && p.nb_start[k] < c) ++k;
    p.start_k[c] = k;
  }
  return {};
}

// 0 owned range found; 1 truncated; 2 straddled; 3 no token; 4 special token inside.
inline int classify(const SidePrep& p, int64_t a, int64_t b, int64_t* r0, int64_t* r1) {
  if (!p.any || a < p.raw_first || b > p.raw_last) return 1;
  if (a < p.win_lo || b > p.win_hi) return 1;  // a truncated token overlaps the unit
  const int32_t k0 = p.start_k[a], k1 = p.start_k[b];
  // Ends are non-decreasing: only the nearest token before / the last one inside can cross.
  if (k0 > 0 && p.nb_end[k0 - 1] > a) return 2;
  if (k1 > k0 && p.nb_end[k1 - 1] > b) return 2;
  if (k1 == k0) return 3;
  const int64_t t0 = p.nb_tok[k0], t1 = p.nb_tok[k1 - 1] + 1;
  if (p.special[t1 - p.lo] != p.special[t0 - p.lo]) return 4;
  *r0 = t0;
  *r1 = t1;
  return 0;
}

}  // namespace

std::vector<UnitsResult> align_batch(const std::vector<std::string>& texts, const SideView& teacher,
                                     const SideView& student, const std::vector<UnitsView>& units,
                                     int num_threads) {
  const int64_t B = static_cast<int64_t>(texts.size());
  if (teacher.batch != B || student.batch != B) {
    throw std::invalid_argument("batch size mismatch: " + std::to_string(B) + " texts, " +
                                std::to_string(teacher.batch) + " teacher rows, " +
                                std::to_string(student.batch) + " student rows");
  }
  for (const auto& u : units) {
    if (u.cu[0] != 0 || u.cu[B] != u.count) {
      throw std::invalid_argument("units['" + u.name +
                                  "']: cu must start at 0 and end at the "
                                  "number of spans (" +
                                  std::to_string(u.count) + ")");
    }
    for (int64_t b = 0; b < B; ++b) {
      if (u.cu[b + 1] < u.cu[b]) {
        throw std::invalid_argument("units['" + u.name + "']: cu decreases at example " +
                                    std::to_string(b));
      }
    }
  }

  std::vector<UnitsResult> out(units.size());
  for (size_t g = 0; g < units.size(); ++g) {
    out[g].status.assign(units[g].count, kKept);
    out[g].teacher_ranges.assign(2 * units[g].count, 0);
    out[g].student_ranges.assign(2 * units[g].count, 0);
    out[g].kept.assign(B, 0);
  }
  std::vector<std::string> errors(B);

#ifdef _OPENMP
  int64_t work = B * (teacher.length + student.length);
  for (const auto& t : texts) work += static_cast<int64_t>(t.size());
  const int nt = choose_threads(work, num_threads);
#pragma omp parallel num_threads(nt)
#endif
  {
    Scratch sc;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 8)
#endif
    for (int64_t b = 0; b < B; ++b) {
      decode_whitespace(texts[b], sc.ws);
      const int64_t L = static_cast<int64_t>(sc.ws.size());
      std::string err = prepare_side(teacher, b, sc.ws, sc.side[0]);
      if (err.empty()) err = prepare_side(student, b, sc.ws, sc.side[1]);
      for (size_t g = 0; g < units.size() && err.empty(); ++g) {
        const UnitsView& u = units[g];
        UnitsResult& r = out[g];
        int64_t kept = 0;
        for (int64_t j = u.cu[b]; j < u.cu[b + 1]; ++j) {
          const int64_t a = u.spans[2 * j], e = u.spans[2 * j + 1];
          if (a < 0 || e > L || a >= e) {
            err = "units['" + u.name + "'] example " + std::to_string(b) + ", span " +
                  std::to_string(j - u.cu[b]) + " = (" + std::to_string(a) + ", " +
                  std::to_string(e) + "): need 0 <= a < b <= len(text) = " + std::to_string(L);
            break;
          }
          int64_t t0 = 0, t1 = 0, s0 = 0, s1 = 0;
          const int ct = classify(sc.side[0], a, e, &t0, &t1);
          const int cs = classify(sc.side[1], a, e, &s0, &s1);
          int8_t st = kKept;
          if (ct != 0 && (cs == 0 || ct <= cs)) {
            st = static_cast<int8_t>(2 * ct - 1);
          } else if (cs != 0) {
            st = static_cast<int8_t>(2 * cs);
          }
          r.status[j] = st;
          if (st == kKept) {
            r.teacher_ranges[2 * j] = b * teacher.length + t0;
            r.teacher_ranges[2 * j + 1] = b * teacher.length + t1;
            r.student_ranges[2 * j] = b * student.length + s0;
            r.student_ranges[2 * j + 1] = b * student.length + s1;
            ++kept;
          }
        }
        r.kept[b] = kept;
      }
      if (!err.empty()) errors[b] = std::move(err);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    if (!errors[b].empty()) throw std::invalid_argument(errors[b]);
  }
  return out;
}

}  // namespace mta_align
