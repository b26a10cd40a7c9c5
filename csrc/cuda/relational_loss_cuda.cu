// relational_loss (DSA): the CUDA host side (launches), forward and backward. Split by role:
// cuda/relational_loss_tiles.cuh (row prep, Gram tiles), cuda/relational_loss_rows.cuh (reductions,
// row gradients), ops/relational_loss_plan.{h,cpp} (the tile plan, shared with the host and
// unit-tested in the CPU build), ops/relational_loss.cpp (schema, checks, dispatch). No host
// sync: the plan's sizes are host metadata (plan_sizes, kept by UnitLayout) and the plan itself
// is built on the device from the device cu_units; the upstream gradient scales on the device.
//
// loss = sum_b sum_{i!=j in b} W_i W_j (cS_ij - cT_ij)^2 / max(sum_b sum_{i!=j in b} W_i W_j, 1e-5)
//
// Work is cut into 64x64 tiles of each example's N_b x N_b Gram matrices; only the upper
// triangle (ti <= tj) is visited and off-diagonal tiles count twice. All tiles of all examples
// go into ONE launch (grid over a device-built tile list), so many small examples cost one launch.
//   prep:     per unit and side (a warp per row, one kernel per side): the row scaled by a power
//             of two (no overflow/underflow in the Gram), r_k = 1 / max(|u_k|, 1e-12), so rows
//             are normalised once and c_ij = (u_i . u_j) r_i r_j; one kernel divides the
//             weights by their maximum.
//   plan:     built on the device from cu_units and the host's sizes (plan_count/plan_fill);
//             sizes that lie turn the loss and gradients into NaN, never an out-of-bounds access.
//   tile fwd: raw Gram tiles of both sides (bf16/fp16: tensor cores via WMMA, fp32 accumulate,
//             the products of 16-bit inputs are exact in fp32; fp32/fp64: CUDA cores in the
//             input precision, no tf32), then the weighted squared difference reduced in the
//             block -> one partial per tile.
//   finalize: one block sums the tile partials and the pair-weight denominator in a fixed order.
// Backward keeps only E = W_i W_j (cS - cT) (zero diagonal; N_b x N_b per example; the scale
// k = 4 g / Z is applied per output row, in double) and
// per-(row, tile) partials of sum_j E_ij c_ij (the radial term of the normalisation backward),
// then a second kernel computes G_i = sum_j E_ij r_j u_j (64 rows x 64 columns per block) and
// g_i = r_i (G_i - u_i r_i sum_j E_ij c_ij). No float atomics anywhere: every value has one
// writer and fixed summation orders, so results are bit-identical across runs.
#include "cuda/relational_loss_cuda.h"

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "common/no_autocast.h"
#include "cuda/relational_loss_rows.cuh"
#include "cuda/relational_loss_tiles.cuh"
#include "ops/relational_loss.h"
#include "ops/relational_loss_plan.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace mta_ext {
namespace {

using namespace relational_cuda;  // the device code (.cuh)
using cuda::ceil_div;

constexpr const char* kFwd = "relational_loss";
constexpr const char* kBwd = "relational_loss_backward";
constexpr const char* kFwdGrad = "relational_loss_and_grad";

// ---------------------------------------------------------------- host side

struct Plan {
  at::Tensor tiles, rows;  // device int64 [*, kPlanCols]
  at::Tensor bad;          // device int32 [1]: 1 when the host's sizes do not describe cu_units
  int64_t ntiles = 0, nrows = 0, e_size = 0, rad_size = 0;
};

// Per example: its share of the plan (plan::example_sizes) into counts [4, B] (tiles, rows,
// E elements, radial partials). Also zero-fills the plan rows (grid-stride: a zero row does
// nothing in either kernel) and the `bad` flag, before plan_fill_kernel writes them.
__global__ void plan_count_kernel(const int64_t* __restrict__ cu, int64_t B, int64_t N,
                                  int64_t* __restrict__ counts, int64_t* __restrict__ plan_rows,
                                  int64_t plan_elems, int* __restrict__ bad) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = tid; i < plan_elems; i += stride) plan_rows[i] = 0;
  if (tid == 0) *bad = 0;
  if (tid >= B) return;
  int64_t a = 0, n = 0;
  plan::example_units(cu, tid, N, a, n);
  const plan::Sizes s = plan::example_sizes(n);
  counts[tid] = s.tiles;
  counts[B + tid] = s.rows;
  counts[2 * B + tid] = s.e;
  counts[3 * B + tid] = s.rad;
}

