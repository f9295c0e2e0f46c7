"""docs/design.md §2.4: only actors/, controller.py and train.py import Ray; algo/ and mapping/ stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

FRAMEWORK = Path(__file__).resolve().parents[2] / "framework"
ZOO = FRAMEWORK.parent / "tokenbridge_zoo"
RAY_ALLOWED = {"actors", "controller.py", "train.py"}
PURE = {"algo", "mapping"}
HEAVY = {"ray", "vllm", "deepspeed"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _top(path: Path) -> str:
    return path.relative_to(FRAMEWORK).parts[0]


def test_only_the_ray_layer_imports_ray():
    offenders = [
        str(p.relative_to(FRAMEWORK))
        for p in FRAMEWORK.rglob("*.py")
        if "ray" in _imports(p) and _top(p) not in RAY_ALLOWED
    ]
    assert not offenders, f"these modules import ray outside actors/controller/train: {offenders}"


def test_algo_and_mapping_import_no_distributed_or_engine_code():
    offenders = {
        str(p.relative_to(FRAMEWORK)): sorted(_imports(p) & HEAVY)
        for p in FRAMEWORK.rglob("*.py")
        if _top(p) in PURE and _imports(p) & HEAVY
    }
    assert not offenders, offenders


def test_the_boundary_check_sees_real_files():
    # guards against the checks above passing vacuously on an empty tree
    files = {_top(p) for p in FRAMEWORK.rglob("*.py")}
    assert {"algo", "mapping", "actors"} <= files
    assert "ray" in _imports(FRAMEWORK / "controller.py")


def test_no_file_over_600_lines():
    big = {
        str(p.relative_to(FRAMEWORK.parent)): n
        for p in [*FRAMEWORK.rglob("*.py"), *ZOO.rglob("*.py")]
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not big, big


def _imported_modules(path: Path) -> set[str]:
    """Full dotted names of every absolute import, in-function imports included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_core_never_imports_the_demo_zoo():
    """The zoo (the top-level package ``tokenbridge_zoo``) is a plug-in of the core: its models arrive
    through the ``tokenbridge.model_sources`` entry point (framework/models.py), its task lives in
    framework/data/arith.py."""
    offenders = {
        str(p.relative_to(FRAMEWORK)): sorted(
            m for m in _imported_modules(p) if m.split(".")[0] == "tokenbridge_zoo"
        )
        for p in FRAMEWORK.rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders
    assert not (FRAMEWORK / "zoo").exists()
    zoo_files = list(ZOO.rglob("*.py"))  # the check sees the zoo importing itself
    assert any("tokenbridge_zoo.settings" in _imported_modules(p) for p in zoo_files)
