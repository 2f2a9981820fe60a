"""The layout's promises: `core` imports no stage, the service imports no torch, and the Bento
carries every module the service imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("training", "export", "service", "loadtests", "reports", "smallcls", "bench")


def _imports(path: Path, *, lazy: bool = True) -> set[str]:
    """Every module named by an import in a file; with `lazy`, those inside functions too."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_stage_and_no_torch():
    for path in sorted((REPO / "core").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in STAGES, f"{path.name} imports {name}: core must not import a stage"
        for name in _imports(path, lazy=False):  # BentoML is imported lazily, by the store
            top = name.split(".")[0]
            assert top not in ("torch", "transformers", "bentoml"), f"{path.name} imports {name}"


def test_the_service_imports_no_torch_and_the_bento_carries_what_it_imports():
    code = "import sys, service.service; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = {m.split(".")[0] for m in out} & {"torch", "transformers", "sklearn", "training"}
    assert not heavy, f"the service imports {sorted(heavy)}"
    include = yaml.safe_load((REPO / "bentofile.yaml").read_text())["include"]
    for module in (m for m in out if m.split(".")[0] == "core"):
        path = module.replace(".", "/") + (".py" if module != "core" else "/__init__.py")
        assert path in include or path.rsplit("/", 1)[0] + "/*.py" in include, (
            f"the service imports {module} but bentofile.yaml does not include {path}"
        )
