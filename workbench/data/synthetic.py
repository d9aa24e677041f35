"""The embedded default: procedurally drawn pedestrians seen by cameras that each shift appearance.

An identity is a set of clothing colours and patterns, body proportions and accessories (hair, hat,
bag); a camera has its own background, colour cast, brightness/contrast, blur, noise, framing and
preferred viewpoints (front, back, side). The same person therefore looks different from camera to
camera, which is what the cross-view loss (L_CML) and the soft multilabels have to overcome.

Two domains with disjoint identities and different camera sets are written:

- ``<out>/target``: Market-1501 layout (``bounding_box_train``, ``query``, ``bounding_box_test``,
  with a few pid-0000 distractors in the gallery), the unlabeled target domain;
- ``<out>/reference``: MSMT17_V1 layout (``train/``, ``test/`` and the four list files), the labeled
  reference domain whose identities become the reference agents.

Everything is a deterministic function of the parameters (each image has its own seed), so the same
parameters give byte-identical files.

Example:
    >>> from workbench.data.synthetic import SyntheticSpec, generate
    >>> summary = generate("/tmp/synth", SyntheticSpec(seed=1))      # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from workbench.errors import ConfigError
from workbench.paths import data_root

_SUPERSAMPLE = 2  # draw at twice the size, then downsample with antialiasing


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic domains (defaults: the demo, about 1,400 images at 128×64)."""

    seed: int = 0                     # one seed for everything
    height: int = 128                 # image height (Market-1501 crops are 128×64)
    width: int = 64                   # image width
    target_train_ids: int = 48        # unlabeled target training identities
    target_test_ids: int = 32         # target identities for query/gallery
    target_cameras: int = 4           # cameras of the target domain
    target_images_per_camera: int = 2  # images of one identity in one camera
    target_distractors: int = 8       # pid-0000 gallery images
    reference_ids: int = 64           # labeled reference identities (= reference agents)
    reference_test_ids: int = 16      # of which in MSMT17's test lists (query/gallery)
    reference_cameras: int = 6        # cameras of the reference domain
    reference_images_per_id: int = 8  # images per reference identity

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "target_distractors" and value >= 0:
                continue
            if f.name != "seed" and value < 1:
                raise ConfigError(f"SyntheticSpec.{f.name} must be >= 1, got {value}")
        if self.target_cameras < 2:
            raise ConfigError("SyntheticSpec.target_cameras must be >= 2 (cross-camera matches)")
        if self.reference_test_ids >= self.reference_ids:
            raise ConfigError("SyntheticSpec.reference_test_ids must be < reference_ids")
        if self.height < 32 or self.width < 16:
            raise ConfigError(f"synthetic images must be at least 32×16, got {self.height}×{self.width}")

    def key(self) -> str:
        """A short stable hash of the parameters (names the default cache folder)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]


# ----------------------------------------------------------------------------- appearance models

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 94], [141, 85, 54], [92, 58, 40]])
_HAIR = np.array([[20, 18, 16], [60, 40, 25], [110, 75, 40], [200, 170, 110], [150, 150, 150], [130, 40, 25]])


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A clothing colour: saturated hues, greys, black and white all occur."""
    kind = rng.random()
    if kind < 0.18:  # achromatic
        v = rng.choice([25, 60, 110, 170, 235]) + rng.integers(-10, 10)
        return np.full(3, np.clip(v, 0, 255))
    hue = rng.random()
    sat = rng.uniform(0.45, 1.0)
    val = rng.uniform(0.35, 1.0)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return (np.array(rgb) * 255).astype(int)


