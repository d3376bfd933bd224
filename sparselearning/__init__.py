"""sparselearning: a dynamic-sparse-training core (Masking) and the FreeTickets training engine."""
__version__ = "0.1.0"
