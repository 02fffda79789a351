import os

import torch

# Triton kernels run under the interpreter on machines without a GPU; set before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