def _identity(seed: int, domain: int, pid: int) -> dict:
    """Everything that makes one person recognisable across cameras."""
    rng = np.random.default_rng([seed, domain, pid, 17])
    top = _colour(rng)
    return {
        "skin": _SKIN[rng.integers(len(_SKIN))],
        "hair": _HAIR[rng.integers(len(_HAIR))],
        "hair_style": rng.choice(["short", "long", "bald", "hat"], p=[0.4, 0.3, 0.1, 0.2]),
        "hat": _colour(rng),
        "top": top,
        "top2": _colour(rng),
        "pattern": rng.choice(["solid", "hstripes", "vstripes", "checks", "logo"], p=[0.35, 0.2, 0.1, 0.15, 0.2]),
        "stripe": int(rng.integers(3, 7)),
        "long_sleeves": bool(rng.random() < 0.55),
        "bottom": _colour(rng),
        "bottom_style": rng.choice(["trousers", "shorts", "skirt"], p=[0.6, 0.2, 0.2]),
        "shoes": _colour(rng) // 2,
        "bag": rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.35, 0.3, 0.2, 0.15]),
        "bag_colour": _colour(rng),
        "height": rng.uniform(0.86, 1.0),
        "build": rng.uniform(0.8, 1.2),
        "legs": rng.uniform(0.42, 0.52),
        "head": rng.uniform(0.12, 0.15),
    }


def _camera(seed: int, domain: int, cam: int) -> dict:
    """One camera's look: background, light, optics, framing and the viewpoints it tends to see."""
    rng = np.random.default_rng([seed, domain, cam, 29])
    views = rng.dirichlet([0.6, 0.6, 0.6])
    return {
        "wall": rng.integers(40, 220, 3),
        "floor": rng.integers(30, 200, 3),
        "horizon": rng.uniform(0.55, 0.85),
        "texture": rng.choice(["plain", "bricks", "stripes", "noise"]),
        "gain": rng.uniform(0.72, 1.28, 3),
        "brightness": rng.uniform(0.7, 1.3),
        "contrast": rng.uniform(0.7, 1.3),
        "blur": rng.uniform(0.0, 1.3),
        "noise": rng.uniform(0.0, 10.0),
        "scale": rng.uniform(0.74, 0.96),
        "views": views / views.sum(),
    }


