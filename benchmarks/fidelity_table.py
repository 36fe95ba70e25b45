"""One current fidelity table: every method's latest run of ``benchmarks/fidelity.py``, side by side.

``fidelity.py`` runs the paper's phantoms for the methods it is asked for (``--methods``), and its runs took
from 13 to 60 minutes each on 2 CPU cores, so the current figures come from several runs: SSAI-3D with
today's defaults, CARE at its own budget given the true and the estimated PSF, Richardson-Lucy given the
true and the estimated PSF and OT-CycleGAN. Every run used the same phantoms (same seeds, same sizes), so
their columns can stand side by side; interpolation is identical in each.

This script takes each column from the run named in :data:`SOURCES` (kept in ``results/archive/``), writes
``results/fidelity.json`` (``{"results": ..., "sources": ...}``, the shape ``fidelity.py`` writes) and a
summary ``results/fidelity.md``: one row per figure, one column per method. Rerun it after rerunning any
column (``python benchmarks/fidelity.py --methods ssai3d --out results/archive/fidelity_<name>.md``, then
point :data:`SOURCES` at it).

Run: python benchmarks/fidelity_table.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ARCHIVE = RESULTS / "archive"
#: column -> (run file in results/archive/, its key there, what the column is)
SOURCES = {
    "interp": ("fidelity_blind.json", "interp", "linear z interpolation"),
    "rl": ("fidelity_blind.json", "rl", "Richardson-Lucy given the true PSF, 30 iterations"),
    "rl-est": ("fidelity_blind.json", "rl-est", "Richardson-Lucy given the PSF estimated from the stack"),
    "care": ("fidelity_care.json", "care", "CARE from scratch given the true PSF (1000 steps of 16 pairs)"),
    "care-est": ("fidelity_care.json", "care-est", "CARE given the estimated PSF"),
    "cyclegan": ("fidelity_blind.json", "cyclegan", "OT-CycleGAN (300 steps, the CPU budget)"),
    "ssai3d": ("fidelity_lean.json", "ssai3d", "SSAI-3D defaults (every layer, one PSF at 1.15x the estimate, "
                                              "fine-tuned to convergence)"),
}
L16 = 65535.0


def _pick(tree, key: str):
    """The sub-tree of method ``key`` at every level where methods are keys (the experiments nest them
    under a phantom or a test width)."""
    if not isinstance(tree, dict):
        return None
    if key in tree:
        return tree[key]
    out = {k: _pick(v, key) for k, v in tree.items()}
    out = {k: v for k, v in out.items() if v is not None}
    return out or None


def _put(tree: dict, path: tuple, key: str, value) -> None:
    """Insert ``value`` under ``key`` at the nesting ``path`` of ``tree``."""
    for p in path:
        tree = tree.setdefault(p, {})
    tree[key] = value


def _merge_column(results: dict, picked, key: str, path: tuple = ()) -> None:
    if isinstance(picked, dict) and not _is_leaf(picked):
        for k, v in picked.items():
            _merge_column(results, v, key, path + (k,))
    else:
        _put(results, path, key, picked)


def _is_leaf(d: dict) -> bool:
    """A method's own record (metrics), not a level of phantoms or widths."""
    return bool(set(d) & {"z", "mse", "ssim", "axial_mse", "psnr", "mean_um"})


def merged() -> tuple[dict, dict]:
    results: dict = {}
    for column, (name, key, _) in SOURCES.items():
        run = json.loads((ARCHIVE / name).read_text())["results"]
        for experiment, tree in run.items():
            picked = _pick(tree, key)
            if picked is not None:
                _merge_column(results.setdefault(experiment, {}), picked, column)
            if column == "ssai3d" and isinstance(tree, dict) and "truth" in tree:  # the beads' own FWHM
                results.setdefault(experiment, {})["truth"] = tree["truth"]
    return results, {c: {"file": f"archive/{n}", "key": k, "what": w} for c, (n, k, w) in SOURCES.items()}


def rows(results: dict) -> list[tuple[str, dict]]:
    """(figure, {column: value}) for the summary table."""
    out = []
    beads = results.get("beads", {})
    out.append(("beads: axial FWHM, nm (truth %.0f)" % (1000 * beads["truth"]["z"]["mean_um"]),
                {c: 1000 * v["z"]["mean_um"] for c, v in beads.items() if c != "truth"}))
    out.append(("strands: mean XZ SSIM", {c: float(np.mean(v["ssim"])) for c, v in results["strands"].items()}))
    for sd, cols in sorted(results["mismatch"].items(), key=lambda kv: float(kv[0])):
        out.append((f"PSF mismatch, test sd {sd} px: PSNR dB", cols))
    for phantom, cols in results["similarity"].items():
        out.append((f"{phantom}: axial PSNR dB", {c: 10 * math.log10(L16 ** 2 / v["axial_mse"]) for c, v in cols.items()}))
    for phantom, cols in results["tubes"].items():
        out.append((f"{phantom}: SSIM", cols))
    for f, cols in sorted(results["undersampling"].items()):
        out.append((f"z undersampling x{f}: PSNR dB", {c: v["psnr"] for c, v in cols.items()}))
    return out


def main() -> None:
    results, sources = merged()
    (RESULTS / "fidelity.json").write_text(json.dumps({"results": results, "sources": sources}, indent=1))
    cols = list(SOURCES)
    lines = ["# Fidelity on the paper's phantoms (benchmarks/fidelity.py, small sizes, 2 CPU cores)", "",
             "Every current column, each from its latest run (`python benchmarks/fidelity_table.py` merges them; "
             "the runs, with their panels, settings, timings and readings, are in `archive/`). Higher is better "
             "except the FWHM, where nearer the truth is.", "",
             "| figure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label, values in rows(results):
        best = max((v for c, v in values.items() if c != "interp" and v is not None), default=None) \
            if not label.startswith("beads") else None
        cells = []
        for c in cols:
            v = values.get(c)
            text = "-" if v is None else (f"{v:.0f}" if label.startswith("beads") else
                                           f"{v:.3f}" if "SSIM" in label else f"{v:.2f}")
            cells.append(f"**{text}**" if v is not None and v == best else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Columns:", ""] + [f"- `{c}`: {s['what']} (`{s['file']}`)" for c, s in sources.items()]
    (RESULTS / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
