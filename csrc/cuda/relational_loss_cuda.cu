// relational_loss (DSA): the CUDA host side (launches), forward and backward. Split by role:
// cuda/relational_loss_tiles.cuh (norms, Gram tiles), cuda/relational_loss_rows.cuh (reductions,
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
//   norms:    1 / max(|u_k|, 1e-12) per unit and side (a warp per row), so rows are normalised
//             once and c_ij = (u_i . u_j) r_i r_j.
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

#include "common/debug.h"
#include "common/no_autocast.h"
#include "common/checks.h"
#include "common/cuda_utils.cuh"
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
  int64_t ntiles = 0, nrows = 0, e_size = 0, rad_size = 0;
};

// Per example: its share of the plan (plan::example_sizes) into counts [4, B] (tiles, rows,
// E elements, radial partials).
__global__ void plan_count_kernel(const int64_t* __restrict__ cu, int64_t B, int64_t N,
                                  int64_t* __restrict__ counts) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  int64_t a = 0, n = 0;
  plan::example_units(cu, b, N, a, n);
  const plan::Sizes s = plan::example_sizes(n);
  counts[b] = s.tiles;
  counts[B + b] = s.rows;
  counts[2 * B + b] = s.e;
  counts[3 * B + b] = s.rad;
}

// Per example: its plan rows at the exclusive prefix sums `offsets` [4, B], within `cap` (the
// host's sizes), with the host's code (plan::write_example).
__global__ void plan_fill_kernel(const int64_t* __restrict__ cu, int64_t B, int64_t N,
                                 const int64_t* __restrict__ offsets, plan::Sizes cap,
                                 int64_t* __restrict__ tiles, int64_t* __restrict__ rows) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  int64_t a = 0, n = 0;
  plan::example_units(cu, b, N, a, n);
  plan::Sizes off;
  off.tiles = offsets[b];
  off.rows = offsets[B + b];
  off.e = offsets[2 * B + b];
  off.rad = offsets[3 * B + b];
  plan::write_example(a, n, off, cap, tiles, rows);
}

// The tile plan of the device cu_units [B + 1] over N units, with the host's sizes: built on the
// device (two small kernels and a scan), no host sync. Rows beyond the host's sizes are dropped
// (wrong metadata gives a wrong loss, never an out-of-bounds write; the debug mode checks it).
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
  pl.tiles = at::empty({pl.ntiles, kPlanCols}, lo);
  pl.rows = at::empty({pl.nrows, kPlanCols}, lo);
  const int64_t B = cu.numel() - 1;
  if (B <= 0 || (pl.ntiles == 0 && pl.nrows == 0)) return pl;
  auto counts = at::empty({4, B}, lo);
  const unsigned blocks = cuda::grid_1d(B, 256, "relational_loss", "examples");
  cuda::launch(plan_count_kernel, blocks, 256, stream, cu.const_data_ptr<int64_t>(), B, N,
                                                counts.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto offsets = (counts.cumsum(1) - counts).contiguous();  // exclusive prefix sums
  cuda::launch(plan_fill_kernel, blocks, 256, stream, 
      cu.const_data_ptr<int64_t>(), B, N, offsets.const_data_ptr<int64_t>(), sizes,
      pl.tiles.mutable_data_ptr<int64_t>(), pl.rows.mutable_data_ptr<int64_t>());
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
  at::Tensor us, ut, w, rs, nrms, rt, nrmt;
  at::Tensor scs, sct;  // per-row power-of-two scales (undefined for fp16: rows unscaled)
  at::Tensor eps;       // [1] double: 1e-5 / c^2, c = max weight (1 if all weights are 0)
  at::ScalarType ct, acc;
};

