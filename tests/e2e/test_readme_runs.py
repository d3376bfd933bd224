"""Every CIFAR command line of the README (the paper's), run as printed with only epochs, model and data shrunk.

The commands come from the README itself, in its order: the DST loop (seeds 18, 19, 20), EDST, the dense
model, the paper's PF command (``$pretrain``: the dense model.pth) and ours, then the evaluations
(``--mode predict`` and ``--mode all`` with a small CIFAR-10-C folder) and ``--compare``. WRN-28-10 becomes
cnn-small, the data a few hundred fake CIFAR-10 images, the epoch counts a few. The ImageNet launch line
runs as printed in tests/imagenet/test_imagenet.py::test_paper_launch_line_through_multiproc.
"""
import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import REPO, write_cifar10
from sparselearning import checkpoint as ckpt

EPOCHS = {"--epochs": "4", "--epochs-explo": "1"}  # EDST: 1 exploration + 3 phases of 1


def readme_lines() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The paper's CIFAR commands"):text.index("## ImageNet")]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(("python ", "python3 ")):
                lines.append(line)
    return lines


def shrink(line: str, out, data, cfc, seed="18", output_dir=None) -> list[str]:
    line = (line.replace("$seed", seed).replace("$epoch", "2")
            .replace("$pretrain", str(out / "cnn-small/cifar10/individual/dense/seed=18/model.pth"))
            .replace("results/wrn-28-10/", f"{out}/cnn-small/").replace("wrn-28-10", "cnn-small")
            .replace("data/CIFAR-10-C", str(cfc)))
    argv = shlex.split(line)[1:]
    for i, tok in enumerate(argv[:-1]):
        if tok in EPOCHS:
            argv[i + 1] = EPOCHS[tok]
    extra = ["--data-dir", str(data), "--no-progress"]
    if argv[0].startswith("main_"):
        extra += ["--output-dir", str(output_dir or out)]
    return [sys.executable, *argv, *extra]


@pytest.mark.slow
def test_readme_cifar_commands_run_as_printed(tmp_path):
    data = write_cifar10(tmp_path / "data", per_batch=40, n_test=40)
    cfc = tmp_path / "CIFAR-10-C"
    cfc.mkdir()
    rng = np.random.default_rng(0)
    np.save(cfc / "gaussian_noise.npy", rng.integers(0, 256, (5 * 40, 32, 32, 3), dtype=np.uint8))
    np.save(cfc / "labels.npy", np.tile(np.arange(40, dtype=np.int64) % 10, 5))
    out = tmp_path / "results"
    lines = readme_lines()
    assert [shlex.split(x)[1] for x in lines][:2] == ["main_DST.py", "main_EDST.py"]
    pf_runs, waves = 0, []
    for line in lines:
        seeds = ("18", "19", "20") if "$seed" in line else ("18",)
        # the README's two PF commands are alternatives for one run folder: the second gets its own root
        pf_runs += " main_PF.py " in f" {line} "
        for seed in seeds:
            cmd = shrink(line, out, data, cfc, seed, output_dir=tmp_path / "pf2" if pf_runs == 2 else None)
            # in the README's order; consecutive runs of one stage (training, then PF) are independent and go
            # two at a time, everything else waits for what comes before it
            stage = {"main_DST.py": "train", "main_EDST.py": "train", "main_individual.py": "train",
                     "main_PF.py": "PF"}.get(cmd[1], cmd[1] + str(len(waves)))
            if waves and waves[-1][0] == stage:
                waves[-1][1].append(cmd)
            else:
                waves.append((stage, [cmd]))
    assert [w[0] for w in waves][:2] == ["train", "PF"] and len(waves[0][1]) == 5

    def run(cmd):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr

    with ThreadPoolExecutor(2) as pool:
        for _, cmds in waves:
            list(pool.map(run, cmds))
    root = out / "cnn-small/cifar10"
    for seed in (18, 19, 20):
        s = json.loads((root / f"density_0.2/DST/seed={seed}/summary.json").read_text())
        assert s["status"] == "finished" and s["epochs_done"] == 4 and s["kind"] == "DST"
        assert (root / f"density_0.2/DST/seed={seed}/metrics.csv").is_file()
    edst = root / "density_0.2/EDST/M=3/seed=17"
    assert sorted(p.name for p in edst.glob("model_*.pth")) == ["model_0.pth", "model_1.pth", "model_2.pth"]
    assert pf_runs == 2
    for pf_root in (root, tmp_path / "pf2/cnn-small/cifar10"):  # the paper's spelling, then ours
        pf = json.loads((pf_root / "density_0.2/PF/seed=18/summary.json").read_text())
        assert pf["status"] == "finished" and pf["kind"] == "PF"
        assert ckpt.load_ticket(pf_root / "density_0.2/PF/seed=18/model.pth")["density"] == pytest.approx(0.2, abs=0.01)
    predict = json.loads((edst.parent / "eval/results_latest.json").read_text())  # --resume .../EDST/M=3/
    members = {r["member"] for r in predict["rows"]}
    assert "ensemble" in members and all(any(m.endswith(f"model_{k}.pth") for m in members) for k in range(3))
    every = json.loads((root / "density_0.2/DST/eval/results_latest.json").read_text())
    assert {"predict", "disagreement", "calibration", "corruption"} <= {r["mode"] for r in every["rows"]}
    compare = json.loads(next((root / "density_0.2").glob("compare/compare_latest.json")).read_text())
    assert len(compare["rows"]) == 3
