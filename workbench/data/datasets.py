"""Dataset readers: Market-1501 / DukeMTMC-reID, MSMT17 (V1/V2 list files), CSV, and the synthetic default.

Every reader returns a :class:`Split` of three lists of :class:`Sample` ``(path, pid, camid)``
(open-reid style). Training identities and cameras are relabeled to contiguous integers starting at
0; query and gallery keep the ids and cameras as read from the file names, so that evaluation sees
the dataset's own labels.

Example:
    >>> split = load_dataset("market1501", "/data/Market-1501-v15.09.15")   # doctest: +SKIP
    >>> split.describe()                                                    # doctest: +SKIP
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from workbench.errors import WorkbenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

MARKET_LAYOUT = (
    "Market-1501 layout: <root>/bounding_box_train, <root>/query, <root>/bounding_box_test holding "
    "images named PPPP_cC..._.jpg (pid PPPP, camera C; pid -1 = junk, 0000 = distractor)"
)
MSMT17_LAYOUT = (
    "MSMT17 layout: <root>/list_train.txt, list_val.txt, list_query.txt, list_gallery.txt with lines "
    "'PPPP/PPPP_NNN_CC_..._0.jpg PID' and the images under <root>/train + <root>/test (V1) or "
    "<root>/mask_train_v2 + <root>/mask_test_v2 (V2)"
)
CSV_LAYOUT = (
    "CSV layout: a header 'path,pid,camid,split' and one row per image; split is train, query or "
    "gallery; relative paths are relative to the CSV file's folder"
)


class DatasetError(WorkbenchError, ValueError):
    """A dataset on disk does not match the layout its reader expects."""


class Sample(NamedTuple):
    """One image: its file, identity and camera."""

    path: str
    pid: int
    camid: int


@dataclass
class Split:
    """A dataset's three splits (lists of :class:`Sample`).

    Attributes:
        name: reader name, e.g. ``"market1501"``.
        root: folder (or CSV file) it was read from.
        train: training images, pids and camids relabeled to ``0..n-1``.
        query: query images, labels as read.
        gallery: gallery images, labels as read (pid 0 = distractor in Market-style sets).
        distractor_pid: the pid that marks distractors (0 for Market/Duke, None otherwise).
        separate_test_ids: test ids live in their own numbering space (MSMT17: train pid 0 and
            test pid 0 are different persons), which :meth:`reference` must keep apart.
        raw_train: the training images with their labels as read (before relabeling).
    """

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    distractor_pid: int | None = None
    separate_test_ids: bool = False
    raw_train: list[Sample] = field(default_factory=list, repr=False)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    def counts(self) -> dict[str, dict[str, int]]:
        """Images, identities and cameras per split."""
        out = {}
        for part in ("train", "query", "gallery"):
            samples = getattr(self, part)
            out[part] = {
                "images": len(samples),
                "ids": len({s.pid for s in samples}),
                "cameras": len({s.camid for s in samples}),
            }
        return out

    def describe(self) -> str:
        """A small table of :meth:`counts` (what ``python -m workbench data info`` prints)."""
        lines = [f"{self.name} at {self.root}", f"  {'split':<8} {'images':>7} {'ids':>6} {'cameras':>8}"]
        for part, c in self.counts().items():
            lines.append(f"  {part:<8} {c['images']:>7} {c['ids']:>6} {c['cameras']:>8}")
        return "\n".join(lines)

    def reference(self) -> list[Sample]:
        """All labeled persons of the dataset as one reference set (MAR uses every MSMT17 identity).

        Train, query and gallery are merged; distractors are dropped; identities get contiguous
        labels ``0..Np-1`` (one reference agent each) and cameras contiguous ids.
        """
        test_group = "test" if self.separate_test_ids else "train"
        keyed = [(("train", s.pid), s) for s in (self.raw_train or self.train)]
        keyed += [
            ((test_group, s.pid), s)
            for s in self.query + self.gallery
            if self.distractor_pid is None or s.pid != self.distractor_pid
        ]
        pid_map = {k: i for i, k in enumerate(sorted({k for k, _ in keyed}))}
        cam_map = {c: i for i, c in enumerate(sorted({s.camid for _, s in keyed}))}
        return [Sample(s.path, pid_map[k], cam_map[s.camid]) for k, s in keyed]


# ----------------------------------------------------------------------------- helpers

def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"missing folder {path}; expected {layout}")
    return path


def _relabel_train(samples: list[Sample]) -> list[Sample]:
    pid_map = {p: i for i, p in enumerate(sorted({s.pid for s in samples}))}
    cam_map = {c: i for i, c in enumerate(sorted({s.camid for s in samples}))}
    return [Sample(s.path, pid_map[s.pid], cam_map[s.camid]) for s in samples]


def _nonempty(samples: list[Sample], where: Path, layout: str, part: str) -> list[Sample]:
    if not samples:
        raise DatasetError(f"empty split '{part}': no images found in {where}; expected {layout}")
    return samples


# ----------------------------------------------------------------------------- Market-1501 / Duke

_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_FOLDERS = ("Market-1501-v15.09.15", "market1501", "Market-1501", "DukeMTMC-reID", "dukemtmc-reid")


def _read_market_dir(folder: Path, *, keep_distractors: bool) -> list[Sample]:
    samples = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # Market-1501 ships Thumbs.db files
        match = _MARKET_NAME.match(path.name)
        if match is None:
            raise DatasetError(
                f"file name {path} breaks the naming convention; expected {MARKET_LAYOUT}"
            )
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        samples.append(Sample(str(path), pid, cam))
    return samples


def _resolve_market_root(root: Path) -> Path:
    if (root / "bounding_box_train").is_dir() or not root.is_dir():
        return root
    for name in _MARKET_FOLDERS:
        if (root / name / "bounding_box_train").is_dir():
            return root / name
    return root


def read_market1501(root: str | Path, name: str = "market1501") -> Split:
    """Read a Market-1501-style folder (also DukeMTMC-reID, which uses the same naming).

    Args:
        root: the dataset folder (or a folder holding ``Market-1501-v15.09.15`` / ``DukeMTMC-reID``).
        name: the name recorded in the split.

    Returns:
        A :class:`Split`; pid -1 junk is skipped, pid 0 distractors are kept in the gallery only.
    """
    root = _resolve_market_root(Path(root).expanduser())
    _require_dir(root, MARKET_LAYOUT)
    parts = {}
    for part, sub in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        folder = _require_dir(root / sub, MARKET_LAYOUT)
        samples = _read_market_dir(folder, keep_distractors=part == "gallery")
        parts[part] = _nonempty(samples, folder, MARKET_LAYOUT, part)
    return Split(
        name, root, _relabel_train(parts["train"]), parts["query"], parts["gallery"],
        distractor_pid=0, raw_train=parts["train"],
    )


# ----------------------------------------------------------------------------- MSMT17

def _read_msmt_list(list_file: Path, image_dir: Path) -> list[Sample]:
    samples = []
    with open(list_file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"{list_file}:{lineno}: cannot parse {line!r}; expected {MSMT17_LAYOUT}"
                )
            rel, pid = fields[0], int(fields[1])
            parts = Path(rel).name.split("_")
            if len(parts) < 4 or not parts[2].isdigit():
                raise DatasetError(
                    f"{list_file}:{lineno}: file name {rel!r} breaks the naming convention "
                    f"(camera = third '_' field); expected {MSMT17_LAYOUT}"
                )
            path = image_dir / rel
            if not path.is_file():
                raise DatasetError(f"{list_file}:{lineno}: points to a missing image {path}")
            samples.append(Sample(str(path), pid, int(parts[2])))
    return samples


def read_msmt17(root: str | Path, name: str = "msmt17") -> Split:
    """Read MSMT17 (V1 ``train/``+``test/`` or V2 ``mask_train_v2/``+``mask_test_v2/``) via its list files.

    ``list_val.txt`` (optional, may be empty) is merged into train, as torchreid does.

    Args:
        root: the folder holding the list files.
        name: the name recorded in the split.
    """
    root = Path(root).expanduser()
    if root.is_dir() and not (root / "list_train.txt").is_file():
        for sub in ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17"):
            if (root / sub / "list_train.txt").is_file():
                root = root / sub
                break
    _require_dir(root, MSMT17_LAYOUT)
    if (root / "mask_train_v2").is_dir():
        train_dir, test_dir = root / "mask_train_v2", root / "mask_test_v2"
    else:
        train_dir, test_dir = root / "train", root / "test"
    parts: dict[str, list[Sample]] = {}
    for part, lists, image_dir in (
        ("train", ("list_train.txt", "list_val.txt"), train_dir),
        ("query", ("list_query.txt",), test_dir),
        ("gallery", ("list_gallery.txt",), test_dir),
    ):
        samples: list[Sample] = []
        for i, list_name in enumerate(lists):
            list_file = root / list_name
            if not list_file.is_file():
                if i == 0:
                    raise DatasetError(f"missing list file {list_file}; expected {MSMT17_LAYOUT}")
                continue
            _require_dir(image_dir, MSMT17_LAYOUT)
            samples += _read_msmt_list(list_file, image_dir)
        parts[part] = _nonempty(samples, root / lists[0], MSMT17_LAYOUT, part)
    return Split(
        name, root, _relabel_train(parts["train"]), parts["query"], parts["gallery"],
        separate_test_ids=True, raw_train=parts["train"],
    )


# ----------------------------------------------------------------------------- CSV

def read_csv_dataset(path: str | Path, name: str = "csv") -> Split:
    """Read a CSV file with columns ``path,pid,camid,split`` (split: train / query / gallery).

    Args:
        path: the CSV file (or a folder holding exactly one ``*.csv``).
        name: the name recorded in the split.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise DatasetError(f"{path} holds {len(found)} .csv files, expected one; {CSV_LAYOUT}")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"missing CSV file {path}; expected {CSV_LAYOUT}")
    parts: dict[str, list[Sample]] = {"train": [], "query": [], "gallery": []}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "pid", "camid", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}; expected {CSV_LAYOUT}")
        for lineno, row in enumerate(reader, 2):
            try:
                pid, camid = int(row["pid"]), int(row["camid"])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}:{lineno}: pid/camid must be integers, got {row}") from None
            part = (row["split"] or "").strip()
            if part not in parts:
                raise DatasetError(f"{path}:{lineno}: split {part!r} is not train/query/gallery")
            image = Path(row["path"])
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise DatasetError(f"{path}:{lineno}: points to a missing image {image}")
            if pid == -1:
                continue
            parts[part].append(Sample(str(image), pid, camid))
    for part, samples in parts.items():
        _nonempty(samples, path, CSV_LAYOUT, part)
    return Split(
        name, path, _relabel_train(parts["train"]), parts["query"], parts["gallery"],
        raw_train=parts["train"],
    )


