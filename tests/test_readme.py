"""Every script command in the README parses and validates as printed (the paper's command lines)."""
import re
import shlex

import pytest

from helpers import REPO
from sparselearning.cli import build_parser, validate

SCRIPTS = {"main_individual.py": "individual", "main_DST.py": "DST", "main_EDST.py": "EDST", "main_PF.py": "PF"}


def readme_commands():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    cmds = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(("python ", "python3 ")):
                line = line.replace("$seed", "18").replace("$pretrain", "dense/model.pth").replace("$epoch", "250")
                cmds.append(["python", *shlex.split(line)[1:]])
    return cmds


def test_readme_has_the_paper_commands():
    scripts = {c[1] for c in readme_commands()}
    assert set(SCRIPTS) | {"ensemble_freetickets.py"} <= scripts


@pytest.mark.parametrize("cmd", [c for c in readme_commands() if c[1] in SCRIPTS], ids=lambda c: c[1])
def test_training_commands_parse_and_validate(cmd):
    script = SCRIPTS[cmd[1]]
    args = build_parser(script).parse_args(cmd[2:])
    validate(script, args)
    assert args.model == "wrn-28-10"


@pytest.mark.parametrize("cmd", [c for c in readme_commands() if c[1] == "ensemble_freetickets.py"],
                         ids=lambda c: " ".join(c[2:4]))
def test_evaluation_commands_parse(cmd):
    from sparselearning.evaluation import build_parser as eval_parser

    args = eval_parser().parse_args(cmd[2:])
    assert args.resume or args.compare
