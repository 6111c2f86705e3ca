// Host side of the CUDA step: launch planning (cached occupancy), dispatch to the
// per-dtype kernels and the cooperative launch. The kernel and its design notes are in
// taro_step_kernel.cuh.
#include "taro_step_cuda.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "taro_step_kernel.cuh"

namespace taro {
namespace cuda_detail {
namespace {

int k_bucket(const StepParams& p) {
  if (p.use_alpha_override) return 1;  // no top-K: the smallest instantiation
  for (int b : {1, 8, 16, 32, 64})
    if (p.k <= b) return b;
  return 0;
}

const void* select_kernel(const StepParams& p) {
  const int kb = k_bucket(p);
  switch (p.logits_dtype) {
    case DType::kFloat32: return step_kernel_f32(kb);
    case DType::kBFloat16: return step_kernel_bf16(kb);
    case DType::kFloat16: return step_kernel_f16(kb);
  }
  return nullptr;
}

// Resident CTAs of `kernel` on `device` (SM count x occupancy). Host-only queries, but
// cached so that a decode loop does not repeat them every step.
cudaError_t resident_ctas(const void* kernel, int device, int* out) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find({kernel, device});
  if (found != cache.end()) {
    *out = found->second;
    return cudaSuccess;
  }
  int sms = 0, per_sm = 0, cooperative = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  if (!cooperative || per_sm < 1) return cudaErrorNotSupported;
  cache[{kernel, device}] = *out = sms * per_sm;
  return cudaSuccess;
}

// TARO_CUDA_MAX_CTAS=n caps the cooperative grid at n CTAs (0 or unset: no cap). For a
// context that gets fewer SMs than the device reports (MPS thread limits, green contexts),
// where a full-device grid is not co-resident and the launch fails with
// cudaErrorCooperativeLaunchTooLarge; and for tests that force several (row, slice) items
// per CTA. Read on every plan (a getenv), so it may change between steps.
int64_t grid_cap() {
  const char* env = std::getenv("TARO_CUDA_MAX_CTAS");
  if (env == nullptr || *env == '\0') return 0;
  char* end = nullptr;
  const long long n = std::strtoll(env, &end, 10);
  return (end != nullptr && *end == '\0' && n > 0) ? int64_t(n) : 0;
}

}  // namespace
}  // namespace cuda_detail

const char* taro_step_cuda_unsupported(const StepParams& p) {
  if (p.batch < 0 || p.vocab_size < 1) return "vocab_size must be >= 1";
  if (p.vocab_size >= (int64_t(1) << 31) - 64) return "vocab_size must be < 2^31 - 64 for the cuda backend";
  if (p.temperature > 0.f && p.uniform == nullptr) return "uniform is required when temperature > 0";
  if (p.use_alpha_override) return nullptr;
  if (p.k < 1 || p.k > p.vocab_size) return "k must be in [1, vocab_size]";
  if (p.k > kCudaMaxK) return "k must be <= 64 for the cuda backend";
  if (p.router.hidden < 1 || p.router.embed_dim < 1) return "router hidden and embed_dim must be >= 1";
  if (router_input_dim(p.k, p.router.embed_dim) > kCudaMaxRouterInputs)
    return "the router input size 2K + 2 + 2Kd must be <= 8192 for the cuda backend";
  return nullptr;
}

cudaError_t taro_step_cuda_plan(const StepParams& p, int device, CudaStepPlan* plan) {
  using namespace cuda_detail;
  if (taro_step_cuda_unsupported(p) != nullptr) return cudaErrorInvalidValue;
  const void* kernel = select_kernel(p);
  if (kernel == nullptr) return cudaErrorInvalidValue;
  int resident = 0;
  const cudaError_t err = resident_ctas(kernel, device, &resident);
  if (err != cudaSuccess) return err;
  if (const int64_t cap = grid_cap()) resident = int(std::min<int64_t>(resident, cap));
  const int64_t batch = std::max<int64_t>(p.batch, 1);
  const int64_t vec = p.logits_dtype == DType::kFloat32 ? 4 : 8;  // elements per 16-byte slot
  const int64_t slots = (p.vocab_size + vec - 1) / vec + 1;
  int64_t slices = std::min<int64_t>(resident / batch, (slots + kMinSlotsPerSlice - 1) / kMinSlotsPerSlice);
  slices = std::max<int64_t>(1, std::min<int64_t>(slices, kMaxSlices));
  plan->block = kThreads;
  plan->slices = int(slices);
  plan->grid = int(std::min<int64_t>(batch * slices, resident));
  plan->workspace_bytes = workspace_layout(batch, plan->slices, k_bucket(p), !p.use_alpha_override).bytes;
  return cudaSuccess;
}

size_t taro_step_cuda_workspace_bytes(const StepParams& p, int device) {
  CudaStepPlan plan;
  return taro_step_cuda_plan(p, device, &plan) == cudaSuccess ? plan.workspace_bytes : 0;
}

cudaError_t taro_step_cuda(const StepParams& p, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  CudaStepPlan plan;
  err = taro_step_cuda_plan(p, device, &plan);
  if (err != cudaSuccess) return err;
  if (workspace == nullptr || workspace_bytes < plan.workspace_bytes) return cudaErrorInvalidValue;

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(plan.grid));
  config.blockDim = dim3(unsigned(plan.block));
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute cooperative[1];
  cooperative[0].id = cudaLaunchAttributeCooperative;  // grid.sync(); valid under stream capture
  cooperative[0].val.cooperative = 1;
  config.attrs = cooperative;
  config.numAttrs = 1;
  StepParams params = p;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  int slices = plan.slices;
  void* args[] = {&params, &ws, &slices};
  return cudaLaunchKernelExC(&config, cuda_detail::select_kernel(p), args);
}

}  // namespace taro
