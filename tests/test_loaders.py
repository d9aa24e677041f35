"""Transforms, samplers and loaders: determinism, sharding, mixed batch composition."""
from __future__ import annotations


import pytest
import torch

from workbench.data import ImageCache, MixedLoader, build_test_loader, build_train_loader, load_dataset
from workbench.data.loaders import EpochSampler, StreamSampler
from workbench.data.transforms import TrainTransform

SMALL = dict(target_train_ids=6, target_test_ids=4, target_cameras=3, reference_ids=10, reference_test_ids=2,
             reference_images_per_id=4, target_distractors=1)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "syn"
    return load_dataset("synthetic", root, **SMALL), load_dataset("synthetic_reference", root, **SMALL).reference()


def test_train_transform_flip_and_crop_are_seeded() -> None:
    img = torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8)
    t = TrainTransform((32, 16), pad=3)
    a = t(img, torch.Generator().manual_seed(1))
    b = t(img, torch.Generator().manual_seed(1))
    assert a.shape == (3, 32, 16) and torch.equal(a, b)
    outs = {t(img, torch.Generator().manual_seed(s)).sum().item() for s in range(20)}
    assert len(outs) > 5  # flips and crops vary with the seed


def test_epoch_sampler_covers_shards_and_repeats() -> None:
    s0 = EpochSampler(10, seed=3, rank=0, world_size=2)
    s1 = EpochSampler(10, seed=3, rank=1, world_size=2)
    i0, i1 = [i for i, _ in s0], [i for i, _ in s1]
    assert sorted(i0 + i1) == list(range(10)) and len(i0) == len(i1) == 5
    assert list(s0) == list(EpochSampler(10, seed=3, rank=0, world_size=2))
    s0.set_epoch(1)
    assert [i for i, _ in s0] != i0


def test_stream_sampler_cycles_and_resumes() -> None:
    s = StreamSampler(7, per_epoch=5, seed=1)
    epochs = []
    for e in range(7):  # 35 positions = 5 full passes over 7 items
        s.set_epoch(e)
        epochs.append([i for i, _ in s])
    flat = sum(epochs, [])
    for p in range(5):
        assert sorted(flat[p * 7:(p + 1) * 7]) == list(range(7))
    fresh = StreamSampler(7, per_epoch=5, seed=1)
    fresh.set_epoch(4)  # resume at epoch 4 without replaying 0..3
    assert [i for i, _ in fresh] == epochs[4]


@pytest.mark.parametrize("epoch_length", ["reference", "target"])
def test_mixed_loader_batches(domains, epoch_length) -> None:
    target, reference = domains
    loader = MixedLoader(target.train, reference, n_target=6, n_reference=4, image_size=(32, 16), pad=2, seed=0,
                         epoch_length=epoch_length)
    loader.set_epoch(0)
    batches = list(loader)
    passed, n = (reference, 4) if epoch_length == "reference" else (target.train, 6)
    assert len(batches) == len(loader) == len(passed) // n
    seen_t, seen_r = [], []
    for t, r in batches:
        assert set(t) == {"img", "index", "camid"}  # no labels on the target half
        assert set(r) == {"img", "index", "camid", "pid"}
        assert t["img"].shape == (6, 3, 32, 16) and r["img"].shape == (4, 3, 32, 16)
        assert torch.equal(t["camid"], torch.tensor([target.train[i].camid for i in t["index"].tolist()]))
        assert torch.equal(r["pid"], torch.tensor([reference[i].pid for i in r["index"].tolist()]))
        seen_t += t["index"].tolist()
        seen_r += r["index"].tolist()
    once = seen_r if epoch_length == "reference" else seen_t
    assert len(set(once)) == len(once) == len(loader) * n  # one pass over the epoch's set, full batches
    assert max(r["pid"].max().item() for _, r in batches) < len({s.pid for s in reference})


def test_mixed_loader_is_deterministic_with_cache_and_workers(domains) -> None:
    target, reference = domains
    kw = dict(n_target=6, n_reference=4, image_size=(32, 16), pad=2, seed=4)
    plain = MixedLoader(target.train, reference, **kw)
    cached = MixedLoader(target.train, reference, **kw, workers=2,
                         target_cache=ImageCache(target.train, (32, 16)),
                         reference_cache=ImageCache(reference, (32, 16)))
    for loader in (plain, cached):
        loader.set_epoch(2)
    for (ta, ra), (tb, rb) in zip(plain, cached):
        assert torch.equal(ta["index"], tb["index"]) and torch.equal(ra["index"], rb["index"])
        assert torch.allclose(ta["img"], tb["img"]) and torch.allclose(ra["img"], rb["img"])


def test_reference_epoch_restarts_the_target_loader(domains) -> None:
    """The official epoch: one pass over the (larger) reference set; the target set is reshuffled and
    passed again whenever it runs out, each of its passes a permutation."""
    target, reference = domains
    loader = MixedLoader(target.train, reference, n_target=6, n_reference=4, image_size=(32, 16))
    assert len(reference) // 4 * 6 > len(target.train)  # the target must cycle within one epoch
    loader.set_epoch(0)
    seen = [i for t, _ in loader for i in t["index"].tolist()]
    n = len(target.train)
    first, second = seen[:n], seen[n:2 * n]
    assert sorted(first) == list(range(n))
    assert sorted(second) == sorted(set(second)) and first != second[:len(first)]  # reshuffled
    with pytest.raises(ValueError, match="n_target 999 exceeds"):
        MixedLoader(target.train, reference, n_target=999, n_reference=4, image_size=(32, 16))
    with pytest.raises(ValueError, match="epoch_length"):
        MixedLoader(target.train, reference, n_target=6, n_reference=4, image_size=(32, 16), epoch_length="longer")


def test_train_and_test_loaders(domains) -> None:
    target, reference = domains
    train = build_train_loader(reference, image_size=(32, 16), batch_size=8, pad=2)
    train.sampler.set_epoch(0)
    batch = next(iter(train))
    assert batch["img"].shape == (8, 3, 32, 16) and batch["pid"].dtype == torch.int64
    test = build_test_loader(target.query, image_size=(32, 16), batch_size=5)
    got = torch.cat([b["index"] for b in test])
    assert torch.equal(got, torch.arange(len(target.query)))  # dataset order, nothing dropped
    with pytest.raises(ValueError, match="exceeds"):
        build_train_loader(reference[:3], image_size=(32, 16), batch_size=8)
