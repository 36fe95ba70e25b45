"""How far the fidelity figures move between trainings: ``fidelity.py`` run once per training seed.

The phantoms are the same in every run (their seeds are fixed in ``fidelity.py``); only the learned methods'
patch sampling, pair synthesis and training change with ``--train-seed``. The single-number figures of each
run's tables (PSNR, SSIM, MS-SSIM) are gathered into mean, sd and the per-seed values, and for each
``--versus`` method the difference ``--method`` minus it, seed by seed: a lead smaller than the spread
between seeds is not a lead.

Run: python benchmarks/fidelity_seeds.py [--seeds 0,1,2] [--only tubes,undersampling]
        [--methods interp,care,ssai3d] [--work DIR]
Each seed's run is written to DIR/seed<N>.md (+ .json, panels) and reused when it is already there (a
stopped run resumes at the next seed); DIR/seed<N>-*.md files (columns run on their own, e.g. CARE with
another budget) are merged into that seed's, later files replacing a column of the same label. The output
lists each merged file with the command that made it. Writes benchmarks/results/archive/fidelity_seeds.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fidelity import LABELS  # noqa: E402  (the column labels of fidelity.py's tables)


def parse_tables(md: str) -> dict[str, dict[str, dict[str, float]]]:
    """{section title: {metric: {column label: value}}} for the cells of ``md`` that are plain numbers."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    title, head = None, None
    for line in md.splitlines():
        if line.startswith("## "):
            title, head = line[3:].strip(), None
        elif line.startswith("| metric |"):
            head = [c.strip() for c in line.strip("|").split("|")][1:]
        elif head and title and line.startswith("| "):  # a body row ("|---" rules do not match)
            cells = [c.strip() for c in line.strip("|").split("|")]
            for label, cell in zip(head, cells[1:]):
                try:
                    out.setdefault(title, {}).setdefault(cells[0], {})[label] = float(cell)
                except ValueError:
                    pass
        elif not line.strip():
            head = None
    return out


def seed_files(work: Path, seed: int) -> list[Path]:
    """``seed<N>.md`` then ``seed<N>-*.md`` (columns run separately, e.g. another method's budget)."""
    return [p for p in [work / f"seed{seed}.md", *sorted(work.glob(f"seed{seed}-*.md"))] if p.exists()]


def fmt(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    per = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{statistics.fmean(values):.{digits}f} +- {sd:.{digits}f} ({per})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    ap.add_argument("--only", default="tubes,undersampling", help="fidelity.py experiments")
    ap.add_argument("--methods", default="interp,care,ssai3d", help="fidelity.py columns")
    ap.add_argument("--method", default="ssai3d", help="the column whose lead is measured")
    ap.add_argument("--versus", default="care", help="comma list of columns it is compared with")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ssai3d-fidelity-seeds"),
                    help="folder of the per-seed runs (reused when present)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "archive/fidelity_seeds.md")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    versus = args.versus.split(",")
    if missing := {args.method, *versus} - set(methods):
        ap.error(f"--method/--versus {sorted(missing)} must be among --methods {methods}")
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict] = {}
    sources: dict[int, list[str]] = {}
    for seed in seeds:
        files = seed_files(args.work, seed)
        if not files:
            t = time.perf_counter()
            print(f"seed {seed}: running fidelity.py ...", flush=True)
            subprocess.run([sys.executable, str(HERE / "fidelity.py"), "--size", "small", "--ft-steps", "0",
                            "--care-steps", "0", "--only", args.only, "--methods", args.methods,
                            "--train-seed", str(seed),
                            "--out", str(args.work / f"seed{seed}.md")], check=True)
            print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
            files = seed_files(args.work, seed)
        runs[seed], sources[seed] = {}, []
        for f in files:  # a later file's column replaces an earlier one's of the same label
            text = f.read_text()
            for title, rows in parse_tables(text).items():
                for metric, cells in rows.items():
                    runs[seed].setdefault(title, {}).setdefault(metric, {}).update(cells)
            cmd = next((ln.split("Command: ", 1)[1].strip(" .") for ln in text.splitlines() if "Command: " in ln),
                       "?")
            sources[seed].append(f"{f.name}: {cmd}")
        if not runs[seed]:
            sys.exit(f"{args.work}: no tables for seed {seed}: delete its files to rerun it")

    label = {m: LABELS.get(m, m) for m in methods}
    lines = ["# Fidelity across training seeds", "",
             f"Command: `python benchmarks/fidelity_seeds.py --seeds {args.seeds} --only {args.only} "
             f"--methods {args.methods} --method {args.method} --versus {args.versus}`. Same phantoms in every run; the learned methods' sampling, pairs and "
             "training seeded by N. A seed with no run yet is run as `fidelity.py --size small --ft-steps 0 "
             "--care-steps 0 --train-seed N` (each method's own default budget). Cells: mean +- sd "
             f"(seed {' / '.join(map(str, seeds))}).", "",
             "Runs merged per seed, each with the command that made it (a later file's column replaces an earlier "
             "one's of the same label):", "",
             *[f"- seed {s}: " + "; ".join(sources[s]) for s in seeds], ""]
    record: dict = {"seeds": seeds, "sections": {}}
    for title in [t for t in runs[seeds[0]] if all(t in runs[s] for s in seeds)]:
        rows = runs[seeds[0]][title]
        cols = [m for m in methods if any(label[m] in r for r in rows.values())]
        lines += [f"## {title}", "", "| metric | " + " | ".join(label[m] for m in cols)
                  + "".join(f" | {label[args.method]} - {label[v]} | seeds ahead of {label[v]}" for v in versus)
                  + " |", "|---" * (1 + len(cols) + 2 * len(versus)) + "|"]
        for metric in rows:
            digits = 2 if "PSNR" in metric else 4
            vals = {m: [runs[s].get(title, {}).get(metric, {}).get(label[m]) for s in seeds] for m in cols}
            cells = [fmt(v, digits) if None not in v else "-" for v in vals.values()]
            for v in versus:
                a, b = vals.get(args.method), vals.get(v)
                if a is None or b is None or None in a or None in b:
                    cells += ["-", "-"]
                    continue
                diff = [x - y for x, y in zip(a, b)]
                cells += [fmt(diff, digits), f"{sum(d > 0 for d in diff)} of {len(diff)}"]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
            record["sections"].setdefault(title, {})[metric] = vals
        lines.append("")
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
