// The Python module `taro_ext._C`. Importing it registers the torch.library ops
// (taro_ext::fused_step on CPU, and on CUDA when compiled with nvcc).
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "taro_ext native kernels (ops are in torch.ops.taro_ext)";
#ifdef TARO_WITH_CUDA
  m.attr("compiled_with_cuda") = true;
#else
  m.attr("compiled_with_cuda") = false;
#endif
}
