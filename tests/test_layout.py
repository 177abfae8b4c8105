"""The package layout's rules, checked statically: who may import the training loop."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monocon_edge"


def _imports(path: Path) -> set[str]:
    """Return the absolute names of the monocon_edge modules (or their attributes) that ``path`` imports."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_only_training_and_the_train_command_import_the_training_loop() -> None:
    """Export, verify, bench and analysis open runs with ``runs.py``, never through the training loop."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).parts[0]
        if where in ("training", "cli"):  # the loop itself, and the `train` command that calls it
            continue
        if any(name == "monocon_edge.training.loop" or name.startswith("monocon_edge.training.loop.")
               for name in _imports(path)):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, offenders
