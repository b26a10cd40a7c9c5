// The edge of the square tiles the CUDA kernels work in (csrc/common/simt_tile.cuh: token_salience
// and the relational_loss Grams) and the relational_loss plan counts (ops/relational_loss_plan.h,
// which host and device share): one number for both, so the plan's sizes always match the
// kernels' launches.
#pragma once

namespace mta_ext {

constexpr int kTileEdge = 64;

}  // namespace mta_ext