# ----------------------------------------------------------------------------- registry

def _synthetic(role: str) -> Callable[..., Split]:
    def reader(root: str | Path | None = None, **params) -> Split:
        from workbench.data.synthetic import ensure_synthetic

        folder = ensure_synthetic(root, **params)
        if role == "target":
            return read_market1501(folder / "target", name="synthetic")
        return read_msmt17(folder / "reference", name="synthetic_reference")

    return reader


#: name → reader; every reader takes the root first.
READERS: dict[str, Callable[..., Split]] = {
    "market1501": read_market1501,
    "dukemtmc": lambda root: read_market1501(root, name="dukemtmc"),
    "msmt17": read_msmt17,
    "csv": read_csv_dataset,
    "synthetic": _synthetic("target"),
    "synthetic_reference": _synthetic("reference"),
}
_ALIASES = {"market": "market1501", "duke": "dukemtmc", "dukemtmc-reid": "dukemtmc", "msmt": "msmt17"}


def load_dataset(name: str, root: str | Path | None = None, **params) -> Split:
    """Read a dataset by name.

    Args:
        name: one of ``market1501``, ``dukemtmc``, ``msmt17``, ``csv``, ``synthetic`` (the embedded
            target domain, Market layout) or ``synthetic_reference`` (its reference domain, MSMT17
            layout).
        root: the dataset folder (a CSV file for ``csv``). For the synthetic sets it may be None: the
            data is generated once under ``WORKBENCH_DATA`` (see :mod:`workbench.paths`).
        **params: synthetic generator parameters (seed, sizes, cameras); invalid for other readers.

    Returns:
        A :class:`Split`.

    Example:
        >>> split = load_dataset("synthetic")            # doctest: +SKIP
        >>> print(split.describe())                      # doctest: +SKIP
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in READERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    if key.startswith("synthetic"):
        return READERS[key](root, **params)
    if params:
        raise DatasetError(f"dataset {name!r} takes no parameters, got {sorted(params)}")
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a root folder (pass root=... or --root)")
    return READERS[key](root)
