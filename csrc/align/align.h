// Cross-tokenizer unit alignment: pure C++17, no torch.
//
// For each example, each side (teacher, student) maps its tokens to character units [a, b)
// through its own offset mapping (docs/DESIGN.md §3). A unit is kept only when both sides own at
// least one token of it, no token straddles its borders on either side, it is not cut by
// truncation and its token range holds no special token. Kept units come out in the ragged
// "varlen" layout: token ranges index the flattened [B*T] token axis of each padded side.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mta_align {

// Why a candidate unit was dropped (0 = kept). Checks run in this order; the first failing
// check names the reason. The names (status_reason) reach Python as mta_ext._align.REASONS,
// read by mta_ext/_reasons.py (shared by the aligner's explain() and its twin).
enum Status : int8_t {
  kKept = 0,
  kTeacherTruncated = 1,  // unit reaches outside the chars the teacher's tokens cover, or
                          // outside the side's window (a truncated token overlaps it)
  kStudentTruncated = 2,
  kTeacherStraddle = 3,  // a teacher token crosses the unit's border
  kStudentStraddle = 4,
  kTeacherNoToken = 5,  // no teacher token lies inside the unit
  kStudentNoToken = 6,
  kTeacherSpecial = 7,  // the teacher token range holds a special (empty-offset) token
  kStudentSpecial = 8,
};
inline constexpr int kNumStatus = 9;  // codes 0 .. kNumStatus - 1

// The reason a status code names, for people (explain(), the CLI); "kept" for kKept.
inline const char* status_reason(Status s) {
  switch (s) {
    case kKept:
      return "kept";
    case kTeacherTruncated:
      return "truncated (teacher)";
    case kStudentTruncated:
      return "truncated (student)";
    case kTeacherStraddle:
      return "straddles a teacher token";
    case kStudentStraddle:
      return "straddles a student token";
    case kTeacherNoToken:
      return "no teacher token";
    case kStudentNoToken:
      return "no student token";
    case kTeacherSpecial:
      return "special token inside (teacher)";
    case kStudentSpecial:
      return "special token inside (student)";
  }
  return "unknown";
}

// One side of a padded batch. Arrays are C-contiguous.
struct SideView {
  const int64_t* offsets;  // [B, T, 2] char offsets (a, b) per token
  const int64_t* mask;     // [B, T] 1 = real token, 0 = pad; one contiguous block per row
  int64_t batch;
  int64_t length;    // T, the padded length
  const char* name;  // "teacher" / "student", for error messages
  // [B, 2] or nullptr: per example the chars [lo, hi) that no truncated token overlaps. A unit
  // reaching outside is dropped as truncated even when the kept tokens cover its chars (the
  // byte-level pieces of one character split by the cut). nullptr: [0, len(text)).
  const int64_t* window = nullptr;
};

// Candidate units of one granularity, ragged over the batch.
struct UnitsView {
  const int64_t* cu;     // [B+1] prefix sums of candidates per example
  const int64_t* spans;  // [M, 2] char spans [a, b)
  int64_t count;         // M
  std::string name;      // granularity name, for error messages
};

// Per-candidate result of one granularity (length M / 2*M), plus kept count per example.
struct UnitsResult {
  std::vector<int8_t> status;           // [M]
  std::vector<int64_t> teacher_ranges;  // [M, 2] rows of the flattened teacher axis (if kept)
  std::vector<int64_t> student_ranges;  // [M, 2]
  std::vector<int64_t> kept;            // [B]
};

// Align a batch. `texts` are UTF-8; offsets count Unicode code points (as Python str indices).
// Throws std::invalid_argument naming the argument and the example index on bad input; when
// several examples are bad, the lowest index is reported (deterministic under threads).
// num_threads <= 0 uses the OpenMP default.
std::vector<UnitsResult> align_batch(const std::vector<std::string>& texts, const SideView& teacher,
                                     const SideView& student, const std::vector<UnitsView>& units,
                                     int num_threads);

// Threads align_batch uses for `work` = B * (T_teacher + T_student) + UTF-8 bytes of the texts
// when `requested` are asked for (<= 0: the OpenMP default): small batches run on one thread.
int choose_threads(int64_t work, int requested);

// Python's str.isspace() for one code point (the whitespace skipped at a token's start).
bool is_space(uint32_t cp);

// Whether the engine was compiled with OpenMP.
bool has_openmp();

}  // namespace mta_align
