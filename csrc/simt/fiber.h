// Cooperative fibers for the SIMT backend: a stack per emulated GPU thread and a context switch
// that saves only what the ABI makes callee-saved (x86-64: rbx, rbp, r12-r15, the stack
// pointer, MXCSR and the x87 control word; ~10 ns, no system call). Other architectures use
// ucontext (correct, slower: it saves the signal mask with a system call per switch).
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace mta_ext::simt_rt {

// A fiber's stack: mmap'd with a guard page below it, so an overflow faults instead of
// corrupting the neighbouring stack.
class Stack {
 public:
  explicit Stack(size_t bytes);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* bottom() const { return base_ + guard_; }  // lowest usable address
  size_t size() const { return size_; }
  char* top() const { return base_ + guard_ + size_; }

 private:
  char* base_ = nullptr;
  size_t guard_ = 0, size_ = 0;
};

// A saved execution context. `start` prepares a context that calls entry(arg) on `stack` when
// first switched to; entry must never return (it switches away for the last time instead).
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  void start(Stack& stack, void (*entry)(void*), void* arg);
};

// Saves the running context into `from` and resumes `to`.
void switch_context(Context& from, Context& to);

}  // namespace mta_ext::simt_rt
