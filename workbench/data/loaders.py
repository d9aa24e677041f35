"""Datasets, samplers and loaders: reference batches, target batches, mixed target+reference batches.

Batches are dicts. Labeled images give ``{"img", "pid", "camid", "index"}``; unlabeled target images
give ``{"img", "camid", "index"}`` (``index`` = position in the target training list, which the
multilabel memory is keyed by). Samplers are deterministic functions of (seed, epoch) and hand each
image its own augmentation seed, so an interrupted run resumes on exactly the same batches, and
they shard across DDP ranks.

Example:
    >>> loader = MixedLoader(split.train, reference, n_target=184, n_reference=184,
    ...                      image_size=(384, 128))                        # doctest: +SKIP
    >>> for target, reference in loader: ...                               # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from workbench.data.datasets import Sample
from workbench.errors import ConfigError
from workbench.data.transforms import EvalTransform, TrainTransform, read_image, resize

log = logging.getLogger("workbench.data")


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63))


class ImageCache:
    """Every image decoded once and resized to ``image_size``: an ``(N, 3, H, W)`` uint8 tensor.

    Worth it for small and medium datasets (Market-1501 at 128×64: about 320 MB; at 384×128 about
    2.5 GB): JPEG decoding otherwise dominates CPU training. Placed in shared memory so DataLoader
    workers read it without copies.

    Args:
        samples: the images.
        image_size: (height, width) they are resized to.
        threads: decoding threads (decoding releases the GIL).
    """

    def __init__(self, samples: Sequence[Sample], image_size: tuple[int, int], threads: int = 4,
                 log_every_s: float = 10.0) -> None:
        self.image_size = tuple(image_size)
        h, w = self.image_size
        n = len(samples)
        self.images = torch.empty((n, 3, h, w), dtype=torch.uint8)  # (N, 3, H, W)

        def load(i: int) -> None:
            self.images[i] = resize(read_image(samples[i].path), self.image_size)

        start = last = time.perf_counter()
        log.info("decoding %d images at %dx%d into memory (once per run)", n, h, w)
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for done, _ in enumerate(pool.map(load, range(n)), 1):
                now = time.perf_counter()
                if now - last >= log_every_s and done < n:
                    last = now
                    log.info("decoded %d/%d images (%.0f images/s)", done, n, done / (now - start))
        log.info("decoded %d images in %.1f s", n, time.perf_counter() - start)
        self.images.share_memory_()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class ImageDataset(Dataset):
    """Samples → transformed images with their labels.

    Args:
        samples: list of :class:`Sample`.
        transform: a :class:`TrainTransform` or :class:`EvalTransform`.
        cache: optional :class:`ImageCache` of the same samples.
        labeled: False hides the pid (the unlabeled target domain).

    Items are requested either by index or by ``(index, augmentation_seed)`` from the samplers below.
    """

    def __init__(self, samples: Sequence[Sample], transform, *, cache: ImageCache | None = None,
                 labeled: bool = True) -> None:
        if cache is not None and len(cache) != len(samples):
            raise ValueError(f"cache holds {len(cache)} images for {len(samples)} samples")
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.labeled = labeled

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        img = self.cache[index] if self.cache is not None else read_image(sample.path)
        generator = torch.Generator().manual_seed(aug_seed) if aug_seed is not None else None
        item = {"img": self.transform(img, generator), "camid": sample.camid, "index": index}
        if self.labeled:
            item["pid"] = sample.pid
        return item


class EpochSampler(Sampler):
    """One shuffled pass over ``n`` items per epoch, sharded over ranks, with augmentation seeds.

    Args:
        n: dataset size.
        seed: base seed; the order of epoch ``e`` depends only on (seed, e).
        shuffle: False keeps the dataset order (evaluation).
        rank, world_size: DDP shard (every rank gets the same number of items).
        drop_last: drop the tail so that every rank's share divides into full batches of ``batch_size``.
        batch_size: used with ``drop_last``.
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, batch_size: int = 1, stream: int = 0) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.stream = stream
        per_rank = n // world_size
        self.num_items = (per_rank // batch_size) * batch_size if drop_last else per_rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = _epoch_generator(self.seed, self.epoch, self.stream)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        aug = torch.randint(0, 2**62, (self.n,), generator=g)
        take = torch.arange(self.rank, self.num_items * self.world_size, self.world_size)
        yield from zip(order[take].tolist(), aug[take].tolist())


class StreamSampler(Sampler):
    """A fixed number of items per epoch drawn from an endless stream of reshuffled passes.

    Used for the reference half of mixed batches: epoch ``e`` takes stream positions
    ``[e·L, (e+1)·L)`` where pass ``p`` of the stream is a permutation seeded by (seed, p), so the
    shorter dataset cycles and every image is visited once per pass, and resuming at any epoch
    reproduces the stream.
    """

    def __init__(self, n: int, per_epoch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 stream: int = 1) -> None:
        self.n, self.per_epoch, self.seed = n, per_epoch, seed
        self.rank, self.world_size, self.stream = rank, world_size, stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.per_epoch * self.world_size  # global positions consumed per epoch
        start = self.epoch * total
        positions = torch.arange(start + self.rank, start + total, self.world_size)
        passes = positions // self.n
        out_index = torch.empty_like(positions)
        out_aug = torch.empty_like(positions)
        for p in passes.unique().tolist():  # at most a few passes per epoch
            g = _epoch_generator(self.seed, p, self.stream)
            perm = torch.randperm(self.n, generator=g)
            aug = torch.randint(0, 2**62, (self.n,), generator=g)
            sel = passes == p
            offset = positions[sel] % self.n
            out_index[sel] = perm[offset]
            out_aug[sel] = aug[offset]
        yield from zip(out_index.tolist(), out_aug.tolist())


class PseudoIdentitySampler(Sampler):
    """Identity-balanced (P×K) batches over pseudo labels: each batch takes P = batch_size // K labels
    and K images of each (drawn with replacement from a cluster smaller than K); images labelled −1
    (outliers) are never drawn. ``num_batches`` batches per rank and epoch, in batch order; the draw
    depends only on (seed, epoch).

    Args:
        labels: (N,) pseudo label of every image (−1: outlier).
        batch_size: images per batch on this rank (a multiple of ``instances``).
        instances: K, images per label in a batch.
        num_batches: batches per rank and epoch.
        seed, rank, world_size: as :class:`EpochSampler`.
    """

    def __init__(self, labels: Sequence[int], *, batch_size: int, instances: int, num_batches: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, stream: int = 2) -> None:
        if instances < 1 or batch_size % instances:
            raise ConfigError(f"batch size {batch_size} is not a multiple of {instances} instances per label")
        labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.members = [torch.nonzero(labels == c).flatten() for c in labels[labels >= 0].unique().tolist()]
        if not self.members:
            raise ConfigError("no pseudo label: every image is an outlier")
        self.batch_size, self.instances, self.num_batches = batch_size, instances, num_batches
        self.seed, self.rank, self.world_size, self.stream = seed, rank, world_size, stream
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = _epoch_generator(self.seed, self.epoch, self.stream)
        p, k, c = self.batch_size // self.instances, self.instances, len(self.members)
        for b in range(self.num_batches * self.world_size):
            chosen = torch.randperm(c, generator=g)[:p] if c >= p else torch.randint(0, c, (p,), generator=g)
            picks = []
            for label in chosen.tolist():
                m = self.members[label]
                pick = m[torch.randperm(len(m), generator=g)[:k]] if len(m) >= k else \
                    m[torch.randint(0, len(m), (k,), generator=g)]
                picks.append(pick)
            index = torch.cat(picks)
            aug = torch.randint(0, 2**62, (len(index),), generator=g)
            if b % self.world_size == self.rank:
                yield from zip(index.tolist(), aug.tolist())


def build_pseudo_label_loader(samples: Sequence[Sample], labels: Sequence[int], *, image_size: tuple[int, int],
                              batch_size: int, instances: int, num_batches: int, pad: int = 7, workers: int = 0,
                              seed: int = 0, rank: int = 0, world_size: int = 1, cache: ImageCache | None = None,
                              pin_memory: bool = False) -> DataLoader:
    """Augmented P×K batches of unlabeled images by their pseudo labels (:class:`PseudoIdentitySampler`;
    call ``loader.sampler.set_epoch(e)``). Items carry ``index`` (the dataset index), never the pid."""
    dataset = ImageDataset(samples, TrainTransform(image_size, pad=pad), cache=cache, labeled=False)
    sampler = PseudoIdentitySampler(labels, batch_size=batch_size, instances=instances, num_batches=num_batches,
                                    seed=seed, rank=rank, world_size=world_size)
    return _loader(dataset, sampler, batch_size, workers=workers, pin_memory=pin_memory, drop_last=True)


def _loader(dataset: Dataset, sampler: Sampler, batch_size: int, *, workers: int, pin_memory: bool,
            drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def build_train_loader(samples: Sequence[Sample], *, image_size: tuple[int, int], batch_size: int,
                       pad: int = 7, workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                       cache: ImageCache | None = None, pin_memory: bool = False,
                       labeled: bool = True) -> DataLoader:
    """A shuffled, augmented loader of full batches (call ``loader.sampler.set_epoch(e)`` each epoch).

    Args:
        samples: training images (the reference set for stage 1).
        image_size: (height, width).
        batch_size: images per batch on this rank.
        pad: padding of the random crop.
        workers: DataLoader worker processes.
        seed: base seed of the order and the augmentation.
        rank, world_size: DDP shard.
        cache: optional decoded-image cache of ``samples``.
        pin_memory: pin batches for faster host→GPU copies.
        labeled: False hides the pids.
    """
    if len(samples) // world_size < batch_size:
        raise ConfigError(f"batch_size {batch_size} exceeds the {len(samples) // world_size} images per rank")
    dataset = ImageDataset(samples, TrainTransform(image_size, pad=pad), cache=cache, labeled=labeled)
    sampler = EpochSampler(len(samples), seed=seed, rank=rank, world_size=world_size, drop_last=True,
                           batch_size=batch_size)
    return _loader(dataset, sampler, batch_size, workers=workers, pin_memory=pin_memory, drop_last=True)


def build_test_loader(samples: Sequence[Sample], *, image_size: tuple[int, int], batch_size: int = 128,
                      workers: int = 0, pin_memory: bool = False, cache: ImageCache | None = None,
                      labeled: bool = True) -> DataLoader:
    """Images in dataset order, resized and normalized, no augmentation."""
    dataset = ImageDataset(samples, EvalTransform(image_size), cache=cache, labeled=labeled)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)


class MixedLoader:
    """Batches of ``n_target`` unlabeled target images and ``n_reference`` labeled reference images.

    ``epoch_length="reference"`` (default, the official ``ReidTrainer.train_epoch``): one epoch is
    one shuffled pass over the reference set (full batches only), and the target half comes from an
    endless stream of reshuffled passes over the target set, i.e. the target loader restarts
    whenever it runs out (with MSMT17 → Market-1501 about 687 steps of 184 + 184, the target set
    cycling about ten times). ``epoch_length="target"`` swaps the roles: one pass over the target
    set, the reference half streamed.

    One difference from the official loaders, which do not change what a step sees: the official
    code starts a fresh target iterator at each epoch (dropping the unfinished pass), the stream
    here continues it into the next epoch.

    Args:
        target: target training samples (their pids are never yielded).
        reference: reference samples with contiguous pids (one agent each).
        n_target, n_reference: images of each domain per batch on this rank (paper: 184 + 184).
        image_size, pad: see :class:`TrainTransform`.
        workers: worker processes per domain.
        seed, rank, world_size: determinism and DDP sharding.
        target_cache, reference_cache: optional :class:`ImageCache` objects.
        pin_memory: pin the batches.
        epoch_length: ``"reference"`` (official) or ``"target"``: which set one epoch passes over.

    Yields:
        ``(target_batch, reference_batch)`` dicts; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, target: Sequence[Sample], reference: Sequence[Sample], *, n_target: int,
                 n_reference: int, image_size: tuple[int, int], pad: int = 7, workers: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 target_cache: ImageCache | None = None, reference_cache: ImageCache | None = None,
                 pin_memory: bool = False, epoch_length: str = "reference") -> None:
        if len(target) // world_size < n_target:
            raise ConfigError(f"n_target {n_target} exceeds the {len(target) // world_size} target images per rank")
        if len(reference) // world_size < n_reference:
            raise ConfigError(f"n_reference {n_reference} exceeds the {len(reference) // world_size} reference "
                              "images per rank")
        if epoch_length not in ("reference", "target"):
            raise ConfigError(f"epoch_length must be 'reference' (official) or 'target', got {epoch_length!r}")
        self.epoch_length = epoch_length
        transform = TrainTransform(image_size, pad=pad)
        target_set = ImageDataset(target, transform, cache=target_cache, labeled=False)
        reference_set = ImageDataset(reference, transform, cache=reference_cache, labeled=True)
        shard = dict(seed=seed, rank=rank, world_size=world_size)
        if epoch_length == "reference":
            self.steps = (len(reference) // world_size) // n_reference
            self.reference_sampler: Sampler = EpochSampler(len(reference), drop_last=True, batch_size=n_reference,
                                                           stream=3, **shard)
            self.target_sampler: Sampler = StreamSampler(len(target), self.steps * n_target, stream=2, **shard)
        else:
            self.steps = (len(target) // world_size) // n_target
            self.target_sampler = EpochSampler(len(target), drop_last=True, batch_size=n_target, stream=2, **shard)
            self.reference_sampler = StreamSampler(len(reference), self.steps * n_reference, stream=3, **shard)
        w_t = math.ceil(workers / 2) if workers else 0
        self.target_loader = _loader(target_set, self.target_sampler, n_target, workers=w_t,
                                     pin_memory=pin_memory, drop_last=True)
        self.reference_loader = _loader(reference_set, self.reference_sampler, n_reference,
                                        workers=workers - w_t if workers else 0, pin_memory=pin_memory,
                                        drop_last=True)

    def set_epoch(self, epoch: int) -> None:
        self.target_sampler.set_epoch(epoch)
        self.reference_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[dict, dict]]:
        return zip(self.target_loader, self.reference_loader)