// Per example: its plan rows at the exclusive prefix sums `offsets` [4, B], with the host's code
// (plan::write_example: the whole example or nothing, within `cap`, the host's sizes). Raises
// `bad` when the metadata lies: an example that does not fit, totals that differ from `cap`,
// or a cu_units that is not 0 = cu[0] <= ... <= cu[B] = N (which the debug mode would reject).
__global__ void plan_fill_kernel(const int64_t* __restrict__ cu, int64_t B, int64_t N,
                                 const int64_t* __restrict__ counts,
                                 const int64_t* __restrict__ offsets, plan::Sizes cap,
                                 int64_t* __restrict__ tiles, int64_t* __restrict__ rows,
                                 int* __restrict__ bad) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b == 0 && (cu[0] != 0 || cu[B] != N)) *bad = 1;
  if (b >= B) return;
  if (cu[b + 1] < cu[b]) *bad = 1;
  int64_t a = 0, n = 0;
  plan::example_units(cu, b, N, a, n);
  plan::Sizes off;
  off.tiles = offsets[b];
  off.rows = offsets[B + b];
  off.e = offsets[2 * B + b];
  off.rad = offsets[3 * B + b];
  if (!plan::write_example(a, n, off, cap, tiles, rows)) *bad = 1;
  if (b == B - 1 && (off.tiles + counts[b] != cap.tiles || off.rows + counts[B + b] != cap.rows ||
                     off.e + counts[2 * B + b] != cap.e || off.rad + counts[3 * B + b] != cap.rad))
    *bad = 1;
}

