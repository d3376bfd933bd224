"""The job runner shared by `make demo` and benchmarks/reproduce_small.py (tiny `python -c` jobs)."""
import time

import pytest

from sparselearning.jobs import Job, run_jobs


def test_dependencies_order_the_jobs_and_logs_are_appended(tmp_path):
    stamp = tmp_path / "stamps.txt"

    def writer(name: str, seconds: float) -> list[str]:
        return ["-c", f"import time; time.sleep({seconds}); open({str(stamp)!r}, 'a').write('{name}\\n'); "
                      f"print('hello from {name}')"]

    # b and c wait for a; a is the slowest, so without the dependency it would finish last
    jobs = [Job("b", writer("b", 0.0), deps=["a"]), Job("a", writer("a", 1.0)), Job("c", writer("c", 0.0), ["a"])]
    run_jobs(jobs, n_parallel=2, threads=1, log_dir=tmp_path / "logs")
    order = stamp.read_text().split()
    assert order[0] == "a" and sorted(order[1:]) == ["b", "c"]
    assert all(j.seconds > 0 for j in jobs)
    log = (tmp_path / "logs" / "b.log").read_text()
    assert log.startswith("$ python -c ") and "hello from b" in log
    run_jobs([Job("b", writer("b", 0.0))], n_parallel=1, threads=1, log_dir=tmp_path / "logs")
    assert (tmp_path / "logs" / "b.log").read_text().splitlines().count("hello from b") == 2  # earlier run kept


def test_a_failed_job_stops_the_others_with_its_log_tail(tmp_path):
    started = time.time()
    jobs = [Job("slow", ["-c", "import time; time.sleep(60)"]),
            Job("bad", ["-c", "import sys; print('what went wrong'); sys.exit(3)"]),
            Job("never", ["-c", "print('ran')"], deps=["bad"])]
    with pytest.raises(SystemExit) as exc:
        run_jobs(jobs, n_parallel=2, threads=1, log_dir=tmp_path / "logs", stopped_by="demo")
    message = str(exc.value.code)
    assert "what went wrong" in message and "demo stopped: `python -c import sys" in message
    assert "failed (exit 3; log: " in message
    assert time.time() - started < 30  # the 60-second job was terminated
    assert jobs[0].proc.poll() is not None and not (tmp_path / "logs" / "never.log").exists()


def test_a_dependency_that_cannot_be_met_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"unsatisfiable dependencies: \['x'\]"):
        run_jobs([Job("x", ["-c", "pass"], deps=["missing"])], 1, 1, tmp_path / "logs")
