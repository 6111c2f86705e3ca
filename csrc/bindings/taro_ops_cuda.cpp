// Torch binding of the CUDA step: taro_ext::fused_step for CUDA tensors.
//
// Only c10/cuda headers (ATen/cuda/CUDAContext.h pulls in cusparse.h, see BUILD_NOTES).
// The workspace comes from the CUDA caching allocator on every call, like the outputs:
// no cudaMalloc in steady state, no zeroing (the kernel overwrites it and keeps no
// counters), correct on any stream, and under CUDA-graph capture it is drawn from the
// graph's private pool, so a captured step never points at memory that a later, larger
// eager step has freed (which a single cached, growing buffer would).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cuda/taro_step_cuda.h"
#include "step_params.h"

namespace taro {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_step_cuda(
    const at::Tensor& base, const at::Tensor& reward, const std::optional<at::Tensor>& embed,
    const std::optional<at::Tensor>& w1, const std::optional<at::Tensor>& b1,
    const std::optional<at::Tensor>& w2, const std::optional<at::Tensor>& b2, double alpha_max,
    int64_t k, int64_t vocab_size, double temperature, const std::optional<at::Tensor>& uniform,
    std::optional<double> alpha_override, bool return_logprobs) {
  TORCH_CHECK_VALUE(base.is_cuda(), "base_logits must be a CUDA tensor for the cuda backend");
  TORCH_CHECK_VALUE(alpha_override.has_value() || k <= kCudaMaxK, "k must be <= ", kCudaMaxK,
                    " for the cuda backend, got ", k);
  const c10::cuda::CUDAGuard guard(base.device());
  StepParams p;
  StepOutputs out = make_step_params(p, base, reward, embed, w1, b1, w2, b2, alpha_max, k, vocab_size,
                                     temperature, uniform, alpha_override, return_logprobs);
  if (const char* why = taro_step_cuda_unsupported(p)) TORCH_CHECK_VALUE(false, why);
  if (p.batch == 0) return {out.tokens, out.alpha, out.token_logprobs, out.logprobs};
  const int device = base.get_device();
  CudaStepPlan plan;
  const cudaError_t plan_err = taro_step_cuda_plan(p, device, &plan);
  if (plan_err == cudaErrorNoKernelImageForDevice || plan_err == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();  // not sticky: clear it so the next CUDA call does not report it
    int major = 0, minor = 0;
    (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    TORCH_CHECK(false, "cuda backend: this build of taro_ext has no kernel for device ", device, " (sm_", major,
                minor, "); rebuild it with TORCH_CUDA_ARCH_LIST=\"", major, ".", minor,
                "\" (README, \"Building from source\"), or use backend='triton'");
  }
  C10_CUDA_CHECK(plan_err);
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(plan.workspace_bytes)}, base.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  const cudaError_t err = taro_step_cuda(p, workspace.data_ptr(), plan.workspace_bytes, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // not sticky: clear it so the next CUDA call does not report it
    TORCH_CHECK(false, "cuda backend: the step's cooperative grid of ", plan.grid, " CTAs x ", plan.block,
                " threads cannot be resident at once on device ", device,
                " (this context has fewer SMs than the device reports: MPS or green contexts?); "
                "set TARO_CUDA_MAX_CTAS to at most the CTAs this context holds, or use backend='triton'");
  }
  C10_CUDA_CHECK(err);
  return {out.tokens, out.alpha, out.token_logprobs, out.logprobs};
}

}  // namespace taro

TORCH_LIBRARY_IMPL(taro_ext, CUDA, m) { m.impl("fused_step", &taro::fused_step_cuda); }
