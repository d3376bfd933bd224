"""The import graph of the project's packages, read from the source (lazy imports inside functions included):
no cycle; the core (sparselearning/core) imports nothing else of the project; models/ nothing of sparselearning."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sparselearning", "models")
# still a cycle while the evaluation CLI and the comparison are being untangled elsewhere: see the skipped test
KNOWN_CYCLE = frozenset({"sparselearning.evaluation.cli", "sparselearning.evaluation.compare"})


def module_files() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file. ``from pkg import sub`` counts as importing
    pkg.sub (not pkg's __init__) when every imported name is a submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            subs = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules}
            targets |= subs
            if len(subs) < len(node.names):
                targets.add(source)
    found = set()
    for target in targets:
        while target and target not in modules:  # a name inside a module -> the module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_cycle_finder_on_hand_made_graphs():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert sorted(map(sorted, cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}))) == [["a", "b"], ["c", "d"]]


def test_lazy_and_relative_imports_are_seen(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("from .. import errors\nfrom ..core import masking\n\ndef f():\n    from ..train import Run\n")
    assert imported("sparselearning.x.m", mod, {"sparselearning.errors", "sparselearning.core.masking",
                                                  "sparselearning.train", "sparselearning.core"}) == {
        "sparselearning.errors", "sparselearning.core.masking", "sparselearning.train"}


def test_no_import_cycle():
    assert [sorted(c) for c in cycles(import_graph()) if c != KNOWN_CYCLE] == []


@pytest.mark.skip(reason="sparselearning.evaluation.cli and sparselearning.evaluation.compare still import each "
                         "other; drop this skip and KNOWN_CYCLE once they no longer do")
def test_evaluation_cli_and_compare_are_no_cycle():
    assert KNOWN_CYCLE not in cycles(import_graph())


def test_core_imports_only_the_core():
    upward = {name: sorted(t for t in targets if not t.startswith("sparselearning.core"))
              for name, targets in import_graph().items() if name.startswith("sparselearning.core")}
    assert {name: t for name, t in upward.items() if t} == {}


def test_models_import_nothing_of_sparselearning():
    upward = {name: sorted(t for t in targets if t.startswith("sparselearning"))
              for name, targets in import_graph().items() if name.split(".")[0] == "models"}
    assert {name: t for name, t in upward.items() if t} == {}
