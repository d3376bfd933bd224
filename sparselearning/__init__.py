"""sparselearning: the sparse-training core (`sparselearning.core`) and the FreeTickets experiment harness around it."""
__version__ = "0.1.0"
