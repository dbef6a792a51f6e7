// The backend registry (attnkit/backend.h) and small helpers shared by the ops.
#include <atomic>
#include <string>

#include "attnkit/backend.h"
#include "attnkit/runtime.h"
#include "ops/common.h"
#include "attnkit/tensor.h"

namespace attnkit {

namespace {
std::atomic<const Backend*> g_backends[2] = {{nullptr}, {nullptr}};
std::atomic<int64_t> g_layout_copies{0};
}  // namespace

namespace ops {
void count_layout_copy() { g_layout_copies.fetch_add(1, std::memory_order_relaxed); }
}  // namespace ops

int64_t layout_copies() { return g_layout_copies.load(std::memory_order_relaxed); }

void register_backend(Device device, const Backend* backend) {
  g_backends[static_cast<int>(device)].store(backend, std::memory_order_release);
}

const Backend& backend_for(Device device, const char* what) {
  const Backend* be = g_backends[static_cast<int>(device)].load(std::memory_order_acquire);
  if (!be)
    throw TypeError(std::string(what) + ": arrays on " + device_name(device) + " are not supported by this module" +
                    (device == Device::cuda ? " (build attnkit with -Ccmake.define.ATTNKIT_CUDA=ON)" : ""));
  return *be;
}

std::string shape_str(const TensorView& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  if (t.ndim == 1) s += ",";
  return s + ")";
}

}  // namespace attnkit