// The tile plan of the device cu_units [B + 1] over N units, with the host's sizes: built on the
// device (two small kernels and a scan), no host sync. Host sizes that do not describe cu_units
// cannot make a kernel read or write out of bounds (an example is planned whole or not at all)
// and raise `bad`, which turns the loss and the gradients into NaN (the debug mode rejects such
// sizes with an error instead).
Plan make_plan(const at::Tensor& cu, int64_t N, const plan::Sizes& sizes, cudaStream_t stream) {
  Plan pl;
  pl.ntiles = sizes.tiles;
  pl.nrows = sizes.rows;
  pl.e_size = sizes.e;
  pl.rad_size = sizes.rad;
  TORCH_CHECK(pl.ntiles <= std::numeric_limits<int32_t>::max() &&
                  pl.nrows <= std::numeric_limits<int32_t>::max(),
              "relational_loss: too many tiles for one CUDA launch");
  const auto lo = cu.options().dtype(at::kLong);
  // One allocation for both plans: plan_count_kernel zero-fills it in the same launch.
  auto plan_rows = at::empty({pl.ntiles + pl.nrows, kPlanCols}, lo);
  pl.tiles = plan_rows.narrow(0, 0, pl.ntiles);
  pl.rows = plan_rows.narrow(0, pl.ntiles, pl.nrows);
  pl.bad = at::empty({1}, cu.options().dtype(at::kInt));
  const int64_t B = cu.numel() - 1;
  auto counts = at::empty({4, std::max<int64_t>(B, 1)}, lo);
  const unsigned blocks =
      cuda::grid_1d(std::max<int64_t>(B, 1), 256, "relational_loss", "examples");
  cuda::launch(plan_count_kernel, blocks, 256, stream, cu.const_data_ptr<int64_t>(), B, N,
               counts.mutable_data_ptr<int64_t>(), plan_rows.mutable_data_ptr<int64_t>(),
               plan_rows.numel(), pl.bad.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto offsets = (counts.cumsum(1) - counts).contiguous();  // exclusive prefix sums
  cuda::launch(plan_fill_kernel, blocks, 256, stream, cu.const_data_ptr<int64_t>(), B, N,
               counts.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), sizes,
               pl.tiles.mutable_data_ptr<int64_t>(), pl.rows.mutable_data_ptr<int64_t>(),
               pl.bad.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return pl;
}

// Common compute dtype of the two unit tensors (fp64 whenever any float input is fp64).
at::ScalarType compute_dtype(const at::Tensor& us, const at::Tensor& ut, const at::Tensor& w) {
  if (us.scalar_type() == at::kDouble || ut.scalar_type() == at::kDouble ||
      w.scalar_type() == at::kDouble)
    return at::kDouble;
  return at::promote_types(us.scalar_type(), ut.scalar_type());
}

struct Prepared {
  at::Tensor us, ut;              // [N, D] rows in the compute dtype ct, scaled (row_prep_kernel)
  at::Tensor scs, sct;            // [N] their power-of-two scales (undefined for fp16: unscaled)
  at::Tensor rs, nrms, rt, nrmt;  // [N] 1 / clamped norm, clamped norm
  at::Tensor w;                   // [N] weights / their maximum c
  at::Tensor eps;                 // [1] double: 1e-5 / c^2
  at::ScalarType ct, acc;
};

// One side's rows: the scaled copy (fp16: the rows themselves), scales, 1 / norm and norm, in
// one kernel (row_prep_kernel).
template <typename scalar_t, typename acc_t>
void prepare_rows(const at::Tensor& u, at::Tensor& scaled, at::Tensor& sc, at::Tensor& r,
                  at::Tensor& nrm, cudaStream_t stream) {
  const int64_t N = u.size(0), D = u.size(1);
  const auto ao = u.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  r = at::empty({N}, ao);
  nrm = at::empty({N}, ao);
  const unsigned blocks = cuda::grid_1d(N, 8, kFwd, "units");
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    scaled = u;
    cuda::launch(row_prep_kernel<scalar_t, acc_t, RowScale::kMeasureOnly>, blocks, 256, stream,
                 u.const_data_ptr<scalar_t>(), N, D, nullptr, nullptr, r.mutable_data_ptr<acc_t>(),
                 nrm.mutable_data_ptr<acc_t>());
  } else {
    scaled = at::empty_like(u);
    sc = at::empty({N}, ao);
    cuda::launch(row_prep_kernel<scalar_t, acc_t, RowScale::kPowerOfTwo>, blocks, 256, stream,
                 u.const_data_ptr<scalar_t>(), N, D, scaled.mutable_data_ptr<scalar_t>(),
                 sc.mutable_data_ptr<acc_t>(), r.mutable_data_ptr<acc_t>(),
                 nrm.mutable_data_ptr<acc_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Everything the tile and row kernels read, on the device: three kernels (two row_prep, one
// weight_prep) besides the dtype conversions of mixed-precision inputs.
Prepared prepare(const at::Tensor& u_student, const at::Tensor& u_teacher,
                 const at::Tensor& unit_weights, cudaStream_t stream) {
  Prepared pr;
  pr.ct = compute_dtype(u_student, u_teacher, unit_weights);
  pr.acc = pr.ct == at::kDouble ? at::kDouble : at::kFloat;
  const auto us = u_student.detach().to(pr.ct).contiguous();
  const auto ut = u_teacher.detach().to(pr.ct).contiguous();
  const auto w = unit_weights.detach().to(pr.acc).contiguous();
  const int64_t N = us.size(0);
  const auto ao = us.options().dtype(pr.acc);
  pr.w = at::empty({N}, ao);
  pr.eps = at::empty({1}, ao.dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_prepare", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch(weight_prep_kernel<acc_t>, 1, 256, stream, w.const_data_ptr<acc_t>(), N,
                 pr.w.mutable_data_ptr<acc_t>(), pr.eps.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (N == 0) {
      pr.us = us;
      pr.ut = ut;
      return;
    }
    prepare_rows<scalar_t, acc_t>(us, pr.us, pr.scs, pr.rs, pr.nrms, stream);
    prepare_rows<scalar_t, acc_t>(ut, pr.ut, pr.sct, pr.rt, pr.nrmt, stream);
  });
  return pr;
}

// The buffers a tile launch writes (nullptr where its mode does not write them).
template <typename acc_t>
struct TileOutputs {
  acc_t* partial = nullptr;
  acc_t* E = nullptr;
  acc_t* radS = nullptr;
  acc_t* radT = nullptr;
};

template <typename scalar_t, typename acc_t, TileMode kMode>
void launch_tiles(const Prepared& pr, const Plan& pl, const TileOutputs<acc_t>& out,
                  cudaStream_t stream) {
  if (pl.ntiles == 0) return;
  TileParams<scalar_t, acc_t> P;
  P.us = pr.us.const_data_ptr<scalar_t>();
  P.ut = pr.ut.const_data_ptr<scalar_t>();
  P.Ds = pr.us.size(1);
  P.Dt = pr.ut.size(1);
  P.w = pr.w.const_data_ptr<acc_t>();
  P.rs = pr.rs.const_data_ptr<acc_t>();
  P.rt = pr.rt.const_data_ptr<acc_t>();
  P.plan = pl.tiles.const_data_ptr<int64_t>();
  P.partial = out.partial;
  P.E = out.E;
  P.radS = out.radS;
  P.radT = out.radT;
  const dim3 grid(unsigned(pl.ntiles));
  if constexpr (is_half16<scalar_t>::value) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      if (cuda::rows_16b_aligned<scalar_t>(P.us, P.Ds) &&
          cuda::rows_16b_aligned<scalar_t>(P.ut, P.Dt))
        cuda::launch(tile_kernel<scalar_t, acc_t, GramMma::kTensorCores, kMode, RowLoad::kVec16>,
                     grid, kThreads, stream, P);
      else
        cuda::launch(tile_kernel<scalar_t, acc_t, GramMma::kTensorCores, kMode, RowLoad::kScalar>,
                     grid, kThreads, stream, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  cuda::launch(tile_kernel<scalar_t, acc_t, GramMma::kCudaCores, kMode, RowLoad::kScalar>, grid,
               kThreads, stream, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
RowSide<scalar_t, acc_t> row_side(const at::Tensor& u, const at::Tensor& r, const at::Tensor& nrm,
                                  const at::Tensor& sc, const at::Tensor& rad, at::Tensor& g,
                                  bool needed) {
  RowSide<scalar_t, acc_t> s;
  s.u = u.const_data_ptr<scalar_t>();
  s.D = u.size(1);
  s.r = r.const_data_ptr<acc_t>();
  s.nrm = nrm.const_data_ptr<acc_t>();
  s.sc = sc.defined() ? sc.const_data_ptr<acc_t>() : nullptr;
  s.rad = rad.const_data_ptr<acc_t>();
  s.g = g.mutable_data_ptr<acc_t>();
  s.needed = needed;
  return s;
}

// The row-gradient launch. A function template (not code inside the dispatch lambda) so that
// `if constexpr` really discards the tensor-core kernel for every type but bf16.
template <typename scalar_t, typename acc_t>
void launch_grad_rows(const Prepared& pr, const Plan& pl, const at::Tensor& E,
                      const at::Tensor& radS, const at::Tensor& radT, const at::Tensor& grad_scale,
                      bool need_student, bool need_teacher, at::Tensor& gs, at::Tensor& gt,
                      int64_t dchunks, cudaStream_t stream) {
  const dim3 grid(unsigned(pl.nrows), unsigned(dchunks), 2);
  RowParams<scalar_t, acc_t> P;
  P.student = row_side<scalar_t, acc_t>(pr.us, pr.rs, pr.nrms, pr.scs, radS, gs, need_student);
  P.teacher = row_side<scalar_t, acc_t>(pr.ut, pr.rt, pr.nrmt, pr.sct, radT, gt, need_teacher);
  P.rowplan = pl.rows.const_data_ptr<int64_t>();
  P.E = E.const_data_ptr<acc_t>();
  P.grad_scale = grad_scale.const_data_ptr<double>();
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      if (cuda::rows_16b_aligned<scalar_t>(P.student.u, P.student.D) &&
          cuda::rows_16b_aligned<scalar_t>(P.teacher.u, P.teacher.D))
        cuda::launch(grad_rows_kernel<scalar_t, acc_t, GradMma::kTensorCores, RowLoad::kVec16>,
                     grid, kThreads, stream, P);
      else
        cuda::launch(grad_rows_kernel<scalar_t, acc_t, GradMma::kTensorCores, RowLoad::kScalar>,
                     grid, kThreads, stream, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  cuda::launch(grad_rows_kernel<scalar_t, acc_t, GradMma::kCudaCores, RowLoad::kScalar>, grid,
               kThreads, stream, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out = the loss (grad_scale_out == nullptr) or grad_scale_out = k = 4 g / Z (g = grad[0], or 1
// when grad is nullptr); NaN when the plan's metadata was wrong.
template <typename acc_t>
void launch_finalize(const Prepared& pr, const at::Tensor& cu, const Plan& pl, const acc_t* partial,
                     int64_t ntiles, const acc_t* grad, acc_t* out, cudaStream_t stream,
                     double* grad_scale_out = nullptr) {
  cuda::launch(finalize_kernel<acc_t>, 1, kThreads, stream, partial, ntiles,
               pr.w.const_data_ptr<acc_t>(), cu.const_data_ptr<int64_t>(), cu.numel() - 1,
               pr.w.size(0), pr.eps.const_data_ptr<double>(), pl.bad.const_data_ptr<int>(), grad,
               out, grad_scale_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// What one loss_and_grad_impl call computes.
struct Request {
  std::optional<at::Tensor> grad;  // upstream gradient ([1]; none: 1)
  bool need_student = false;
  bool need_teacher = false;
  bool want_loss = false;
  bool grads_in_acc = false;  // keep the gradients in the accumulation dtype
};

}  // namespace

at::Tensor relational_loss_cuda(const at::Tensor& u_student, const at::Tensor& u_teacher,
                                const at::Tensor& unit_weights, const at::Tensor& cu_units,
                                at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu = check_relational_loss_args(kFwd, u_student, u_teacher, unit_weights, cu_units);
  const auto sizes = resolve_plan_sizes(kFwd, cu, u_student.size(0), plan_sizes);
  if (u_student.size(0) == 0) {
    const auto ct = compute_dtype(u_student, u_teacher, unit_weights);
    return at::zeros({}, u_student.options().dtype(ct == at::kDouble ? at::kDouble : at::kFloat));
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  const auto pl = make_plan(cu, pr.us.size(0), sizes, stream);
  auto out = cuda::new_output({}, pr.us.options().dtype(pr.acc));
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, pr.us.options().dtype(pr.acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TileOutputs<acc_t> to;
    to.partial = partial.mutable_data_ptr<acc_t>();
    launch_tiles<scalar_t, acc_t, kLoss>(pr, pl, to, stream);
    launch_finalize<acc_t>(pr, cu, pl, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
                           out.mutable_data_ptr<acc_t>(), stream);
  });
  return out;
}

// Gradients (and, with want_loss, the loss) for an upstream gradient `grad` ([1], acc dtype).
// Returns (loss or undefined, gs, gt) with gs/gt in the input dtypes; a side that is not needed
// comes back as zeros.
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_and_grad_impl(
    const at::Tensor& cu, const plan::Sizes& sizes, const at::Tensor& u_student,
    const at::Tensor& u_teacher, const at::Tensor& unit_weights, const Request& req) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  const auto pl = make_plan(cu, pr.us.size(0), sizes, stream);
  const auto ao = pr.us.options().dtype(pr.acc);
  // The upstream gradient stays on the device (nullptr: 1), folded into k = 4 g / Z.
  const auto g = req.grad ? req.grad->detach().to(pr.acc).reshape({1}).contiguous() : at::Tensor();
  auto grad_scale = at::empty({1}, ao.dtype(at::kDouble));  // k, in double
  auto loss = req.want_loss ? cuda::new_output({}, ao) : at::Tensor();
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, ao);
  auto E = at::empty({std::max<int64_t>(pl.e_size, 1)}, ao);
  auto radS = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  auto radT = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  // Gradients computed in the accumulation dtype; a side that is not needed comes back as zeros.
  auto gs = req.need_student ? cuda::new_output(pr.us.sizes(), ao) : at::zeros(pr.us.sizes(), ao);
  auto gt = req.need_teacher ? cuda::new_output(pr.ut.sizes(), ao) : at::zeros(pr.ut.sizes(), ao);
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const int64_t dchunks = ceil_div<int64_t>(std::max(Ds, Dt), kTile);
  TORCH_CHECK(dchunks <= 65535, kBwd, ": hidden width too large for one CUDA launch");
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, pr.ct, "relational_loss_grad_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        launch_finalize<acc_t>(pr, cu, pl, nullptr, 0,
                               g.defined() ? g.const_data_ptr<acc_t>() : nullptr, nullptr, stream,
                               grad_scale.mutable_data_ptr<double>());
        TileOutputs<acc_t> to;
        to.E = E.mutable_data_ptr<acc_t>();
        to.radS = radS.mutable_data_ptr<acc_t>();
        to.radT = radT.mutable_data_ptr<acc_t>();
        if (req.want_loss) {
          to.partial = partial.mutable_data_ptr<acc_t>();
          launch_tiles<scalar_t, acc_t, kLossAndGrad>(pr, pl, to, stream);
          launch_finalize<acc_t>(pr, cu, pl, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
                                 loss.mutable_data_ptr<acc_t>(), stream);
        } else {
          launch_tiles<scalar_t, acc_t, kGrad>(pr, pl, to, stream);
        }
        if (pl.nrows > 0 && dchunks > 0)
          launch_grad_rows<scalar_t, acc_t>(pr, pl, E, radS, radT, grad_scale, req.need_student,
                                            req.need_teacher, gs, gt, dchunks, stream);
        // Wrong host metadata: units the plan left out have unwritten rows; make every row NaN.
        const int64_t n_elems = gs.numel() + gt.numel();
        if (n_elems > 0) {
          cuda::launch(
              nan_if_bad_kernel<acc_t>,
              cuda::grid_1d(std::min<int64_t>(n_elems, 1 << 16), 256, kBwd, "gradient elements"),
              256, stream, pl.bad.const_data_ptr<int>(), gs.mutable_data_ptr<acc_t>(), gs.numel(),
              gt.mutable_data_ptr<acc_t>(), gt.numel());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  if (req.grads_in_acc) return {loss, gs, gt};
  return {loss, gs.to(u_student.scalar_type()), gt.to(u_teacher.scalar_type())};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_plan_with_sizes_cuda(
    const at::Tensor& cu_units, int64_t num_units, at::IntArrayRef plan_sizes) {
  const char* op = "_relational_loss_plan_with_sizes";
  TORCH_CHECK_VALUE(cu_units.dim() == 1 && cu_units.size(0) >= 1, op, ": cu_units must be [B + 1]");
  const c10::cuda::CUDAGuard guard(cu_units.device());
  const auto cu = cu_units.to(at::kLong).contiguous();
  const auto pl = make_plan(cu, num_units, plan::sizes_from_list(op, plan_sizes),
                            c10::cuda::getCurrentCUDAStream());
  return {pl.tiles, pl.rows, pl.bad};
}

std::tuple<at::Tensor, at::Tensor> relational_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& u_student, const at::Tensor& u_teacher,
    const at::Tensor& unit_weights, const at::Tensor& cu_units, bool need_student,
    bool need_teacher, at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu = check_relational_loss_args(kBwd, u_student, u_teacher, unit_weights, cu_units);
  const auto sizes = resolve_plan_sizes(kBwd, cu, u_student.size(0), plan_sizes);
  check_float(kBwd, "grad", grad);
  TORCH_CHECK_VALUE(grad.numel() == 1, kBwd, ": grad must be a scalar, got shape ", grad.sizes());
  check_same_device(kBwd, "grad", grad, "u_student", u_student);
  if (u_student.size(0) == 0 || !(need_student || need_teacher))
    return {at::zeros_like(u_student, at::MemoryFormat::Contiguous),
            at::zeros_like(u_teacher, at::MemoryFormat::Contiguous)};
  // The upstream gradient stays on the device: finalize_kernel folds it into k = 4 g / Z.
  Request req;
  req.grad = grad;
  req.need_student = need_student;
  req.need_teacher = need_teacher;
  auto res = loss_and_grad_impl(cu, sizes, u_student, u_teacher, unit_weights, req);
  return {std::get<1>(res), std::get<2>(res)};
}

// Loss and the gradients for an upstream gradient of 1 in one pass (the Gram tiles are computed
// once); a gradient that is not requested comes back with shape [0, D] (schema of the CPU op).
std::tuple<at::Tensor, at::Tensor, at::Tensor> relational_loss_and_grad_cuda(
    const at::Tensor& u_student, const at::Tensor& u_teacher, const at::Tensor& unit_weights,
    const at::Tensor& cu_units, bool need_student, bool need_teacher,
    at::OptionalIntArrayRef plan_sizes) {
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(u_student.device());
  const auto cu =
      check_relational_loss_args(kFwdGrad, u_student, u_teacher, unit_weights, cu_units);
  const auto sizes = resolve_plan_sizes(kFwdGrad, cu, u_student.size(0), plan_sizes);
  const int64_t N = u_student.size(0), Ds = u_student.size(1), Dt = u_teacher.size(1);
  // The gradients for g = 1 are returned in the accumulation dtype (as on the CPU): the autograd
  // backward scales them before rounding to the input dtype.
  const auto acc =
      compute_dtype(u_student, u_teacher, unit_weights) == at::kDouble ? at::kDouble : at::kFloat;
  auto empty_s = at::empty({0, Ds}, u_student.options().dtype(acc));
  auto empty_t = at::empty({0, Dt}, u_teacher.options().dtype(acc));
  if (N == 0) return {at::zeros({}, u_student.options().dtype(acc)), empty_s, empty_t};
  Request req;
  req.need_student = need_student;
  req.need_teacher = need_teacher;
  req.want_loss = true;
  req.grads_in_acc = true;
  auto [loss, gs, gt] = loss_and_grad_impl(cu, sizes, u_student, u_teacher, unit_weights, req);
  return {loss, need_student ? gs : empty_s, need_teacher ? gt : empty_t};
}

}  // namespace mta_ext
