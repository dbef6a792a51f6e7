// A persistent pool of worker threads (ours, no OpenMP) with a dynamic parallel_for.
#pragma once
#include <cstdint>

namespace attnkit { namespace cpu {

// fn(ctx, begin, end, tid) runs a chunk [begin, end) of n items on worker tid in [0, width):
// `width` is the number of per-thread workspaces the caller sized (normally num_threads(), read
// before; a pool resized meanwhile by another thread never hands out a tid >= width).
// Chunks of `grain` items are handed out dynamically; the caller's thread works too.
// A call made while the pool serves another caller (another Python thread) or from inside a
// task runs on the calling thread alone, with tid 0: workspaces indexed by tid must belong to
// the call, not be shared between calls. Tasks should not throw; if one does, the other chunks
// still finish (or are skipped) and the first exception is rethrown to the caller after the join.
using TaskFn = void (*)(void* ctx, int64_t begin, int64_t end, int tid);
void parallel_for(int64_t n, int64_t grain, TaskFn fn, void* ctx, int width);

int num_threads();          // the pool's size (workers + the caller)
void set_num_threads(int n);
int default_num_threads();  // ATTNKIT_NUM_THREADS, else the CPUs this process may use

}}  // namespace attnkit::cpu
