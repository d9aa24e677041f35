"""The synthetic default: deterministic, disjoint identities, cross-camera views, camera shifts."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data import SyntheticSpec, ensure_synthetic, generate, load_dataset

SMALL = dict(target_train_ids=6, target_test_ids=5, target_cameras=3, reference_ids=8, reference_test_ids=2,
             reference_images_per_id=4, target_distractors=2)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_identical_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", SyntheticSpec(seed=5, **SMALL))
    generate(tmp_path / "b", SyntheticSpec(seed=5, **SMALL))
    generate(tmp_path / "c", SyntheticSpec(seed=6, **SMALL))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert a != c


def test_layouts_counts_and_disjoint_identities(tmp_path: Path) -> None:
    folder = ensure_synthetic(tmp_path / "syn", **SMALL)
    target = load_dataset("synthetic", folder)
    reference = load_dataset("synthetic_reference", folder)
    assert target.num_train_pids == 6
    assert len({s.pid for s in target.query}) == 5
    assert sum(s.pid == 0 for s in target.gallery) == 2  # distractors
    ref = reference.reference()
    assert len({s.pid for s in ref}) == 8 and len(ref) == 8 * 4
    # identities are disjoint: no reference image equals a target image's person (different seeds
    # per domain); check on file content and on the drawing attributes
    from workbench.data.synthetic import _REFERENCE, _TARGET, _identity
    t_ids = {tuple(_identity(0, _TARGET, p)["top"]) + tuple(_identity(0, _TARGET, p)["bottom"]) for p in range(1, 12)}
    r_ids = {tuple(_identity(0, _REFERENCE, p)["top"]) + tuple(_identity(0, _REFERENCE, p)["bottom"]) for p in range(8)}
    assert not t_ids & r_ids
    assert not set(_digest(folder / "target").values()) & set(_digest(folder / "reference").values())


def test_every_target_id_seen_by_two_cameras_and_queries_have_matches(tmp_path: Path) -> None:
    target = load_dataset("synthetic", tmp_path / "syn", **SMALL)
    cams = defaultdict(set)
    for s in target.raw_train + target.query + target.gallery:
        cams[s.pid].add(s.camid)
    cams.pop(0, None)
    assert all(len(c) >= 2 for c in cams.values())
    for q in target.query:  # a cross-camera match exists for every query
        assert any(g.pid == q.pid and g.camid != q.camid for g in target.gallery)


def test_cameras_shift_appearance(tmp_path: Path) -> None:
    target = load_dataset("synthetic", tmp_path / "syn", **SMALL)
    means = defaultdict(list)
    for s in target.raw_train:
        means[s.camid].append(np.asarray(Image.open(s.path), dtype=np.float32).mean(axis=(0, 1)))
    per_cam = np.stack([np.mean(v, axis=0) for v in means.values()])  # (C, 3) mean colour per camera
    assert np.ptp(per_cam, axis=0).max() > 8.0  # cameras differ in colour/brightness


def test_ensure_synthetic_reuses_and_checks_parameters(tmp_path: Path) -> None:
    folder = ensure_synthetic(tmp_path / "syn", **SMALL)
    stamp = (folder / "synthetic.json").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path / "syn", **SMALL) == folder
    assert (folder / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        ensure_synthetic(tmp_path / "syn", **{**SMALL, "seed": 9})
    with pytest.raises(ValueError, match="unknown synthetic parameters"):
        ensure_synthetic(tmp_path / "other", colour="red")
    with pytest.raises(ValueError, match="target_cameras must be >= 2"):
        SyntheticSpec(target_cameras=1)


def test_default_location_under_workbench_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    split = load_dataset("synthetic", **SMALL)
    assert Path(split.root).parent.parent == tmp_path
    assert Path(split.root).parent.name.startswith("synthetic-")