def _background(draw: ImageDraw.ImageDraw, cam: dict, w: int, h: int, rng: np.random.Generator) -> None:
    horizon = int(h * cam["horizon"])
    wall = tuple(int(c) for c in np.clip(cam["wall"] + rng.integers(-12, 12, 3), 0, 255))
    floor = tuple(int(c) for c in np.clip(cam["floor"] + rng.integers(-12, 12, 3), 0, 255))
    draw.rectangle([0, 0, w, horizon], fill=wall)
    draw.rectangle([0, horizon, w, h], fill=floor)
    darker = tuple(max(0, c - 35) for c in wall)
    if cam["texture"] == "bricks":
        step = max(4, h // 16)
        for y in range(0, horizon, step):
            draw.line([0, y, w, y], fill=darker, width=1)
            off = (y // step % 2) * step
            for x in range(off, w, 2 * step):
                draw.line([x, y, x, y + step], fill=darker, width=1)
    elif cam["texture"] == "stripes":
        step = max(6, w // 5)
        for x in range(int(rng.integers(0, step)), w, step):
            draw.rectangle([x, 0, x + step // 3, horizon], fill=darker)


def _rect(draw, box, colour) -> None:
    draw.rectangle([int(v) for v in box], fill=tuple(int(c) for c in colour))


def _person(draw: ImageDraw.ImageDraw, ident: dict, view: str, cx: float, top: float, height: float,
            rng: np.random.Generator) -> None:
    """Draw one pedestrian, centred at ``cx``, head top at ``top``, ``height`` pixels tall."""
    head_h = ident["head"] * height
    leg_h = ident["legs"] * height
    torso_h = height - head_h - leg_h
    side = view == "side"
    half_w = 0.13 * height * ident["build"] * (0.62 if side else 1.0)
    neck_y = top + head_h
    hip_y = neck_y + torso_h
    foot_y = top + height
    # backpack behind the body in front/side views, over the torso in the back view
    bag = ident["bag"]
    if bag == "backpack" and view != "back":
        dx = half_w * (1.1 if side else 0.0)
        _rect(draw, (cx - half_w * 0.9 - dx, neck_y + torso_h * 0.1, cx + half_w * 0.9 - dx, hip_y - torso_h * 0.1),
              ident["bag_colour"])
    # legs (stride varies per image)
    stride = rng.uniform(0.0, 0.35) * half_w * (2.0 if side else 1.0)
    leg_w = half_w * 0.42
    lower = ident["bottom"]
    for sign in (-1, 1):
        x = cx + sign * (half_w * 0.45 + stride * 0.5 * sign * (1 if side else 0)) - (0 if not side else sign * half_w * 0.4)
        style = ident["bottom_style"]
        if style == "shorts":
            _rect(draw, (x - leg_w, hip_y, x + leg_w, hip_y + leg_h * 0.4), lower)
            _rect(draw, (x - leg_w * 0.7, hip_y + leg_h * 0.4, x + leg_w * 0.7, foot_y - leg_h * 0.08), ident["skin"])
        elif style == "skirt":
            _rect(draw, (x - leg_w * 0.7, hip_y, x + leg_w * 0.7, foot_y - leg_h * 0.08), ident["skin"])
        else:
            _rect(draw, (x - leg_w, hip_y, x + leg_w, foot_y - leg_h * 0.08), lower)
        _rect(draw, (x - leg_w * 1.1, foot_y - leg_h * 0.08, x + leg_w * 1.2, foot_y), ident["shoes"])
    if ident["bottom_style"] == "skirt":
        draw.polygon([(cx - half_w, hip_y), (cx + half_w, hip_y), (cx + half_w * 1.3, hip_y + leg_h * 0.5),
                      (cx - half_w * 1.3, hip_y + leg_h * 0.5)], fill=tuple(int(c) for c in lower))
    # torso with its pattern
    box = (cx - half_w, neck_y, cx + half_w, hip_y)
    _rect(draw, box, ident["top"])
    pattern, accent = ident["pattern"], ident["top2"]
    if pattern == "hstripes":
        step = torso_h / ident["stripe"]
        for k in range(0, ident["stripe"], 2):
            _rect(draw, (box[0], neck_y + k * step, box[2], neck_y + (k + 1) * step), accent)
    elif pattern == "vstripes":
        step = 2 * half_w / ident["stripe"]
        for k in range(0, ident["stripe"], 2):
            _rect(draw, (box[0] + k * step, neck_y, box[0] + (k + 1) * step, hip_y), accent)
    elif pattern == "checks":
        step = torso_h / 4
        for i in range(4):
            for j in range(int(2 * half_w / step) + 1):
                if (i + j) % 2 == 0:
                    _rect(draw, (box[0] + j * step, neck_y + i * step,
                                 min(box[2], box[0] + (j + 1) * step), neck_y + (i + 1) * step), accent)
    elif pattern == "logo" and view == "front":
        r = half_w * 0.45
        draw.ellipse([cx - r, neck_y + torso_h * 0.3 - r, cx + r, neck_y + torso_h * 0.3 + r],
                     fill=tuple(int(c) for c in accent))
    # arms
    arm_w = half_w * 0.32
    arms = (1,) if side else (-1, 1)
    swing = rng.uniform(-0.15, 0.15) * torso_h
    for sign in arms:
        x = cx + sign * (half_w + arm_w * 0.6) if not side else cx
        sleeve_end = hip_y if ident["long_sleeves"] else neck_y + torso_h * 0.4
        _rect(draw, (x - arm_w, neck_y + 1, x + arm_w, sleeve_end + swing * sign), ident["top"])
        if not ident["long_sleeves"]:
            _rect(draw, (x - arm_w * 0.8, sleeve_end + swing * sign, x + arm_w * 0.8, hip_y + swing * sign),
                  ident["skin"])
    # bags carried at the side or over the back
    if bag == "backpack" and view == "back":
        _rect(draw, (cx - half_w * 0.75, neck_y + torso_h * 0.12, cx + half_w * 0.75, hip_y - torso_h * 0.05),
              ident["bag_colour"])
    elif bag == "backpack" and view == "front":
        for sign in (-1, 1):
            x = cx + sign * half_w * 0.55
            _rect(draw, (x - 1, neck_y, x + 1, neck_y + torso_h * 0.6), ident["bag_colour"])
    elif bag == "shoulder":
        sx = cx + (half_w * 1.25 if view != "back" else -half_w * 1.25)
        draw.line([cx - half_w * 0.8, neck_y, sx, hip_y - torso_h * 0.2],
                  fill=tuple(int(c) for c in ident["bag_colour"]), width=max(1, int(half_w * 0.12)))
        _rect(draw, (sx - half_w * 0.45, hip_y - torso_h * 0.3, sx + half_w * 0.45, hip_y + torso_h * 0.05),
              ident["bag_colour"])
    elif bag == "hand":
        sx = cx + half_w + arm_w * 1.2
        _rect(draw, (sx - half_w * 0.35, hip_y - torso_h * 0.05, sx + half_w * 0.35, hip_y + leg_h * 0.3),
              ident["bag_colour"])
    # head: face in the front view, hair at the back
    hr = head_h * 0.5
    hx, hy = cx, top + hr
    face = ident["hair"] if view == "back" and ident["hair_style"] != "bald" else ident["skin"]
    draw.ellipse([hx - hr * 0.85, hy - hr, hx + hr * 0.85, hy + hr], fill=tuple(int(c) for c in face))
    style = ident["hair_style"]
    if style in ("short", "long"):
        draw.chord([hx - hr * 0.9, hy - hr * 1.05, hx + hr * 0.9, hy + hr * 0.4], 180, 360,
                   fill=tuple(int(c) for c in ident["hair"]))
        if style == "long":
            _rect(draw, (hx - hr * 0.9, hy - hr * 0.2, hx + hr * 0.9 if view == "back" else hx - hr * 0.55,
                         hy + hr * 1.6), ident["hair"])
            if view != "back":
                _rect(draw, (hx + hr * 0.55, hy - hr * 0.2, hx + hr * 0.9, hy + hr * 1.6), ident["hair"])
    elif style == "hat":
        _rect(draw, (hx - hr * 1.0, hy - hr * 1.15, hx + hr * 1.0, hy - hr * 0.35), ident["hat"])
        _rect(draw, (hx - hr * 1.3, hy - hr * 0.5, hx + hr * 1.3, hy - hr * 0.3), ident["hat"])


def render(ident: dict, cam: dict, height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """One crop of ``ident`` as seen by ``cam`` (the per-image randomness comes from ``rng``)."""
    H, W = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    _background(draw, cam, W, H, rng)
    view = ["front", "back", "side"][rng.choice(3, p=cam["views"])]
    person_h = H * cam["scale"] * ident["height"] * rng.uniform(0.95, 1.05)
    top = (H - person_h) * rng.uniform(0.3, 0.7)
    cx = W / 2 + rng.uniform(-0.08, 0.08) * W
    _person(draw, ident, view, cx, top, person_h, rng)
    if cam["blur"] > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam["blur"] * _SUPERSAMPLE))
    img = img.resize((width, height), Image.Resampling.LANCZOS)
    img = ImageEnhance.Contrast(img).enhance(cam["contrast"] * rng.uniform(0.92, 1.08))
    img = ImageEnhance.Brightness(img).enhance(cam["brightness"] * rng.uniform(0.9, 1.1))
    arr = np.asarray(img).astype(np.float32) * cam["gain"]  # (H, W, 3) colour cast
    arr += rng.normal(0.0, cam["noise"] + 1.0, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- writing the domains

_TARGET, _REFERENCE = 1, 2


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


def _write_target(out: Path, spec: SyntheticSpec) -> None:
    """Market-1501 layout; every identity is seen by at least two cameras."""
    cams = spec.target_cameras
    n_train = spec.target_train_ids
    for pid in range(1, n_train + spec.target_test_ids + 1):
        ident = _identity(spec.seed, _TARGET, pid)
        rng = np.random.default_rng([spec.seed, _TARGET, pid, 1])
        n_cams = int(rng.integers(2, cams + 1))
        seen = sorted(rng.choice(cams, size=n_cams, replace=False) + 1)
        query_cams = set(rng.choice(seen, size=min(2, len(seen) - 1), replace=False)) if pid > n_train else set()
        for c in seen:
            cam = _camera(spec.seed, _TARGET, int(c))
            for k in range(spec.target_images_per_camera):
                img_rng = np.random.default_rng([spec.seed, _TARGET, pid, int(c), k])
                name = f"{pid:04d}_c{c}s1_{(k + 1) * 25 + pid * 7:06d}_{k + 1:02d}.jpg"
                if pid <= n_train:
                    folder = "bounding_box_train"
                elif c in query_cams and k == 0:
                    folder = "query"
                else:
                    folder = "bounding_box_test"
                _save(render(ident, cam, spec.height, spec.width, img_rng), out / folder / name)
    for k in range(spec.target_distractors):  # background-only and unknown-person crops
        rng = np.random.default_rng([spec.seed, _TARGET, 0, k])
        c = int(rng.integers(1, cams + 1))
        cam = _camera(spec.seed, _TARGET, c)
        stranger = _identity(spec.seed, _TARGET, 100_000 + k)
        img = render(stranger, cam, spec.height, spec.width, rng)
        _save(img, out / "bounding_box_test" / f"0000_c{c}s1_{k:06d}_00.jpg")


def _write_reference(out: Path, spec: SyntheticSpec) -> None:
    """MSMT17_V1 layout; train ids and test ids are numbered separately from 0, as in MSMT17."""
    n_test = spec.reference_test_ids
    n_train = spec.reference_ids - n_test
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    for gid in range(spec.reference_ids):
        is_test = gid >= n_train
        pid = gid - n_train if is_test else gid
        ident = _identity(spec.seed, _REFERENCE, gid)
        rng = np.random.default_rng([spec.seed, _REFERENCE, gid, 1])
        folder = "test" if is_test else "train"
        for k in range(spec.reference_images_per_id):
            c = int(rng.integers(1, spec.reference_cameras + 1)) if k >= 2 else (k % spec.reference_cameras) + 1
            cam = _camera(spec.seed, _REFERENCE, c)
            img_rng = np.random.default_rng([spec.seed, _REFERENCE, gid, k])
            rel = f"{pid:04d}/{pid:04d}_{k:03d}_{c:02d}_0101synth_{k:04d}_0.jpg"
            _save(render(ident, cam, spec.height, spec.width, img_rng), out / folder / rel)
            if not is_test:
                lists["val" if k == spec.reference_images_per_id - 1 and gid % 10 == 0 else "train"].append(f"{rel} {pid}")
            else:
                lists["query" if c == 1 else "gallery"].append(f"{rel} {pid}")
    for name, lines in lists.items():
        (out / f"list_{name}.txt").write_text("".join(line + "\n" for line in lines))


def generate(out: str | Path, spec: SyntheticSpec | None = None) -> dict:
    """Write both synthetic domains under ``out`` (``target/`` and ``reference/``) and ``synthetic.json``.

    The folder is built in a temporary sibling and renamed into place, so a crash never leaves a
    half-written dataset that looks complete.

    Args:
        out: destination folder; must not exist yet.
        spec: sizes and seed (defaults: :class:`SyntheticSpec`).

    Returns:
        The parameters written to ``synthetic.json``.
    """
    spec = spec or SyntheticSpec()
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another folder or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_target(tmp / "target", spec)
        _write_reference(tmp / "reference", spec)
        info = {"generator": "workbench.data.synthetic", **asdict(spec)}
        (tmp / "synthetic.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "synthetic.json").is_file():  # lost a race only if the winner finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def ensure_synthetic(root: str | Path | None = None, **params) -> Path:
    """The folder of the synthetic dataset with these parameters, generating it on first use.

    Args:
        root: the dataset folder. None → ``<data_root>/synthetic-<hash of the parameters>``.
        **params: :class:`SyntheticSpec` fields (seed, sizes, cameras).

    Returns:
        The folder holding ``target/``, ``reference/`` and ``synthetic.json``.
    """
    unknown = set(params) - {f.name for f in fields(SyntheticSpec)}
    if unknown:
        raise ConfigError(f"unknown synthetic parameters {sorted(unknown)}; known: "
                         f"{[f.name for f in fields(SyntheticSpec)]}")
    spec = SyntheticSpec(**params)
    folder = Path(root).expanduser() if root is not None else data_root() / f"synthetic-{spec.key()}"
    marker = folder / "synthetic.json"
    if marker.is_file():
        found = json.loads(marker.read_text())
        wanted = asdict(spec)
        if params and any(found.get(k) != v for k, v in wanted.items()):
            raise ConfigError(f"{folder} holds a synthetic dataset with other parameters "
                             f"({marker}); pass another root or delete it")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} exists but is not a synthetic dataset (no synthetic.json)")
    if folder.exists():
        folder.rmdir()
    generate(folder, spec)
    return folder
