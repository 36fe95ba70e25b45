"""The package's layering, read from the source: restoration depends on io, ops, models and the shared
modules only (not on adaptation, evaluation, the CLI or the workflow), and only the CLI draws progress."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ssai3d_dask"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_restoration_imports_no_training_stage_nor_the_layers_above_it():
    banned = ("ssai3d_dask.adaptation", "ssai3d_dask.evaluation", "ssai3d_dask.cli", "ssai3d_dask.workflow")
    edges = {(f.name, m) for f in (PKG / "restoration").rglob("*.py") for m in imported_modules(f)
             if m.startswith(banned)}
    assert not edges, edges


def test_only_the_cli_and_the_progress_module_create_progress_bars():
    drawing = {str(f.relative_to(PKG)) for f in PKG.rglob("*.py")
               if "tqdm" in {m.split(".")[0] for m in imported_modules(f)}}
    assert drawing <= {"progress.py"}, drawing