// Each row of u scaled by 2^-e_i, max|u_i| 2^-e_i in [0.5, 1) (e_i = 0 for zero or non-finite
// rows; e_i >= min_exponent + 25 so that 2^-e_i is finite), and the scales 2^-e_i. Exact (powers
// of two) except for elements ~2^126 below their row's maximum, which underflow; cosines are
// scale invariant, so the Gram and norm kernels then never overflow (|u| > ~1.8e19 in fp32/bf16)
// nor underflow (|u| < ~1e-19). Device ops only: no host sync. fp16 rows are left as they are
// (|u| <= 65504: their squares and products can neither overflow nor underflow in fp32, and
// scaling could push small fp16 elements into subnormals).
std::pair<at::Tensor, at::Tensor> pow2_rows(const at::Tensor& u, at::ScalarType acc) {
  if (u.scalar_type() == at::kHalf || u.size(1) == 0 || u.size(0) == 0) return {u, at::Tensor()};
  const auto amax = u.abs().amax(1).to(acc);
  const auto ok = at::isfinite(amax).logical_and_(amax.gt(0));
  auto e = std::get<1>(at::frexp(at::where(ok, amax, at::ones_like(amax))));
  e = at::where(ok, e, at::zeros_like(e))
          .clamp_min(acc == at::kDouble ? std::numeric_limits<double>::min_exponent + 25
                                        : std::numeric_limits<float>::min_exponent + 25);
  const auto sc = at::ldexp(at::ones_like(amax), e.neg());
  return {(u.to(acc) * sc.unsqueeze(1)).to(u.scalar_type()).contiguous(), sc.contiguous()};
}

