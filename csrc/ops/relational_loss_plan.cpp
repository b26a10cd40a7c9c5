// The host side of the relational_loss tile plan (relational_loss_plan.h), compiled in every
// build, and the test-only op that exposes it.
#include "ops/relational_loss_plan.h"

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
  fill_plan(c, B, num_units, s, tiles.mutable_data_ptr<int64_t>(), rows.mutable_data_ptr<int64_t>());
  return {tiles, rows, at::tensor({s.tiles, s.rows, s.e, s.rad}, opts)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mta_ext, m) {
  m.def("_relational_loss_plan(Tensor cu_units, int num_units) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mta_ext, CPU, m) { m.impl("_relational_loss_plan", &relational_loss_plan_op); }

}  // namespace mta_ext::plan
