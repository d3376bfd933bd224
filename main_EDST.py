"""Train an EDST ensemble: one run, M free tickets."""
from sparselearning.errors import run_cli
from sparselearning.recipes import main

if __name__ == "__main__":
    run_cli(lambda argv: main("EDST", argv))
