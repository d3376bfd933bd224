"""Train an EDST ensemble: one run, M free tickets."""
from sparselearning.errors import run_cli
from sparselearning.launch import launch_members
from sparselearning.recipes import main

if __name__ == "__main__":
    launch_members("EDST")  # --seeds / --launcher slurm: starts the members and exits
    run_cli(lambda argv: main("EDST", argv))
