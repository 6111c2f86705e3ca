import os

import torch

# Triton kernels run under the interpreter on CPU tensors when there is no GPU. This must
# be set before any @triton.jit function is defined (BUILD_NOTES.md).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
