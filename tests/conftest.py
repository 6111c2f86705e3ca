import os

import pytest
import torch

# Triton kernels run under the interpreter on CPU tensors when there is no GPU. This must
# be set before any @triton.jit function is defined (BUILD_NOTES.md).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they cost ~10x
    CPU. Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
