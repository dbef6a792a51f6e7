#include "cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "attnkit/tensor.h"

namespace attnkit { namespace cpu {
namespace {

thread_local bool t_inside_task = false;

class Pool {
 public:
  explicit Pool(int n) : size_(std::max(1, n)) {
    for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { work_loop(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return size_; }

  void run(int64_t n, int64_t grain, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || size_ == 1 || t_inside_task || n <= grain) {
      run_inline(n, fn, ctx);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = fn; ctx_ = ctx; n_ = n; grain_ = grain;
      next_.store(0, std::memory_order_relaxed);
      pending_ = size_ - 1;
      ++generation_;
    }
    cv_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
  }

 private:
  static void run_inline(int64_t n, TaskFn fn, void* ctx) {
    bool was = t_inside_task;
    t_inside_task = true;
    if (n > 0) fn(ctx, 0, n, 0);
    t_inside_task = was;
  }
  void drain(int tid) {
    t_inside_task = true;
    for (;;) {
      int64_t b = next_.fetch_add(grain_, std::memory_order_relaxed);
      if (b >= n_) break;
      fn_(ctx_, b, std::min(n_, b + grain_), tid);
    }
    t_inside_task = false;
  }
  void work_loop(int tid) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
      }
      drain(tid);
      {
        std::lock_guard<std::mutex> lk(m_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex busy_;  // one parallel_for at a time; others run inline
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  int pending_ = 0;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
};

std::mutex g_pool_mutex;
std::shared_ptr<Pool> g_pool;

std::shared_ptr<Pool> pool() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  if (!g_pool) g_pool = std::make_shared<Pool>(default_num_threads());
  return g_pool;
}

}  // namespace

int default_num_threads() {
  if (const char* env = std::getenv("ATTNKIT_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v <= 1024) return static_cast<int>(v);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int c = CPU_COUNT(&set);
    if (c > 0) return c;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

void parallel_for(int64_t n, int64_t grain, TaskFn fn, void* ctx) {
  pool()->run(n, std::max<int64_t>(1, grain), fn, ctx);  // the shared_ptr keeps the pool alive
}

int num_threads() { return pool()->size(); }

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw ValueError("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
  auto fresh = std::make_shared<Pool>(n);
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  g_pool = fresh;  // the old pool is joined when its last running call returns
}

}}  // namespace attnkit::cpu
