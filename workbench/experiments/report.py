"""Results tables in markdown from what the workbench wrote: ``python -m workbench report PATH``.

Every measured number in README comes from here, so a table can be regenerated (and checked) from the
run it describes instead of being typed in. ``PATH`` may be

- a run folder (``config.json`` + ``metrics.json``): one row, plus the state before joint training
  for a stage-2 run (``metrics["initial"]``);
- a folder holding runs (``make demo``'s or ``00_quickstart``'s: ``pretrain/`` and ``mar/``): one
  row per run, stage 1 first (the rows ``make demo`` prints);
- a sweep folder (one sub-folder per point with ``status.json``): one row per point;
- a ``metrics.json`` file;
- a results CSV (what ``--csv`` writes): a ``run`` column and the metric columns as fractions;
- a committed experiment folder (``results/loss_ablation`` ...): its table over seeds;
- a run's per-epoch history (``history.csv`` or a committed ``*_history.csv``): what the run cost;
- a folder of results folders (``results/``): every recipe below it with its ``reproduce`` command.

Example:
    >>> print(markdown_table([("stage 2", {"rank1": 0.5, "mAP": 0.25})]))
    | | rank-1 | rank-5 | rank-10 | mAP | mAP* | mINP |
    | --- | --- | --- | --- | --- | --- | --- |
    | stage 2 | 50.0 | – | – | 25.0 | – | – |
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, MissingFileError
from workbench.evaluation.names import METRIC_TITLES
from workbench.runs import PointFolder, RunFolder

#: metric key → column title (fractions in the files, percent in the table)
COLUMNS = METRIC_TITLES  # the metric columns of every table, in order, with their titles
FOOTNOTE = ("percent; mAP = standard non-interpolated AP (torchreid/fast-reid), mAP* = Market devkit / MAR "
            "official trapezoid AP")
#: row titles of the run folders a demo or quickstart folder holds
RUN_TITLES = {"pretrain": "stage 1: reference pretraining (direct transfer)", "mar": "stage 2: joint MAR training"}

#: what a results CSV keeps besides the metrics, when the run recorded it (metrics.json)
EXTRA_COLUMNS = ("stage", "method", "epochs", "seed", "commit", "init_threshold")

Row = tuple[str, Mapping[str, Any]]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _is_run(folder: Path) -> bool:
    run = RunFolder(folder)
    return run.is_finished and run.has_config


def _run_rows(run: Path, title: str | None = None, *, initial: bool = True) -> list[Row]:
    folder = RunFolder(run)
    metrics = folder.metrics()
    method = metrics.get("method") or (folder.config().train.method if metrics.get("stage") == "mar" else None)
    if method and method != "mar":  # a stage 2 by another method says which (title and CSV column)
        from workbench.config import methods

        name = methods()[method].title if method in methods() else method
        title = f"{title or run.name} ({name})"
        metrics = {**metrics, "method": method}
    rows: list[Row] = []
    if initial and isinstance(metrics.get("initial"), Mapping):
        rows.append((f"{title or run.name}: before joint training", metrics["initial"]))
    rows.append((title or run.name, metrics))
    return rows


def _sweep_rows(folder: Path) -> list[Row]:
    from workbench.experiments.results import collect

    df = collect(folder)
    params = [c for c in df.columns[1:df.columns.get_loc("state")]]
    varying = [c for c in params if df[c].astype(str).nunique() > 1] or params
    rows: list[Row] = []
    for _, r in df.iterrows():
        label = ", ".join(f"{c}={r[c]}" for c in varying) or str(r["name"])
        if r["state"] != "done":
            label += f" ({r['state']})"
        rows.append((label, {k: r[k] for k in COLUMNS if k in r}))
    return rows


def _csv_rows(path: Path) -> list[Row]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "run" not in reader.fieldnames:
            raise ConfigError(f"{path}: a results CSV needs a 'run' column and metric columns "
                             f"({', '.join(COLUMNS)}), got {reader.fieldnames}")
        return [(row["run"], {k: float(row[k]) if row.get(k) not in (None, "") else math.nan
                              for k in COLUMNS if k in row} | {k: row[k] for k in EXTRA_COLUMNS if row.get(k)})
                for row in reader]


def results_rows(path: str | Path) -> list[Row]:
    """``[(row title, metrics as fractions)]`` of a run folder, a folder of runs, a sweep folder,
    a ``metrics.json`` or a results CSV (see the module docstring).

    Raises:
        FileNotFoundError: no such path.
        ValueError: a path that holds none of those (naming what was looked for).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"no such run folder or results file: {path.resolve()}")
    if path.is_file():
        if path.suffix == ".csv":
            return _csv_rows(path)
        if path.suffix == ".json":
            return [(path.parent.name, _read_json(path))]
        raise ConfigError(f"{path}: a results file is a .csv (see --csv) or a metrics.json")
    if _is_run(path):
        return _run_rows(path)
    runs = [path / name for name in RUN_TITLES if _is_run(path / name)]
    runs += sorted(p for p in path.iterdir() if p.is_dir() and p.name not in RUN_TITLES and _is_run(p))
    if runs:  # beside its stage-1 run, a stage-2 run's start ("initial") would repeat stage 1's row
        has_stage1 = any(run.name == "pretrain" for run in runs)
        return [row for run in runs for row in _run_rows(run, RUN_TITLES.get(run.name), initial=not has_stage1)]
    if any(PointFolder(p).status_path.is_file() for p in path.iterdir() if p.is_dir()):
        return _sweep_rows(path)
    if (summary := PointFolder(path).summary()) is not None:
        return [(path.name, summary)]
    raise ConfigError(f"{path.resolve()} holds no results: expected a run folder (config.json + metrics.json), "
                     "folders of runs, a sweep folder (points with status.json) or metrics.json")


