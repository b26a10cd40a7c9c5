// The SIMT backend's scheduler: launches, barriers, warp collectives and their checks
// (cuda_shim.h describes the execution model).
//
// Per block, the fibers run in turn, each until it blocks (barrier, warp collective, end):
// thread 0 first by default, or in a seeded random order per round in the shuffled mode, so a
// missing __syncthreads or a read-before-write race between threads changes what the other
// threads see. When no fiber can run: complete every warp collective whose lanes have all
// arrived (all lanes at once, so no lane can overwrite its value before another lane read it);
// else release the block barrier if every thread is at it (one that has exited instead is an
// error: a barrier in divergent code); else the block is stuck, which is an error naming what
// each thread waits for. Errors the GPU would leave undefined are
// errors here too: a collective whose mask names a lane that has exited or that is at another
// collective, a shuffle source outside the mask, a launch with an empty or oversized grid.
#include "simt/runtime.h"

#include "simt/cuda_shim.h"
#include "simt/fiber.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define MTA_SIMT_ASAN 1
#endif

namespace mta_ext::simt_rt {

thread_local Fiber* t_fiber = nullptr;
thread_local uint3 t_block_idx;
thread_local dim3 t_block_dim;
thread_local dim3 t_grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;  // kernel frames are small; ASan makes them larger
constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;

std::atomic<bool> g_active{false};
std::atomic<int64_t> g_shuffle_seed{-1};
std::atomic<int> g_sm{90};
std::atomic<int64_t> g_launches{0}, g_blocks{0}, g_barriers{0}, g_collectives{0};
// Launches since the backend was last switched on: with the seed, it keys the shuffled order of
// every block, so a test (which switches the backend on once) replays from its seed alone.
std::atomic<int64_t> g_launch_index{0};

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kExited, kTrapped };

const char* coll_name(Coll c) {
  switch (c) {
    case Coll::kSyncWarp:
      return "__syncwarp";
    case Coll::kShflIdx:
      return "__shfl_sync";
    case Coll::kShflXor:
      return "__shfl_xor_sync";
    case Coll::kShflDown:
      return "__shfl_down_sync";
    case Coll::kShflUp:
      return "__shfl_up_sync";
    case Coll::kBallot:
      return "__ballot_sync";
    case Coll::kAny:
      return "__any_sync";
    case Coll::kAll:
      return "__all_sync";
  }
  return "?";
}

}  // namespace

struct Fiber {
  Context ctx;
  std::unique_ptr<Stack> stack;
  uint3 tid;
  State state = State::kExited;
  // The pending warp collective.
  Coll kind = Coll::kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = kWarp;
  const char* why = nullptr;  // __trap / misuse message
};

