"""Dataset readers: real crops in ../shared/data, naming rules on generated files, CSV, MSMT17 lists."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.data import DatasetError, load_dataset
from workbench.data.loaders import ImageDataset
from workbench.data.transforms import EvalTransform


def _touch_jpg(path: Path, colour=(120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), colour).save(path)
    return path


def _market(root: Path, names: dict[str, list[str]]) -> Path:
    for sub, files in names.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in files:
            _touch_jpg(root / sub / name)
    return root


# ----------------------------------------------------------------------------- real data

def test_mini_market_counts(shared_data: Path) -> None:
    split = load_dataset("market1501", shared_data / "mini-market1501")
    counts = split.counts()
    assert counts["train"] == {"images": 32, "ids": 16, "cameras": 6}
    assert counts["query"] == {"images": 32, "ids": 16, "cameras": 6}
    assert counts["gallery"] == {"images": 32, "ids": 16, "cameras": 6}
    assert sorted({s.pid for s in split.train}) == list(range(16))  # relabeled
    assert sorted({s.camid for s in split.train}) == list(range(6))
    assert sorted({s.camid for s in split.query}) == [1, 2, 3, 4, 5, 6]  # kept as read
    assert {s.pid for s in split.query} == {s.pid for s in split.gallery}


def test_cuhk01_market_counts(shared_data: Path) -> None:
    split = load_dataset("market1501", shared_data / "cuhk01-market")
    counts = split.counts()
    assert counts["train"] == {"images": 1940, "ids": 485, "cameras": 2}
    assert counts["query"] == {"images": 972, "ids": 486, "cameras": 1}
    assert counts["gallery"] == {"images": 972, "ids": 486, "cameras": 1}
    assert {s.camid for s in split.query} == {1} and {s.camid for s in split.gallery} == {2}
    assert min(s.pid for s in split.query) == 486 and max(s.pid for s in split.query) == 971


def test_cuhk03_msmt_counts_and_reference(shared_data: Path) -> None:
    split = load_dataset("msmt17", shared_data / "cuhk03-msmt")
    counts = split.counts()
    assert counts["train"] == {"images": 7239, "ids": 743, "cameras": 2}
    assert counts["query"] == {"images": 451, "ids": 100, "cameras": 1}
    assert counts["gallery"] == {"images": 487, "ids": 100, "cameras": 1}
    reference = split.reference()
    assert len(reference) == 7239 + 451 + 487
    assert sorted({s.pid for s in reference}) == list(range(843))  # train and test ids kept apart
    assert sorted({s.camid for s in reference}) == [0, 1]


# ----------------------------------------------------------------------------- Market naming rules

def test_market_junk_and_distractors(tmp_path: Path) -> None:
    root = _market(tmp_path / "m", {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "-1_c1s1_000001_00.jpg",
                               "0007_c2s1_000001_01.jpg", "0000_c1s1_000001_00.jpg"],
        "query": ["0010_c1s1_000451_01.jpg", "0000_c2s1_000002_00.jpg", "-1_c2s1_000002_00.jpg"],
        "bounding_box_test": ["0010_c2s1_000451_01.jpg", "0000_c3s1_000003_00.jpg", "-1_c3s1_000003_00.jpg"],
    })
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")  # Market ships these
    split = load_dataset("market1501", root)
    assert [(s.pid, s.camid) for s in split.train] == [(0, 0), (0, 2), (1, 1)]
    assert [s.pid for s in split.query] == [10]
    assert sorted(s.pid for s in split.gallery) == [0, 10]
    assert [s.camid for s in split.gallery if s.pid == 0] == [3]
    assert split.raw_train[0].pid == 2


def test_dukemtmc_naming(tmp_path: Path) -> None:
    root = _market(tmp_path / "DukeMTMC-reID", {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c5_f0051781.jpg"],
    })
    split = load_dataset("dukemtmc", tmp_path)  # a parent folder holding DukeMTMC-reID
    assert split.name == "dukemtmc" and split.root == root
    assert [(s.pid, s.camid) for s in split.query] == [(5, 2)]


def test_market_bad_name_names_the_file(tmp_path: Path) -> None:
    root = _market(tmp_path / "m", {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "person_12.jpg"],
        "query": ["0010_c1s1_000451_01.jpg"], "bounding_box_test": ["0010_c2s1_000451_01.jpg"],
    })
    with pytest.raises(DatasetError, match=r"person_12\.jpg.*naming convention.*Market-1501 layout"):
        load_dataset("market1501", root)


def test_market_missing_folder_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing folder .*nowhere.*Market-1501 layout"):
        load_dataset("market1501", tmp_path / "nowhere")
    root = _market(tmp_path / "m", {"bounding_box_train": ["0002_c1s1_000451_03.jpg"],
                                    "query": [], "bounding_box_test": ["0010_c2s1_000451_01.jpg"]})
    with pytest.raises(DatasetError, match=r"empty split 'query'.*query"):
        load_dataset("market1501", root)


def test_unknown_dataset_and_missing_root() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'cuhk99'"):
        load_dataset("cuhk99", "/tmp")
    with pytest.raises(DatasetError, match="needs a root"):
        load_dataset("market1501")


# ----------------------------------------------------------------------------- MSMT17 lists

def _msmt(root: Path, v2: bool = False) -> Path:
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    lists = {
        "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0), ("0001/0001_003_07_0303noon_0002_0.jpg", 1)],
        "list_val.txt": [("0001/0001_004_15_0303noon_0003_0.jpg", 1)],
        "list_query.txt": [("0000/0000_000_02_0303morning_0001_0.jpg", 0)],
        "list_gallery.txt": [("0000/0000_001_05_0303morning_0002_0.jpg", 0)],
    }
    for name, rows in lists.items():
        image_dir = root / (test_dir if name in ("list_query.txt", "list_gallery.txt") else train_dir)
        for rel, _ in rows:
            _touch_jpg(image_dir / rel)
        (root / name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return root


@pytest.mark.parametrize("v2", [False, True])
def test_msmt17_lists(tmp_path: Path, v2: bool) -> None:
    split = load_dataset("msmt17", _msmt(tmp_path / "msmt", v2))
    assert [(s.pid, s.camid) for s in split.train] == [(0, 0), (1, 1), (1, 2)]  # cams 1, 7, 15 relabeled
    assert [(s.pid, s.camid) for s in split.query] == [(0, 2)]
    assert [(s.pid, s.camid) for s in split.gallery] == [(0, 5)]
    reference = split.reference()  # test id 0 is another person than train id 0
    assert sorted({s.pid for s in reference}) == [0, 1, 2]
    assert sorted({s.camid for s in reference}) == [0, 1, 2, 3, 4]


def test_msmt17_missing_image_names_list_and_line(tmp_path: Path) -> None:
    root = _msmt(tmp_path / "msmt")
    (root / "train" / "0001" / "0001_003_07_0303noon_0002_0.jpg").unlink()
    with pytest.raises(DatasetError, match=r"list_train\.txt:2: points to a missing image"):
        load_dataset("msmt17", root)


def test_msmt17_bad_line_and_bad_name(tmp_path: Path) -> None:
    root = _msmt(tmp_path / "msmt")
    (root / "list_query.txt").write_text("0000/0000_000_02_0303morning_0001_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt:1: cannot parse"):
        load_dataset("msmt17", root)
    (root / "list_query.txt").write_text("0000/broken.jpg 0\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt:1: file name .*broken\.jpg.*naming convention"):
        load_dataset("msmt17", root)


def test_msmt17_missing_list(tmp_path: Path) -> None:
    root = _msmt(tmp_path / "msmt")
    (root / "list_gallery.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing list file .*list_gallery\.txt"):
        load_dataset("msmt17", root)


# ----------------------------------------------------------------------------- CSV

def test_csv_reader(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _touch_jpg(tmp_path / "img" / name)
    (tmp_path / "set.csv").write_text(
        "path,pid,camid,split\nimg/a.jpg,7,3,train\nimg/b.jpg,9,1,train\nimg/c.jpg,4,0,query\n"
        f"{tmp_path / 'img' / 'd.jpg'},4,1,gallery\nimg/d.jpg,-1,1,gallery\n"
    )
    split = load_dataset("csv", tmp_path / "set.csv")
    assert [(s.pid, s.camid) for s in split.train] == [(0, 1), (1, 0)]
    assert [(s.pid, s.camid) for s in split.query] == [(4, 0)]
    assert [(s.pid, s.camid) for s in split.gallery] == [(4, 1)]  # the pid -1 row is skipped
    assert Path(split.train[0].path) == tmp_path / "img" / "a.jpg"


def test_csv_errors(tmp_path: Path) -> None:
    _touch_jpg(tmp_path / "a.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,pid,split\na.jpg,1,train\n")
    with pytest.raises(DatasetError, match=r"missing columns \['camid'\]"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\na.jpg,1,0,test\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:2: split 'test'"):
        load_dataset("csv", bad)
    bad.write_text("path,pid,camid,split\nmissing.jpg,1,0,train\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:2: points to a missing image .*missing\.jpg"):
        load_dataset("csv", bad)


# ----------------------------------------------------------------------------- corrupt images

def test_corrupt_image_error_names_the_file(tmp_path: Path) -> None:
    root = _market(tmp_path / "m", {"bounding_box_train": ["0002_c1s1_000451_03.jpg"],
                                    "query": ["0010_c1s1_000451_01.jpg"],
                                    "bounding_box_test": ["0010_c2s1_000451_01.jpg"]})
    broken = root / "query" / "0010_c1s1_000451_01.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    split = load_dataset("market1501", root)  # reading the names does not open the images
    dataset = ImageDataset(split.query, EvalTransform((32, 16)))
    with pytest.raises(DatasetError, match=r"cannot read image .*0010_c1s1_000451_01\.jpg"):
        dataset[0]
    ok = ImageDataset(split.train, EvalTransform((32, 16)))[0]
    assert ok["img"].shape == (3, 32, 16) and ok["img"].dtype == torch.float32