Prepared prepare(const at::Tensor& u_student, const at::Tensor& u_teacher,
                 const at::Tensor& unit_weights, cudaStream_t stream) {
  Prepared pr;
  pr.ct = compute_dtype(u_student, u_teacher, unit_weights);
  pr.acc = pr.ct == at::kDouble ? at::kDouble : at::kFloat;
  std::tie(pr.us, pr.scs) = pow2_rows(u_student.detach().to(pr.ct).contiguous(), pr.acc);
  std::tie(pr.ut, pr.sct) = pow2_rows(u_teacher.detach().to(pr.ct).contiguous(), pr.acc);
  // Weights divided by their maximum c, the clamp 1e-5 becoming 1e-5 / c^2 (the loss is
  // otherwise invariant): no W_i W_j overflows (1e30 weights) or underflows. On the device.
  const auto ao = pr.us.options().dtype(pr.acc);
  pr.w = unit_weights.detach().to(pr.acc).contiguous();
  if (pr.w.numel() > 0) {
    auto c = pr.w.amax();
    c = at::where(c.gt(0), c, at::ones_like(c));
    pr.w = pr.w.div(c).contiguous();
    const auto cd = c.to(at::kDouble);
    pr.eps = at::full({1}, kWeightSumEps, ao.dtype(at::kDouble)).div_(cd).div_(cd);
  } else {
    pr.eps = at::full({1}, kWeightSumEps, ao.dtype(at::kDouble));
  }
  const int64_t N = pr.us.size(0);
  pr.rs = at::empty({N}, ao);
  pr.nrms = at::empty({N}, ao);
  pr.rt = at::empty({N}, ao);
  pr.nrmt = at::empty({N}, ao);
  if (N == 0) return pr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_norms", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const unsigned blocks = cuda::grid_1d(N, 8, kFwd, "units");
    cuda::launch(norms_kernel<scalar_t, acc_t>, blocks, 256, stream, 
        pr.us.const_data_ptr<scalar_t>(), N, pr.us.size(1),
        pr.scs.defined() ? pr.scs.const_data_ptr<acc_t>() : nullptr,
        pr.rs.mutable_data_ptr<acc_t>(), pr.nrms.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::launch(norms_kernel<scalar_t, acc_t>, blocks, 256, stream, 
        pr.ut.const_data_ptr<scalar_t>(), N, pr.ut.size(1),
        pr.sct.defined() ? pr.sct.const_data_ptr<acc_t>() : nullptr,
        pr.rt.mutable_data_ptr<acc_t>(), pr.nrmt.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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

template <typename scalar_t, typename acc_t, int kMode>
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
  const scalar_t* us = P.us;
  const scalar_t* ut = P.ut;
  const int64_t Ds = P.Ds, Dt = P.Dt;
  const dim3 grid(unsigned(pl.ntiles));
  if constexpr (is_half16<scalar_t>::value) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      const bool vec = cuda::rows_16b_aligned<scalar_t>(us, Ds) &&
                       cuda::rows_16b_aligned<scalar_t>(ut, Dt);
      if (vec)
        cuda::launch(tile_kernel<scalar_t, acc_t, true, kMode, true>, grid, kThreads, stream, P);
      else
        cuda::launch(tile_kernel<scalar_t, acc_t, true, kMode, false>, grid, kThreads, stream, P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  cuda::launch(tile_kernel<scalar_t, acc_t, false, kMode, false>, grid, kThreads, stream, P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The row-gradient launch. A function template (not code inside the dispatch lambda) so that
// `if constexpr` really discards the tensor-core kernel for every type but bf16.
template <typename scalar_t, typename acc_t>
void launch_grad_rows(const Prepared& pr, const Plan& pl, const at::Tensor& E,
                      const at::Tensor& radS, const at::Tensor& radT, const at::Tensor& kbuf,
                      bool need_student,
                      bool need_teacher, at::Tensor& gs, at::Tensor& gt, int64_t dchunks,
                      cudaStream_t stream) {
  const dim3 grid(unsigned(pl.nrows), unsigned(dchunks), 2);
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const scalar_t* us = pr.us.const_data_ptr<scalar_t>();
  const scalar_t* ut = pr.ut.const_data_ptr<scalar_t>();
  RowParams<scalar_t, acc_t> P;
  P.us = us;
  P.ut = ut;
  P.Ds = Ds;
  P.Dt = Dt;
  P.rs = pr.rs.const_data_ptr<acc_t>();
  P.nrms = pr.nrms.const_data_ptr<acc_t>();
  P.rt = pr.rt.const_data_ptr<acc_t>();
  P.nrmt = pr.nrmt.const_data_ptr<acc_t>();
  P.scs = pr.scs.defined() ? pr.scs.const_data_ptr<acc_t>() : nullptr;
  P.sct = pr.sct.defined() ? pr.sct.const_data_ptr<acc_t>() : nullptr;
  P.rowplan = pl.rows.const_data_ptr<int64_t>();
  P.E = E.const_data_ptr<acc_t>();
  P.radS = radS.const_data_ptr<acc_t>();
  P.radT = radT.const_data_ptr<acc_t>();
  P.kd = kbuf.const_data_ptr<double>();
  P.need_s = need_student;
  P.need_t = need_teacher;
  P.gs = gs.mutable_data_ptr<acc_t>();
  P.gt = gt.mutable_data_ptr<acc_t>();
  auto launch = [&](auto kernel) {
    cuda::launch(kernel, grid, kThreads, stream, P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (cuda::device_major(pr.us.get_device()) >= 8) {
      if (cuda::rows_16b_aligned<scalar_t>(us, Ds) && cuda::rows_16b_aligned<scalar_t>(ut, Dt))
        launch(grad_rows_kernel<scalar_t, acc_t, true, true>);
      else
        launch(grad_rows_kernel<scalar_t, acc_t, true, false>);
      return;
    }
  }
  launch(grad_rows_kernel<scalar_t, acc_t, false, false>);
}

template <typename acc_t>
void launch_finalize(const Prepared& pr, const at::Tensor& cu, const acc_t* partial,
                     int64_t ntiles, const acc_t* grad, acc_t* out, cudaStream_t stream,
                     double* k_out = nullptr) {
  cuda::launch(finalize_kernel<acc_t>, 1, kThreads, stream, 
      partial, ntiles, pr.w.const_data_ptr<acc_t>(), cu.const_data_ptr<int64_t>(), cu.numel() - 1,
      pr.w.size(0), pr.eps.const_data_ptr<double>(), grad, out, k_out);
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
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  if (pr.us.size(0) == 0) return at::zeros({}, pr.us.options().dtype(pr.acc));
  const auto pl = make_plan(cu, pr.us.size(0), sizes, stream);
  auto out = cuda::new_output({}, pr.us.options().dtype(pr.acc));
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, pr.us.options().dtype(pr.acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TileOutputs<acc_t> to;
    to.partial = partial.mutable_data_ptr<acc_t>();
    launch_tiles<scalar_t, acc_t, kLoss>(pr, pl, to, stream);
    launch_finalize<acc_t>(pr, cu, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
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
  const auto& grad = req.grad;
  const bool need_student = req.need_student, need_teacher = req.need_teacher;
  const bool want_loss = req.want_loss, grads_in_acc = req.grads_in_acc;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto pr = prepare(u_student, u_teacher, unit_weights, stream);
  const auto pl = make_plan(cu, pr.us.size(0), sizes, stream);
  const auto ao = pr.us.options().dtype(pr.acc);
  const auto g = grad ? grad->detach().to(pr.acc).reshape({1}).contiguous() : at::ones({1}, ao);
  auto kbuf = at::empty({1}, ao.dtype(at::kDouble));  // k = 4 g / max(Z', eps'), in double
  auto loss = want_loss ? cuda::new_output({}, ao) : at::Tensor();
  auto partial = at::empty({std::max<int64_t>(pl.ntiles, 1)}, ao);
  auto E = at::empty({std::max<int64_t>(pl.e_size, 1)}, ao);
  auto radS = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  auto radT = at::empty({std::max<int64_t>(pl.rad_size, 1)}, ao);
  const auto co = pr.us.options();  // compute dtype ct
  const auto go = co.dtype(pr.acc);  // gradients computed in the accumulation dtype
  auto gs = need_student ? cuda::new_output(pr.us.sizes(), go) : at::zeros(pr.us.sizes(), go);
  auto gt = need_teacher ? cuda::new_output(pr.ut.sizes(), go) : at::zeros(pr.ut.sizes(), go);
  const int64_t Ds = pr.us.size(1), Dt = pr.ut.size(1);
  const int64_t dchunks = ceil_div<int64_t>(std::max(Ds, Dt), kTile);
  TORCH_CHECK(dchunks <= 65535, kBwd, ": hidden width too large for one CUDA launch");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.ct, "relational_loss_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_finalize<acc_t>(pr, cu, nullptr, 0, g.const_data_ptr<acc_t>(), nullptr, stream,
                           kbuf.mutable_data_ptr<double>());
    TileOutputs<acc_t> to;
    to.E = E.mutable_data_ptr<acc_t>();
    to.radS = radS.mutable_data_ptr<acc_t>();
    to.radT = radT.mutable_data_ptr<acc_t>();
    if (want_loss) {
      to.partial = partial.mutable_data_ptr<acc_t>();
      launch_tiles<scalar_t, acc_t, kLossAndGrad>(pr, pl, to, stream);
      launch_finalize<acc_t>(pr, cu, partial.const_data_ptr<acc_t>(), pl.ntiles, nullptr,
                             loss.mutable_data_ptr<acc_t>(), stream);
    } else {
      launch_tiles<scalar_t, acc_t, kGrad>(pr, pl, to, stream);
    }
    if (pl.nrows > 0 && dchunks > 0)
      launch_grad_rows<scalar_t, acc_t>(pr, pl, E, radS, radT, kbuf, need_student, need_teacher, gs,
                                        gt, dchunks, stream);
  });
  if (grads_in_acc) return {loss, gs, gt};
  return {loss, gs.to(u_student.scalar_type()), gt.to(u_teacher.scalar_type())};
}

}  // namespace

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
