// A 64x64 output tile of C = A B^T (K-dimension contraction) on CUDA cores, for 256 threads.
//
// Used where the accumulation type must be exact fp32/fp64 (token_salience, the fp32/fp64 Gram of
// relational_loss and its gradient product). Thread (ty, tx) = (tid / 16, tid % 16) owns rows
// ty + 16 i and columns tx + 16 j (i, j < 4) of the tile: shared-memory reads are broadcasts along
// rows and consecutive along columns, so they are conflict free. The summation order over K is
// fixed (k ascending), so results are bit-reproducible.
#pragma once

#include <cstdint>

#include "common/tile_edge.h"

namespace mta_ext::cuda::simt {

constexpr int kTile = kTileEdge;
constexpr int kThreads = 256;

// KC (the K-chunk staged in shared memory per step) is 16 for float and 8 for double, so the
// staging buffers stay at ~8 KB and callers keep room for a 64x64 result tile.
template <typename acc_t>
struct Chunk {
  static constexpr int KC = sizeof(acc_t) == 8 ? 8 : 16;
};

template <typename acc_t>
struct Stage {
  static constexpr int KC = Chunk<acc_t>::KC;
  acc_t a[KC][kTile + 1];
  acc_t b[KC][kTile + 1];
};

// Which index of an operand is contiguous in memory decides the thread->element map of the
// staging load (consecutive threads read consecutive addresses either way).
enum class Contig { K, Row };

template <Contig C, int KC>
__device__ __forceinline__ void stage_index(int e, int& r, int& k) {
  if constexpr (C == Contig::K) {
    r = e / KC;
    k = e % KC;
  } else {
    r = e % kTile;
    k = e / kTile;
  }
}

// acc[i][j] += sum_{k < K} A(ty + 16 i, k) * B(tx + 16 j, k).
// loadA(r, k) / loadB(c, k) return the element as acc_t; they must return 0 for k >= K and for
// rows/columns outside the operand.
template <typename acc_t, Contig CA, Contig CB, typename LA, typename LB>
__device__ __forceinline__ void gemm_nt(acc_t (&acc)[4][4], int64_t K, const LA& loadA,
                                        const LB& loadB, Stage<acc_t>& st) {
  constexpr int KC = Stage<acc_t>::KC;
  constexpr int kPerThread = kTile * KC / kThreads;
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      int r, k;
      stage_index<CA, KC>(tid + kThreads * q, r, k);
      st.a[k][r] = loadA(r, k0 + k);
      stage_index<CB, KC>(tid + kThreads * q, r, k);
      st.b[k][r] = loadB(r, k0 + k);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      acc_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = st.a[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = st.b[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
}

template <typename acc_t>
__device__ __forceinline__ void zero(acc_t (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);
}

}  // namespace mta_ext::cuda::simt
