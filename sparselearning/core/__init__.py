"""The sparse-training core: what you import into your own training loop.

``Masking`` composes small pure functions over tensors (density allocation, death, growth,
redistribution, schedules, exact top-k selection); ``flops`` counts training FLOPs and
``distributed`` keeps masks identical across DDP ranks. Nothing here knows about runs, files,
datasets or command lines: that is the experiment harness around it (the rest of ``sparselearning``).
"""
from .masking import Masking, MaskingConfig

__all__ = ["Masking", "MaskingConfig"]
