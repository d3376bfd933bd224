"""Train one model (dense, or sparse with --sparse): a deep-ensemble member or PF's dense start."""
from sparselearning.errors import run_cli
from sparselearning.recipes import main

if __name__ == "__main__":
    run_cli(lambda argv: main("individual", argv))