namespace {

// One host thread's block runner: its fibers (reused across blocks) and its own context.
struct Runner {
  Context self;
  std::vector<std::unique_ptr<Fiber>> fibers;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  int n = 0;  // threads of the current block
#ifdef MTA_SIMT_ASAN
  const void* self_bottom = nullptr;
  size_t self_size = 0;
#endif
};
thread_local Runner* t_runner = nullptr;

// Runner -> fiber and back, with the AddressSanitizer fiber annotations.
void resume(Runner& r, Fiber& f) {
  t_fiber = &f;
#ifdef MTA_SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack->bottom(), f.stack->size());
  switch_context(r.self, f.ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  switch_context(r.self, f.ctx);
#endif
  t_fiber = nullptr;
}

void yield_to_runner(bool dying = false) {
  Fiber& f = *t_fiber;
  Runner& r = *t_runner;
#ifdef MTA_SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, r.self_bottom, r.self_size);
  switch_context(f.ctx, r.self);
  __sanitizer_finish_switch_fiber(fake, &r.self_bottom, &r.self_size);
#else
  (void)dying;
  switch_context(f.ctx, r.self);
#endif
}

void fiber_entry(void* arg) {
  auto* f = static_cast<Fiber*>(arg);
#ifdef MTA_SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &t_runner->self_bottom, &t_runner->self_size);
#endif
  t_runner->body(t_runner->body_ctx);
  f->state = State::kExited;
  yield_to_runner(/*dying=*/true);
  __builtin_trap();  // an exited fiber is never resumed
}

Fiber& current(const char* what) {
  TORCH_CHECK(t_fiber != nullptr, "simt: ", what, " called outside a kernel");
  return *t_fiber;
}

std::string describe(const Runner& r) {
  std::ostringstream os;
  int shown = 0;
  for (int i = 0; i < r.n && shown < 8; ++i) {
    const Fiber& f = *r.fibers[i];
    if (f.state == State::kExited) continue;
    os << "\n  thread " << i << " (warp " << i / kWarp << ", lane " << i % kWarp << "): ";
    if (f.state == State::kBarrier)
      os << "__syncthreads";
    else if (f.state == State::kWarp)
      os << coll_name(f.kind) << " mask 0x" << std::hex << f.mask << std::dec;
    else
      os << "running";
    ++shown;
  }
  return os.str();
}

std::string where() {
  std::ostringstream os;
  os << "block (" << t_block_idx.x << ", " << t_block_idx.y << ", " << t_block_idx.z << ")";
  return os.str();
}

// Completes the collective of the lanes `group` (a bit set of lanes of warp w, all waiting at
// the same kind and mask).
void complete(Runner& r, int w, unsigned group) {
  const int base = w * kWarp;
  const Fiber& first = *r.fibers[base + __builtin_ctz(group)];
  const Coll kind = first.kind;
  uint64_t vote = 0;
  int any = 0, all = 1;
  for (int l = 0; l < kWarp; ++l)
    if (group >> l & 1u) {
      const bool p = r.fibers[base + l]->value != 0;
      vote |= uint64_t(p) << l;
      any |= p;
      all &= p;
    }
  for (int l = 0; l < kWarp; ++l) {
    if (!(group >> l & 1u)) continue;
    Fiber& f = *r.fibers[base + l];
    const int wd = f.width;
    const int seg = l & ~(wd - 1);
    int src = l;
    switch (kind) {
      case Coll::kSyncWarp:
        break;
      case Coll::kShflIdx:
        src = seg + (f.arg & (wd - 1));
        break;
      case Coll::kShflXor:
        src = l ^ f.arg;
        break;
      case Coll::kShflDown:
        src = l + f.arg;
        break;
      case Coll::kShflUp:
        src = l - f.arg;
        break;
      default:
        break;
    }
    // A source outside the lane's segment of `width` lanes yields the lane's own value.
    if (src < seg || src >= seg + wd) src = l;
    if (kind == Coll::kBallot) {
      f.result = vote;
    } else if (kind == Coll::kAny) {
      f.result = uint64_t(any);
    } else if (kind == Coll::kAll) {
      f.result = uint64_t(all);
    } else if (kind != Coll::kSyncWarp) {
      TORCH_CHECK(group >> src & 1u, "simt: ", coll_name(kind), " in ", where(), ": lane ", l,
                  " of warp ", w, " reads lane ", src, ", which is not in the mask 0x", std::hex,
                  f.mask);
      f.result = r.fibers[base + src]->value;
    }
    f.state = State::kRunnable;
  }
  g_collectives.fetch_add(1, std::memory_order_relaxed);
}

// Completes every warp collective whose lanes have all arrived; true if any did.
bool release_warps(Runner& r) {
  bool any = false;
  const int warps = (r.n + kWarp - 1) / kWarp;
  for (int w = 0; w < warps; ++w) {
    const int base = w * kWarp, lanes = std::min(kWarp, r.n - base);
    const unsigned exist = lanes == kWarp ? 0xffffffffu : ((1u << lanes) - 1u);
    unsigned done = 0;
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = *r.fibers[base + l];
      if (f.state != State::kWarp || (done >> l & 1u)) continue;
      TORCH_CHECK(f.mask >> l & 1u, "simt: ", coll_name(f.kind), " in ", where(), ": lane ", l,
                  " of warp ", w, " is not in its own mask 0x", std::hex, f.mask);
      const unsigned group = f.mask & exist;
      bool ready = true;
      for (int m = 0; m < lanes; ++m) {
        if (!(group >> m & 1u)) continue;
        const Fiber& g = *r.fibers[base + m];
        TORCH_CHECK(g.state != State::kExited, "simt: ", coll_name(f.kind), " in ", where(),
                    ": the mask 0x", std::hex, f.mask, std::dec, " names lane ", m, " of warp ", w,
                    ", which has exited");
        if (g.state != State::kWarp) {
          ready = false;
          continue;
        }
        TORCH_CHECK(g.kind == f.kind && g.mask == f.mask, "simt: warp ", w, " in ", where(),
                    ": lane ", l, " waits at ", coll_name(f.kind), " mask 0x", std::hex, f.mask,
                    " but lane ", std::dec, m, " at ", coll_name(g.kind), " mask 0x", std::hex,
                    g.mask);
      }
      done |= group;
      if (!ready) continue;
      complete(r, w, group);
      any = true;
    }
  }
  return any;
}

// Releases the block barrier when every thread waits at it. A barrier that some threads of the
// block never reach because they have exited is an error: __syncthreads in divergent code is
// undefined on a GPU (it may hang, or release early).
bool release_barrier(Runner& r) {
  int waiting = 0, exited = 0;
  for (int i = 0; i < r.n; ++i) {
    const State s = r.fibers[i]->state;
    if (s == State::kBarrier)
      ++waiting;
    else if (s == State::kExited)
      ++exited;
    else
      return false;
  }
  if (waiting == 0) return false;
  TORCH_CHECK(exited == 0, "simt: __syncthreads in ", where(), " reached by ", waiting,
              " threads while ", exited, " threads of the block have exited (a barrier in ",
              "divergent code is undefined on a GPU)");
  for (int i = 0; i < r.n; ++i) r.fibers[i]->state = State::kRunnable;
  g_barriers.fetch_add(1, std::memory_order_relaxed);
  return true;
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void run_block(Runner& r, const uint3& bid, const dim3& block, int64_t shuffle_seed,
               uint64_t block_key) {
  t_block_idx = bid;
  r.n = int(block.x * block.y * block.z);
  while (int(r.fibers.size()) < r.n) {
    auto f = std::make_unique<Fiber>();
    f->stack = std::make_unique<Stack>(kStackBytes);
    r.fibers.push_back(std::move(f));
  }
  for (int i = 0; i < r.n; ++i) {
    Fiber& f = *r.fibers[i];
    f.tid = {unsigned(i) % block.x, unsigned(i) / block.x % block.y,
             unsigned(i) / (block.x * block.y)};
    f.state = State::kRunnable;
    f.why = nullptr;
    f.ctx.start(*f.stack, &fiber_entry, &f);
  }
  std::vector<int> order(r.n);
  for (int i = 0; i < r.n; ++i) order[i] = i;
  std::mt19937_64 rng(shuffle_seed >= 0 ? mix(uint64_t(shuffle_seed) ^ mix(block_key)) : 0);
  for (;;) {
    if (shuffle_seed >= 0) std::shuffle(order.begin(), order.end(), rng);
    int live = 0;
    for (const int i : order) {
      Fiber& f = *r.fibers[i];
      if (f.state == State::kRunnable) resume(r, f);
      TORCH_CHECK(f.state != State::kTrapped, "simt: thread ", i, " of ", where(), ": ", f.why);
      live += f.state != State::kExited;
    }
    if (live == 0) return;
    if (release_warps(r) || release_barrier(r)) continue;
    TORCH_CHECK(false, "simt: ", where(), " cannot make progress (threads wait at different ",
                "barriers or collectives):", describe(r));
  }
}

}  // namespace

const uint3& thread_idx() { return current("threadIdx").tid; }

int sm_major() { return g_sm.load(std::memory_order_relaxed) / 10; }

void syncthreads() {
  Fiber& f = current("__syncthreads");
  f.state = State::kBarrier;
  yield_to_runner();
}

uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int arg, int width) {
  Fiber& f = current(coll_name(kind));
  if (width <= 0 || width > kWarp || (width & (width - 1)) != 0) {
    f.why = "a warp collective's width must be a power of two <= 32";
    f.state = State::kTrapped;
    yield_to_runner();
  }
  f.kind = kind;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.state = State::kWarp;
  yield_to_runner();
  return f.result;
}

