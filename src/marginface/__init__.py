"""marginface: deep face recognition trained with margin-based softmax losses.

Import is side-effect free: no process groups, no CUDA calls, no optional heavy imports.
"""

__version__ = "0.1.0"
