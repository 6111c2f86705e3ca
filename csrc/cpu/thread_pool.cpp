// The pool behind taro::cpu::parallel_for (thread_pool.h).
//
// Why not OpenMP: libgomp's threads spin at barriers and after each parallel region
// (GOMP_SPINCOUNT), which on a shared 2-core machine turns a 1 ms step into 12 ms as soon
// as another process holds a core. Here a worker sleeps on a condition variable between
// jobs; the caller wakes the workers and starts on the items at once, and waits only for
// items that another thread has claimed and not finished: for up to kCallerSpin by polling
// (an item is tens of microseconds, and this VM takes 3-30 us to wake a sleeping thread, so
// sleeping there cost a B=8 step 43 us on average), then on a condition variable. Idle
// workers never spin.
#include "thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace taro {
namespace cpu {
namespace {

// The caller's bound on polling for the items other threads still run (see the top).
constexpr std::chrono::microseconds kCallerSpin{50};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Job {
  void (*body)(void*, int64_t) = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  std::atomic<int64_t> next{0};  // next unclaimed item
  std::atomic<int64_t> done{0};  // items finished
  std::atomic<int> seats{0};     // workers that may still join
  std::mutex m;                  // the last item's notify takes it: no lost wake-up
  std::condition_variable finished;

  bool all_done() const { return done.load(std::memory_order_acquire) == n; }
};

// Claims and runs items until none is left. The body and ctx are touched only for a
// claimed item, which the caller waits for, so a worker that arrives after the caller
// returned finds `next >= n` and never touches the caller's (gone) context.
void work(Job& job) {
  for (int64_t i = job.next.fetch_add(1, std::memory_order_relaxed); i < job.n;
       i = job.next.fetch_add(1, std::memory_order_relaxed)) {
    job.body(job.ctx, i);
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.n) {
      std::lock_guard<std::mutex> lock(job.m);
      job.finished.notify_one();
    }
  }
}

class Pool {
 public:
  void run(int64_t n, int threads, void (*body)(void*, int64_t), void* ctx) {
    std::unique_lock<std::mutex> busy(submit_, std::try_to_lock);
    if (!busy.owns_lock()) {  // another caller's job is running: do not wait for it
      for (int64_t i = 0; i < n; ++i) body(ctx, i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->body = body;
    job->ctx = ctx;
    job->n = n;
    const int helpers = static_cast<int>(std::min<int64_t>(threads, n)) - 1;
    job->seats.store(helpers, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(m_);
      while (static_cast<int>(workers_.size()) < helpers) workers_.emplace_back([this] { worker_loop(); });
      job_ = job;
      ++generation_;
    }
    wake_.notify_all();
    work(*job);
    const auto spin_until = std::chrono::steady_clock::now() + kCallerSpin;
    while (!job->all_done() && std::chrono::steady_clock::now() < spin_until) cpu_relax();
    if (!job->all_done()) {
      std::unique_lock<std::mutex> lock(job->m);
      job->finished.wait(lock, [&] { return job->all_done(); });
    }
    std::lock_guard<std::mutex> lock(m_);
    job_.reset();
  }

 private:
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      if (job && job->seats.fetch_sub(1, std::memory_order_relaxed) > 0) work(*job);
    }
  }

  std::mutex submit_;  // one job at a time
  std::mutex m_;       // guards workers_, job_, generation_
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
};

// The pool is created on first use and never destroyed: its workers sleep until the process
// exits (joining them from a static destructor could run after their state is gone). A
// forked child has none of the parent's threads, so it starts a fresh pool.
std::mutex g_pool_mutex;
Pool* g_pool = nullptr;

void forget_pool_in_child() {
  new (&g_pool_mutex) std::mutex();  // the parent's lock state is meaningless here
  g_pool = nullptr;                  // the old pool's workers do not exist in the child
}

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr) {
    static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
    (void)registered;
    g_pool = new Pool();
  }
  return *g_pool;
}

}  // namespace

void parallel_for(int64_t n, int threads, void (*body)(void*, int64_t), void* ctx) {
  if (n <= 0) return;
  if (threads <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) body(ctx, i);
    return;
  }
  pool().run(n, threads, body, ctx);
}

}  // namespace cpu
}  // namespace taro