void trap(const char* why) {
  Fiber& f = current("__trap");
  f.why = why;
  f.state = State::kTrapped;
  yield_to_runner();
  __builtin_trap();  // a trapped fiber is never resumed
}

void launch(dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1, "simt: invalid launch: grid (", grid.x,
              ", ", grid.y, ", ", grid.z, ") has no block (CUDA fails such a launch)");
  TORCH_CHECK(grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535,
              "simt: invalid launch: grid (", grid.x, ", ", grid.y, ", ", grid.z,
              ") exceeds CUDA's limits");
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads && block.z <= 64,
              "simt: invalid launch: block (", block.x, ", ", block.y, ", ", block.z,
              ") must have 1 to 1024 threads (z <= 64)");
  g_launches.fetch_add(1, std::memory_order_relaxed);
  const int64_t launch_no = g_launch_index.fetch_add(1, std::memory_order_relaxed);
  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  g_blocks.fetch_add(nblocks, std::memory_order_relaxed);
  const int64_t seed = g_shuffle_seed.load(std::memory_order_relaxed);
  // Blocks in parallel only for large grids: a handoff to the OpenMP pool costs more than a
  // few small blocks (and the test machines have 2 cores).
  at::parallel_for(0, nblocks, 64, [&](int64_t b0, int64_t b1) {
    TORCH_CHECK(t_fiber == nullptr, "simt: a kernel launched a kernel (not supported)");
    thread_local Runner runner;
    Runner* const saved = t_runner;
    t_runner = &runner;
    runner.body = body;
    runner.body_ctx = ctx;
    t_grid_dim = grid;
    t_block_dim = block;
    try {
      for (int64_t b = b0; b < b1; ++b) {
        const uint3 bid{unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                        unsigned(b / (int64_t(grid.x) * grid.y))};
        run_block(runner, bid, block, seed, mix(uint64_t(launch_no)) ^ uint64_t(b));
      }
    } catch (...) {
      t_runner = saved;
      throw;
    }
    t_runner = saved;
  });
}

// ---------------------------------------------------------------- configuration

bool active() { return g_active.load(std::memory_order_relaxed); }

void configure(bool on, int64_t shuffle_seed, int64_t sm) {
  TORCH_CHECK_VALUE(sm >= 50 && sm <= 120, "simt: sm must be a compute capability such as 70, ",
                    "80 or 90, got ", sm);
  g_shuffle_seed.store(shuffle_seed < 0 ? -1 : shuffle_seed);
  g_sm.store(int(sm));
  g_launch_index.store(0);
  g_active.store(on);
}

std::vector<int64_t> stats() {
  return {g_launches.load(), g_blocks.load(), g_barriers.load(), g_collectives.load()};
}

void reset_stats() {
  g_launches.store(0);
  g_blocks.store(0);
  g_barriers.store(0);
  g_collectives.store(0);
}

}  // namespace mta_ext::simt_rt
