// The fused step kernel for __nv_bfloat16 logits (see taro_step_kernel.cuh).
#include "taro_step_kernel.cuh"

namespace taro {
namespace cuda_detail {

const void* step_kernel_bf16(int kb) { return step_kernel_for_bucket<__nv_bfloat16>(kb); }

}  // namespace cuda_detail
}  // namespace taro
