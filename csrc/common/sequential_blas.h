// SequentialBlas: while alive, the BLAS calls of the calling thread (torch's MKL) run on that
// thread alone. The CPU kernels call at::mm from inside their own per-example parallel loops;
// with intra-op threads available, MKL may also split a product's K dimension across threads,
// which changes the summation order (seen on AVX-512 Xeons for K >= 256: 1 vs 2 threads differ
// in the last bit). One BLAS thread per kernel thread keeps the kernels' results independent of
// the thread count (docs/DESIGN.md §5, "Determinism"). A torch built without MKL has no such
// symbol: the guard then does nothing.
#pragma once

// The C entry point (mkl_service.h maps mkl_set_num_threads_local to it; the lower-case
// exported symbol is the Fortran one, which takes a pointer).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace mta_ext {

class SequentialBlas {
 public:
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    // 0 restores the global setting (the previous local value when there was one).
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace mta_ext
