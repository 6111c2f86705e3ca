// CUDA backend of the fused TARo step: framework-free host interface.
//
// One cooperative kernel launch per step (see taro_step_cuda.cu for the phases).
// No host synchronisation and no allocation inside the step: the caller passes a
// workspace of taro_step_cuda_plan(...).workspace_bytes on the same device, which the
// step overwrites completely (it needs no zeroing), so a decode loop can be captured
// in a CUDA graph as long as the workspace outlives the graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "../taro_step.h"

namespace taro {

// The largest top-K the CUDA kernel handles (K buckets 1, 8, 16, 32, 64).
constexpr int kCudaMaxK = 64;
// The largest router input (2K + 2 + 2Kd) the CUDA kernel holds in shared memory.
constexpr int kCudaMaxRouterInputs = 8192;

struct CudaStepPlan {
  int grid = 0;     // cooperative grid size: every CTA is resident at once
  int block = 0;    // threads per CTA
  int slices = 0;   // CTAs (slices) per logits row
  size_t workspace_bytes = 0;
};

// Why the CUDA kernel cannot run `params`, as a message naming the argument, or
// nullptr when it can. taro_step_cuda returns cudaErrorInvalidValue in those cases.
const char* taro_step_cuda_unsupported(const StepParams& params);

// Launch shape and workspace size for `params` on `device`. Host-only queries
// (cached per device and kernel), no device synchronisation.
cudaError_t taro_step_cuda_plan(const StepParams& params, int device, CudaStepPlan* plan);

// Workspace bytes taro_step_cuda needs for `params` on `device` (0 on error).
size_t taro_step_cuda_workspace_bytes(const StepParams& params, int device);

// Runs one step on `stream` (device pointers in `params`, current device = the
// pointers' device). Asynchronous; errors are launch/configuration errors only. The grid
// is sized from the device's SM count and the kernel's occupancy; where this context
// cannot hold it all at once (MPS, green contexts) the launch fails at once with
// cudaErrorCooperativeLaunchTooLarge (it never waits for CTAs that cannot start); the
// environment variable TARO_CUDA_MAX_CTAS caps the grid for such contexts.
cudaError_t taro_step_cuda(const StepParams& params, void* workspace, size_t workspace_bytes,
                           cudaStream_t stream);

}  // namespace taro
