// A small thread pool for the CPU kernel: work claiming, sleeping workers, torch-free.
#pragma once

#include <cstdint>

namespace taro {
namespace cpu {

// Runs body(ctx, i) for every i in [0, n) on up to `threads` threads, the calling thread
// included, and returns when every item has run. Items are claimed one at a time from a
// shared counter, so a worker that wakes late (or is descheduled because another process
// holds its core) simply takes fewer items, and the caller never waits for a thread that
// has not claimed one. Idle workers sleep on a condition variable and never spin; the
// caller polls for at most 50 us for items other threads are running, then sleeps too.
// A caller that finds the pool busy with another caller's job runs its items itself.
void parallel_for(int64_t n, int threads, void (*body)(void* ctx, int64_t item), void* ctx);

template <typename F>
void parallel_for(int64_t n, int threads, F& body) {
  parallel_for(n, threads, [](void* ctx, int64_t item) { (*static_cast<F*>(ctx))(item); }, &body);
}

}  // namespace cpu
}  // namespace taro
