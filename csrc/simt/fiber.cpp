// Fiber stacks and context switches for the SIMT backend (see fiber.h).
#include "simt/fiber.h"

#include <c10/util/Exception.h>

#include <sys/mman.h>
#include <unistd.h>

namespace mta_ext::simt_rt {

Stack::Stack(size_t bytes) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  guard_ = page;
  size_ = (bytes + page - 1) / page * page;
  void* p =
      mmap(nullptr, guard_ + size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "simt: cannot allocate a fiber stack of ", size_, " bytes");
  base_ = static_cast<char*>(p);
  TORCH_CHECK(mprotect(base_, guard_, PROT_NONE) == 0, "simt: cannot protect a stack guard page");
}

Stack::~Stack() {
  if (base_ != nullptr) munmap(base_, guard_ + size_);
}

#if defined(__x86_64__)

// mta_simt_switch(void** save_sp [rdi], void* load_sp [rsi]): push the callee-saved registers
// and the floating-point control words, store rsp, load the other rsp, pop the same.
// mta_simt_trampoline: the first "return address" of a new context; r12 = entry, r13 = arg.
asm(R"(
  .text
  .p2align 4
  .globl mta_simt_switch
  .hidden mta_simt_switch
  .type mta_simt_switch, @function
mta_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mta_simt_switch, .-mta_simt_switch

  .p2align 4
  .globl mta_simt_trampoline
  .hidden mta_simt_trampoline
  .type mta_simt_trampoline, @function
mta_simt_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size mta_simt_trampoline, .-mta_simt_trampoline
)");

extern "C" void mta_simt_switch(void** save_sp, void* load_sp);
extern "C" void mta_simt_trampoline();

void Context::start(Stack& stack, void (*entry)(void*), void* arg) {
  // Frame popped by the first switch into this context, from the lowest address: MXCSR + x87
  // control word, r15, r14, r13 (arg), r12 (entry), rbx, rbp, the return address. The stack
  // top is 16-byte aligned and the frame is 64 bytes, so the trampoline runs with rsp % 16 == 0
  // and its call enters `entry` with the ABI's alignment.
  auto top = reinterpret_cast<uintptr_t>(stack.top()) & ~uintptr_t(15);
  auto* f = reinterpret_cast<uint64_t*>(top - 64);
  uint32_t csr = 0;
  uint16_t fcw = 0;
  asm volatile("stmxcsr %0" : "=m"(csr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  f[0] = uint64_t(csr) | (uint64_t(fcw) << 32);
  f[1] = 0;                                  // r15
  f[2] = 0;                                  // r14
  f[3] = reinterpret_cast<uint64_t>(arg);    // r13
  f[4] = reinterpret_cast<uint64_t>(entry);  // r12
  f[5] = 0;                                  // rbx
  f[6] = 0;                                  // rbp
  f[7] = reinterpret_cast<uint64_t>(&mta_simt_trampoline);
  sp = f;
}

void switch_context(Context& from, Context& to) { mta_simt_switch(&from.sp, to.sp); }

#else

void Context::start(Stack& stack, void (*entry)(void*), void* arg) {
  TORCH_CHECK(getcontext(&uc) == 0, "simt: getcontext failed");
  uc.uc_stack.ss_sp = stack.bottom();
  uc.uc_stack.ss_size = stack.size();
  uc.uc_link = nullptr;
  // makecontext passes ints; split the two pointers into 32-bit halves.
  const auto e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&uc,
              reinterpret_cast<void (*)()>(+[](unsigned e0, unsigned e1, unsigned a0, unsigned a1) {
                reinterpret_cast<void (*)(void*)>((uintptr_t(e1) << 32) | e0)(
                    reinterpret_cast<void*>((uintptr_t(a1) << 32) | a0));
              }),
              4, unsigned(e), unsigned(e >> 32), unsigned(a), unsigned(a >> 32));
}

void switch_context(Context& from, Context& to) {
  TORCH_CHECK(swapcontext(&from.uc, &to.uc) == 0, "simt: swapcontext failed");
}

#endif

}  // namespace mta_ext::simt_rt
