"""What a result records of where it came from (sparselearning/provenance.py)."""
import os

import torch

from sparselearning.provenance import cpu_name, git_state, load_average, machine_info, provenance


def test_provenance_fields_and_not_a_checkout(tmp_path):
    p = provenance(["x.py", "--flag"], "cpu")
    assert p["command"] == ["x.py", "--flag"] and p["torch"] == torch.__version__
    assert p["device"] == "cpu" and p["host"] and p["python"]
    assert provenance()["device"] is None
    assert git_state(tmp_path) == {"git_commit": None, "git_dirty": None}


def test_machine_line_names_cpus_load_and_threads():
    line = machine_info()
    assert line.startswith(f"{os.cpu_count()} CPUs ({cpu_name()})") and f"torch {torch.__version__}" in line
    load = load_average()
    assert len(load) == 3 and all(v >= 0 for v in load)
