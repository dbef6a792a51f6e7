#include "cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
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
      generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return size_; }

  void run(int64_t n, int64_t grain, TaskFn fn, void* ctx, int width) {
    if (t_inside_task || size_ == 1 || width <= 1 || n <= grain) {
      run_inline(n, fn, ctx);
      return;
    }
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) {
      run_inline(n, fn, ctx);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = fn; ctx_ = ctx; n_ = n; grain_ = grain; width_ = width;
      error_ = nullptr;
      next_.store(0, std::memory_order_relaxed);
      accepting_ = true;
      generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    cv_.notify_all();
    drain(0);
    {  // every chunk is taken: close the job to workers that have not joined yet ...
      std::lock_guard<std::mutex> lk(m_);
      accepting_ = false;
    }
    // ... and wait for those that did (they are running, so not for long)
    spin_until([this] { return in_flight_.load(std::memory_order_acquire) == 0; });
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return in_flight_.load(std::memory_order_acquire) == 0; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  struct InsideTask {  // marks the thread as running a task; restored on any exit
    bool was = t_inside_task;
    InsideTask() { t_inside_task = true; }
    ~InsideTask() { t_inside_task = was; }
  };
  static void run_inline(int64_t n, TaskFn fn, void* ctx) {
    InsideTask mark;
    if (n > 0) fn(ctx, 0, n, 0);
  }
  void drain(int tid) {
    if (tid >= width_) return;
    InsideTask mark;
    for (;;) {
      int64_t b = next_.fetch_add(grain_, std::memory_order_relaxed);
      if (b >= n_) break;
      try {
        fn_(ctx_, b, std::min(n_, b + grain_), tid);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_, std::memory_order_relaxed);  // skip the rest
        break;
      }
    }
  }
  // Waiting threads spin for a short while before they sleep: kernels come in quick succession
  // (a model's layers), and waking a sleeping thread (a futex and the scheduler; in a VM, a halted
  // virtual CPU) costs tens to hundreds of microseconds, as long as a small kernel itself. 200 us:
  // with 50, a 1-row linear of 0.17 ms ran at one thread's speed in a third of the benchmark's
  // repeats (the worker asleep when the next call came), 0.48-0.57x PyTorch instead of 1.0x.
  template <class Ready>
  static bool spin_until(Ready ready) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    for (int i = 0;; ++i) {
      if (ready()) return true;
      __builtin_ia32_pause();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
    }
  }
  void work_loop(int tid) {
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        if (stop_) return;
        if (!accepting_) continue;  // woke up after the caller finished alone: nothing to join
        in_flight_.fetch_add(1, std::memory_order_relaxed);
      }
      drain(tid);
      if (in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m_);  // the caller may be asleep on done_cv_
        done_cv_.notify_one();
      }
    }
  }

  static constexpr int kSpinMicros = 200;
  int size_;
  std::vector<std::thread> workers_;
  std::mutex busy_;  // one parallel_for at a time; others run inline
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  bool accepting_ = false;         // the current job still takes workers (under m_)
  std::atomic<int> in_flight_{0};  // workers that joined the current job and have not left it
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  int width_ = 1;
  std::exception_ptr error_;
  std::atomic<int64_t> next_{0};
};

std::mutex g_pool_mutex;
std::shared_ptr<Pool> g_pool;

// After fork() the child has the parent's pool object but none of its threads: forget it (leak
// it: its destructor would join threads that do not exist) and start a fresh one on first use.
void forget_pool_in_child() {
  new (&g_pool_mutex) std::mutex();
  auto* leaked = new std::shared_ptr<Pool>();
  leaked->swap(g_pool);
}

std::shared_ptr<Pool> pool() {
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
  (void)registered;
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

void parallel_for(int64_t n, int64_t grain, TaskFn fn, void* ctx, int width) {
  pool()->run(n, std::max<int64_t>(1, grain), fn, ctx, width);  // the shared_ptr keeps the pool alive
}

int num_threads() { return pool()->size(); }

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw ValueError("set_num_threads: n must be in [1, 1024], got " + std::to_string(n));
  auto fresh = std::make_shared<Pool>(n);
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  g_pool = fresh;  // the old pool is joined when its last running call returns
}

}}  // namespace attnkit::cpu
