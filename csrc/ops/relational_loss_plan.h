// The tile plan of the CUDA relational_loss: host and device share this code. Each example
// b (units [cu[b], cu[b+1]), n of them) is cut into 64x64 tiles of its n x n Gram matrices (upper
// triangle ti <= tj, for n >= 2) and into ceil(n / 64) row tiles (the gradient rows). Its
// n x n block of E and its n x ceil(n / 64) radial partials are packed one example after the
// other. The host computes the SIZES with this code (UnitLayout keeps them after .to(device):
// mta_ext/_layout.py, `relational_plan_sizes`, calls it through the op `_relational_loss_plan`,
// relational_loss_plan.cpp) and the device fills the plan itself from the device cu_units
// (cuda/relational_loss_cuda.cu), so the CUDA path never copies cu_units to the host. Built in
// the CPU build too: the tests read the host plan through the same op.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

#include "common/tile_edge.h"

namespace mta_ext::plan {

constexpr int64_t kTile = kTileEdge;  // the kernels' tiles (common/tile_edge.h)
constexpr int kCols = 8;              // int64 columns of a plan row

// Plan row: a (first unit), n (units of the example), ti, tj, moff (offset of the example's
// n x n block in E), roff (offset of its n x Tb radial partials), Tb (= ceil(n / 64)), unused.
enum Col { kA = 0, kN, kTi, kTj, kMoff, kRoff, kTb };

// The sizes of one example's share of the plan, and of the whole plan.
struct Sizes {
  int64_t tiles = 0;  // Gram tiles (rows of the tile plan)
  int64_t rows = 0;   // row tiles (rows of the row plan)
  int64_t e = 0;      // elements of E (sum of n^2 over examples with n >= 2)
  int64_t rad = 0;    // radial partials (sum of n Tb over examples with n >= 2)
};

// Units [a, e) of example b, clamped into [0, N] (valid layouts are unchanged; a layout that was
// never validated cannot make the kernels read outside the unit tensors).
C10_HOST_DEVICE inline void example_units(const int64_t* cu, int64_t b, int64_t N, int64_t& a,
                                          int64_t& n) {
  int64_t s = cu[b], e = cu[b + 1];
  s = s < 0 ? 0 : (s > N ? N : s);
  e = e < s ? s : (e > N ? N : e);
  a = s;
  n = e - s;
}

C10_HOST_DEVICE inline Sizes example_sizes(int64_t n) {
  Sizes s;
  if (n <= 0) return s;
  const int64_t Tb = (n + kTile - 1) / kTile;
  s.rows = Tb;
  if (n >= 2) {
    s.tiles = Tb * (Tb + 1) / 2;
    s.e = n * n;
    s.rad = n * Tb;
  }
  return s;
}

C10_HOST_DEVICE inline void write_row(int64_t* dst, int64_t a, int64_t n, int64_t ti, int64_t tj,
                                      int64_t moff, int64_t roff, int64_t Tb) {
  dst[kA] = a;
  dst[kN] = n;
  dst[kTi] = ti;
  dst[kTj] = tj;
  dst[kMoff] = moff;
  dst[kRoff] = roff;
  dst[kTb] = Tb;
  dst[7] = 0;
}

// Writes example (a, n)'s plan rows: its Gram tiles from tile row `off.tiles` and its row tiles
// from row `off.rows` (off: the sizes of the examples before it) -- all of them, or none when
// its share does not fit the capacity `cap` (off + its sizes > cap in any of the four), which
// is then reported by returning false. Every row of a written example therefore addresses E and
// the radial partials inside `cap`: a plan sized from wrong host metadata cannot make a kernel
// read or write out of bounds, nor hold half an example. (The device plan starts zero-filled: a
// zero row -- n = 0 -- does nothing in either kernel.)
C10_HOST_DEVICE inline bool write_example(int64_t a, int64_t n, const Sizes& off, const Sizes& cap,
                                          int64_t* tiles, int64_t* rows) {
  if (n <= 0) return true;
  const Sizes s = example_sizes(n);
  if (off.tiles + s.tiles > cap.tiles || off.rows + s.rows > cap.rows || off.e + s.e > cap.e ||
      off.rad + s.rad > cap.rad)
    return false;
  const int64_t Tb = s.rows;
  int64_t t = off.tiles;
  if (n >= 2)
    for (int64_t ti = 0; ti < Tb; ++ti)
      for (int64_t tj = ti; tj < Tb; ++tj, ++t)
        write_row(tiles + t * kCols, a, n, ti, tj, off.e, off.rad, Tb);
  for (int64_t ti = 0; ti < Tb; ++ti)
    write_row(rows + (off.rows + ti) * kCols, a, n, ti, 0, off.e, off.rad, Tb);
  return true;
}

// Host: the plan sizes of a host cu_units [B + 1] over N units.
Sizes plan_sizes(const int64_t* cu, int64_t B, int64_t N);

// The sizes of a plan_sizes list [tiles, rows, e, rad] (checked: 4 ints >= 0).
Sizes sizes_from_list(const char* op, c10::IntArrayRef v);

// Host: the whole plan into tiles [sizes.tiles, kCols] and rows [sizes.rows, kCols].
void fill_plan(const int64_t* cu, int64_t B, int64_t N, const Sizes& sizes, int64_t* tiles,
               int64_t* rows);

}  // namespace mta_ext::plan