def _percent(value: Any) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table in percent (one decimal; ``–`` for a missing metric)."""
    lines = ["| | " + " | ".join(COLUMNS.values()) + " |", "| --- " * (len(COLUMNS) + 1) + "|"]
    for title, metrics in rows:
        lines.append(f"| {title} | " + " | ".join(_percent(metrics.get(k)) for k in COLUMNS) + " |")
    return "\n".join(lines)


def results_csv(rows: Sequence[Row]) -> str:
    """The rows as a results CSV (``run``, metric columns as fractions, and the run's stage, epochs, seed
    and git commit where recorded), readable by :func:`results_rows`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = [k for k in EXTRA_COLUMNS if any(metrics.get(k) not in (None, "") for _, metrics in rows)]
    writer.writerow(["run", *COLUMNS, *extra])
    for title, metrics in rows:
        values = []
        for k in COLUMNS:
            try:
                x = float(metrics.get(k))
            except (TypeError, ValueError):
                x = math.nan
            values.append("" if math.isnan(x) else repr(x))
        writer.writerow([title, *values, *("" if metrics.get(k) is None else metrics[k] for k in extra)])
    return buf.getvalue()


def _is_results_root(path: Path) -> bool:
    from workbench.experiments.folder import ResultsFolder
    from workbench.experiments.recipes import find_recipes

    return path.is_dir() and not ResultsFolder(path).has_runs and any(p.parent != path for p in find_recipes(path))


def _is_results_folder(path: Path) -> bool:
    from workbench.experiments.folder import ResultsFolder

    return path.is_dir() and ResultsFolder(path).has_runs and ResultsFolder(path).experiment() is not None


def _results_table(path: Path, footnote: bool) -> str:
    from workbench.experiments.committed import folder_table

    return folder_table(path) + (f"\n\n({FOOTNOTE}; mean ± std over seeds, Δ: paired difference with its 95 % "
                                 "interval)" if footnote else "")


def _recipes(path: Path, footnote: bool) -> str:
    from workbench.experiments.plan import recipes_markdown

    return recipes_markdown(path)


def _rows(path: Path, footnote: bool) -> str:
    return markdown_table(results_rows(path)) + (f"\n\n({FOOTNOTE})" if footnote else "")


#: what ``report`` reads, in the order it tells them apart: (kind, does PATH hold it, its markdown)
KINDS = (
    ("a benchmark's committed output (.txt), quoted", lambda p: p.suffix == ".txt",
     lambda p, f: "```text\n" + p.read_text().rstrip("\n") + "\n```"),
    ("a test file (.py): its cases as pytest collects them", lambda p: p.suffix == ".py",
     lambda p, f: collected_cases(p)),
    ("a per-epoch history (*history.csv): what the run cost", lambda p: p.name.endswith("history.csv"),
     lambda p, f: history_cost(p)),
    ("a folder of results folders (results/): every recipe and its command", _is_results_root, _recipes),
    ("a results folder (results/<experiment>/): its table over seeds", _is_results_folder, _results_table),
    ("a run folder, a folder of runs, a sweep folder, a metrics.json or a results CSV: one row per run",
     lambda p: True, _rows),
)


