"""The core's own errors (the harness re-exports them from sparselearning.errors)."""


class MaskDesyncError(RuntimeError):
    """The sparse masks differ between data-parallel ranks (raised on every rank; exit code 1)."""
