// The host side of the relational_loss tile plan (relational_loss_plan.h), compiled in every
// build, and the test-only op that exposes it.
#include "ops/relational_loss_plan.h"

#include "common/cpu_kernel.h"
#if defined(MTA_WITH_CUDA) || defined(MTA_WITH_SIMT)
#include "cuda/relational_loss_cuda.h"
#endif

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

namespace mta_ext::plan {

Sizes plan_sizes(const int64_t* cu, int64_t B, int64_t N) {
  Sizes total;
  for (int64_t b = 0; b < B; ++b) {
    int64_t a = 0, n = 0;
    example_units(cu, b, N, a, n);
    const Sizes s = example_sizes(n);
    total.tiles += s.tiles;
    total.rows += s.rows;
    total.e += s.e;
    total.rad += s.rad;
  }
  return total;
}

void fill_plan(const int64_t* cu, int64_t B, int64_t N, const Sizes& sizes, int64_t* tiles,
               int64_t* rows) {
  Sizes off;
  for (int64_t b = 0; b < B; ++b) {
    int64_t a = 0, n = 0;
    example_units(cu, b, N, a, n);
    write_example(a, n, off, sizes, tiles, rows);
    const Sizes s = example_sizes(n);
    off.tiles += s.tiles;
    off.rows += s.rows;
    off.e += s.e;
    off.rad += s.rad;
  }
}

namespace {

// _relational_loss_plan(cu_units, N) -> (tiles [T, 8], rows [R, 8], sizes [4]): the plan the
// CUDA kernels run, built on the host (the device builds the same rows with the same code).
std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_plan_op(const at::Tensor& cu_units,
                                                                       int64_t num_units) {
  TORCH_CHECK_VALUE(cu_units.dim() == 1 && cu_units.size(0) >= 1,
                    "_relational_loss_plan: cu_units must be [B + 1]");
  const auto cu = cu_units.to(at::kLong).contiguous();
  const int64_t B = cu.size(0) - 1;
  const int64_t* c = cu.const_data_ptr<int64_t>();
  const Sizes s = plan_sizes(c, B, num_units);
  auto opts = at::TensorOptions().dtype(at::kLong);
  auto tiles = at::empty({s.tiles, kCols}, opts);
  auto rows = at::empty({s.rows, kCols}, opts);
  fill_plan(c, B, num_units, s, tiles.mutable_data_ptr<int64_t>(),
            rows.mutable_data_ptr<int64_t>());
  return {tiles, rows, at::tensor({s.tiles, s.rows, s.e, s.rad}, opts)};
}

}  // namespace

Sizes sizes_from_list(const char* op, at::IntArrayRef v) {
  TORCH_CHECK_VALUE(v.size() == 4, op,
                    ": plan_sizes must be [num_tiles, num_row_tiles, gram_size, radial_size] "
                    "(4 ints), got ",
                    v.size());
  for (const int64_t x : v) TORCH_CHECK_VALUE(x >= 0, op, ": plan_sizes must be >= 0, got ", v);
  Sizes s;
  s.tiles = v[0];
  s.rows = v[1];
  s.e = v[2];
  s.rad = v[3];
  return s;
}

// The host twin of the device plan build (cuda/relational_loss_cuda.cu make_plan) for given
// sizes: zero-filled rows, each example written whole or not at all, and the flag the device
// raises when the sizes do not describe cu_units.
std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_plan_with_sizes_cpu(
    const at::Tensor& cu_units, int64_t num_units, at::IntArrayRef plan_sizes) {
  const char* op = "_relational_loss_plan_with_sizes";
  TORCH_CHECK_VALUE(cu_units.dim() == 1 && cu_units.size(0) >= 1, op, ": cu_units must be [B + 1]");
  const Sizes cap = sizes_from_list(op, plan_sizes);
  const auto cu = cu_units.to(at::kLong).contiguous();
  const int64_t B = cu.size(0) - 1;
  const int64_t* c = cu.const_data_ptr<int64_t>();
  auto opts = at::TensorOptions().dtype(at::kLong);
  auto tiles = at::zeros({cap.tiles, kCols}, opts);
  auto rows = at::zeros({cap.rows, kCols}, opts);
  bool bad = c[0] != 0 || c[B] != num_units;
  Sizes off;
  for (int64_t b = 0; b < B; ++b) {
    bad = bad || c[b + 1] < c[b];
    int64_t a = 0, n = 0;
    example_units(c, b, num_units, a, n);
    bad = !write_example(a, n, off, cap, tiles.mutable_data_ptr<int64_t>(),
                         rows.mutable_data_ptr<int64_t>()) ||
          bad;
    const Sizes s = example_sizes(n);
    off.tiles += s.tiles;
    off.rows += s.rows;
    off.e += s.e;
    off.rad += s.rad;
  }
  bad =
      bad || off.tiles != cap.tiles || off.rows != cap.rows || off.e != cap.e || off.rad != cap.rad;
  return {tiles, rows, at::full({1}, int(bad), at::TensorOptions().dtype(at::kInt))};
}

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def("_relational_loss_plan(Tensor cu_units, int num_units) -> (Tensor, Tensor, Tensor)");
  // Test-only: the plan the kernels run for given host sizes, built where cu_units lives (the
  // device build on CUDA and on the SIMT backend), with the wrong-metadata flag.
  m.def(
      "_relational_loss_plan_with_sizes(Tensor cu_units, int num_units, int[] plan_sizes) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) {
  m.impl("_relational_loss_plan", &relational_loss_plan_op);
  m.impl("_relational_loss_plan_with_sizes",
         MTA_CPU_KERNEL(relational_loss_plan_with_sizes_cpu, relational_loss_plan_with_sizes_cuda));
}

#ifdef MTA_WITH_CUDA
TORCH_LIBRARY_IMPL(mta_ext, CUDA, m) {
  m.impl("_relational_loss_plan_with_sizes", &relational_loss_plan_with_sizes_cuda);
}
#endif

}  // namespace mta_ext::plan