def report(path: str | Path, *, footnote: bool = True) -> str:
    """The markdown results table of ``path`` (what ``python -m workbench report PATH`` prints): the first of
    :data:`KINDS` that ``path`` holds decides how it is read.

    Raises:
        MissingFileError: no such file or folder.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such run folder or results file: {path.resolve()}")
    for _, holds, render in KINDS:
        if holds(path):
            return render(path, footnote)
    raise AssertionError("the last kind takes any path")  # pragma: no cover


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def history_cost(path: str | Path) -> str:
    """What a run cost, from its per-epoch history: epochs, training time (the sum of the epochs'
    ``seconds``; evaluation excluded), median seconds per epoch, median images/s, and the last
    epoch's mAP where evaluated."""
    import statistics

    from workbench.runs import read_rows

    rows = read_rows(Path(path))
    if not rows or "seconds" not in rows[0]:
        raise ConfigError(f"{path}: a history needs per-epoch rows with a 'seconds' column")
    def finite(key: str) -> list[float]:
        return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    seconds, rates = finite("seconds"), finite("images_per_s")
    mAP = _percent(rows[-1].get("mAP"))
    return ("| epochs | training time | per epoch (median) | images/s (median) | mAP after the last epoch |\n"
            "| --- | --- | --- | --- | --- |\n"
            f"| {len(rows)} | {_duration(sum(seconds))} | {statistics.median(seconds):.0f} s | "
            f"{statistics.median(rates) if rates else math.nan:.1f} | {mAP} |")


def collected_cases(path: str | Path) -> str:
    """What a test file covers, counted by pytest's own collection: one line per test function with its
    number of cases and their ids (README's reliability paragraph quotes ``tests/test_faults.py``).

    Raises:
        ConfigError: pytest could not collect the file.
    """
    import subprocess
    import sys
    from collections import Counter

    path = Path(path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           path.name], cwd=path.parent, capture_output=True, text=True, timeout=300)
    ids = [line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line]
    if proc.returncode != 0 or not ids:
        raise ConfigError(f"pytest could not collect {path}: {(proc.stdout + proc.stderr).strip()[-300:]}")
    functions = Counter(i.split("[")[0] for i in ids)
    lines = [f"{len(ids)} cases in `{path.name}` (counted by `pytest --collect-only`):", ""]
    for name, count in functions.items():
        params = [i.split("[", 1)[1].rstrip("]") for i in ids if i.startswith(name + "[")]
        what = name.removeprefix("test_").replace("_", " ")
        lines.append(f"- {what}: {count}" + (f" ({', '.join(f'`{p}`' for p in params)})" if params else ""))
    return "\n".join(lines)


#: a generated table in README: ``<!-- report: PATH -->`` table ``<!-- /report -->``
_README_BLOCK = re.compile(r"(<!-- report: (?P<path>\S+) -->\n)(?P<table>.*?)(<!-- /report -->)", re.S)


def update_readme(readme: str | Path, *, check: bool = False) -> list[str]:
    """Regenerate every ``<!-- report: PATH -->`` table of a README from ``PATH`` (relative to it).

    Args:
        readme: the markdown file.
        check: only compare, write nothing.

    Returns:
        The paths whose table differed (and, unless ``check``, was rewritten).
    """
    readme = Path(readme)
    text = readme.read_text()
    stale: list[str] = []

    def table(match: re.Match) -> str:
        fresh = report(readme.parent / match["path"], footnote=False) + "\n"
        if fresh != match["table"]:
            stale.append(match["path"])
        return match.group(1) + fresh + match.group(4)

    new = _README_BLOCK.sub(table, text)
    if stale and not check:
        readme.write_text(new)
    return stale


def readme_blocks(readme: str | Path) -> list[str]:
    """The results paths of a README's generated tables."""
    return [m["path"] for m in _README_BLOCK.finditer(Path(readme).read_text())]

