"""Train one dynamic-sparse network; M seeds form a DST ensemble (--fix: a static sparse one)."""
from sparselearning.errors import run_cli
from sparselearning.launch import launch_members
from sparselearning.recipes import main

if __name__ == "__main__":
    launch_members("DST")  # --seeds / --launcher slurm: starts the members and exits
    run_cli(lambda argv: main("DST", argv))
