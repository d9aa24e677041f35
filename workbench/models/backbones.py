"""Backbones that expose their stages: ResNet-50, SE-ResNet-50 and MobileNetV2.

ResNet-50 and SE-ResNet-50 share ONE bottleneck (torchvision's, plus an ``attn`` hook applied
to the residual branch after ``bn3``, before the addition): SE-ResNet-50 is ResNet-50 with
``attn_layer=SEModule``. State-dict keys are torchvision's ``resnet50`` keys (without ``fc``), plus
``layerX.Y.attn.fc{1,2}.*`` for the 16 SE modules. MobileNetV2 keeps torchvision's ``features.*``
keys; its four stages are index ranges of ``features``.

Every backbone maps an image batch to a dict ``{stage name: feature map}`` with stages named
``layer1``..``layer4`` (strides 4, 8, 16, 32; 16 for ``layer4`` with ``last_stride=1``).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, Union
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import resnet as tv_resnet

from workbench.errors import ConfigError, WorkbenchError

from .layers import SEModule

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")

#: What ``pretrained=`` accepts: ``None``, ``"imagenet"``, a file path, or a state dict.
Pretrained = Union[None, str, os.PathLike, Mapping[str, torch.Tensor]]


class WeightsError(WorkbenchError, RuntimeError):
    """Pretrained weights could not be found, read or matched to the model."""


def parse_stages(stages: str | Iterable[str], valid: Iterable[str] = STAGES) -> tuple[str, ...]:
    """Validate stage names and return them in network order.

    Args:
        stages: names such as ``("layer1", "layer4")``, or one string ``"layer1+layer4"``
            (``+`` or ``,`` separated, handy in a papermill parameters cell).
        valid: the stage names that exist, in network order.

    Returns:
        The unique requested names, sorted in network order.

    Raises:
        ValueError: empty selection, unknown or repeated name (the message lists the valid names).
    """
    valid = tuple(valid)
    names = [s.strip() for s in re.split(r"[+,]", stages)] if isinstance(stages, str) else list(stages)
    bad = [s for s in names if s not in valid]
    if bad or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"invalid stage selection {list(names)!r}: choose one or more distinct names among "
            f"{list(valid)} (e.g. ('layer1', 'layer3', 'layer4'))"
        )
    return tuple(s for s in valid if s in names)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's ResNet bottleneck (v1.5, stride on the 3×3) with an attention hook.

    Args:
        *args, **kwargs: torchvision's ``Bottleneck`` arguments.
        attn_layer: ``channels -> module`` applied to the residual branch after ``bn3`` and
            before the addition (``SEModule`` gives SE-ResNet); ``None`` for a plain ResNet.
    """

    def __init__(self, *args, attn_layer: Callable[[int], nn.Module] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        channels = self.bn3.num_features
        self.attn = attn_layer(channels) if attn_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))
        return self.relu(out + shortcut)


class StageBackbone(nn.Module):
    """Base class: a stem followed by the named stages ``layer1``..``layer4``.

    Subclasses set ``stage_channels`` and ``stage_strides`` (dicts keyed by stage name) and
    implement ``stage(name)``; ``forward_stem`` defaults to the identity.
    """

    stage_names: tuple[str, ...] = STAGES
    #: Keys a pretrained file may lack (fresh layers added on top of a known architecture).
    new_key_pattern: str | None = None

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def stage(self, name: str) -> nn.Module:
        """The module computing stage ``name`` from the previous stage's output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, stages: str | Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the network up to the deepest requested stage.

        Args:
            x: images, (B, 3, H, W).
            stages: stage names to return; ``None`` for all four.

        Returns:
            ``{name: (B, C_name, H / stride, W / stride)}`` in network order.
        """
        wanted = self.stage_names if stages is None else parse_stages(stages, self.stage_names)
        x = self.forward_stem(x)
        out: dict[str, torch.Tensor] = {}
        for name in self.stage_names[: self.stage_names.index(wanted[-1]) + 1]:
            x = self.stage(name)(x)
            if name in wanted:
                out[name] = x
        return out


class ResNetBackbone(StageBackbone, tv_resnet.ResNet):
    """ResNet-50 built by torchvision's ``ResNet`` with the hooked ``Bottleneck``; no avgpool/fc.

    Args:
        attn_layer: attention in every bottleneck (``SEModule`` for SE-ResNet-50) or ``None``.
        last_stride: stride of ``layer4`` (2 as in the paper and torchvision; 1 is the common
            ReID trick that doubles the final map).
    """

    def __init__(self, attn_layer: Callable[[int], nn.Module] | None = None, last_stride: int = 2) -> None:
        block = functools.partial(Bottleneck, attn_layer=attn_layer)
        block.expansion = Bottleneck.expansion  # torchvision's ResNet reads block.expansion
        super().__init__(block, [3, 4, 6, 3])
        del self.fc, self.avgpool
        for m in self.modules():  # torchvision's init touched every conv; SE keeps PyTorch's
            if isinstance(m, SEModule):
                m.reset_parameters()
        if last_stride == 1:
            self.layer4[0].conv2.stride = (1, 1)
            self.layer4[0].downsample[0].stride = (1, 1)
        elif last_stride != 2:
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride}")
        self.new_key_pattern = r"\.attn\." if attn_layer is not None else None
        self.stage_channels = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
        self.stage_strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16 * last_stride}

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)

    def stage(self, name: str) -> nn.Module:
        return getattr(self, name)


#: MobileNetV2 stages as ``features[start:stop]``: 24 ch /4, 32 ch /8, 96 ch /16, 1280 ch /32.
_MOBILENET_SLICES = (("layer1", 0, 4), ("layer2", 4, 7), ("layer3", 7, 14), ("layer4", 14, 19))


class MobileNetV2Backbone(StageBackbone):
    """torchvision's MobileNetV2 ``features`` (classifier dropped), split into four stages.

    ``layer4`` ends with the final 1×1 conv to 1280 channels. State-dict keys are torchvision's
    ``features.*``; ``layer1``..``layer4`` are views (not extra parameters).

    Args:
        last_stride: stride of ``layer4`` (1 removes the stride of its first inverted residual).
    """

    def __init__(self, last_stride: int = 2) -> None:
        super().__init__()
        self.features = tv_mobilenet_v2().features
        if last_stride == 1:
            self.features[14].conv[1][0].stride = (1, 1)  # depthwise 3×3 of the first /32 block
        elif last_stride != 2:
            raise ConfigError(f"last_stride must be 1 or 2, got {last_stride}")
        self.stage_channels = {"layer1": 24, "layer2": 32, "layer3": 96, "layer4": 1280}
        self.stage_strides = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 16 * last_stride}

    def stage(self, name: str) -> nn.Module:
        for stage_name, start, stop in _MOBILENET_SLICES:
            if stage_name == name:
                return self.features[start:stop]
        raise KeyError(name)

    layer1 = property(lambda self: self.stage("layer1"))
    layer2 = property(lambda self: self.stage("layer2"))
    layer3 = property(lambda self: self.stage("layer3"))
    layer4 = property(lambda self: self.stage("layer4"))


# ----------------------------------------------------------------------------- weights

#: torchvision ImageNet weights per backbone (SE-ResNet-50 starts from ResNet-50's; SE is new).
IMAGENET_WEIGHTS = {
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "seresnet50": ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
}

#: Keys of classification heads that a backbone ignores when loading.
_IGNORED_KEYS = re.compile(r"^(fc|classifier|last_linear)\.")


class LoadedKeys(NamedTuple):
    """What a weight load did: keys the file lacked (allowed ones only) and keys it ignored."""

    missing: list[str]
    ignored: list[str]


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for backbone ``name``, from torch's hub cache.

    The file is looked up in ``torch.hub.get_dir()/checkpoints`` (the cache torchvision uses) and
    downloaded there when absent.

    Raises:
        WeightsError: not cached and the download failed (offline); the message names the exact
            path to put the file at, the URL, and the ``pretrained=PATH`` alternative.
    """
    url = IMAGENET_WEIGHTS[name].url
    filename = Path(urlparse(url).path).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        digest = re.search(r"-([a-f0-9]+)\.", filename)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=digest.group(1) if digest else None)
        except Exception as err:  # URLError, HTTPError, OSError, hash mismatch: all say "not here"
            raise WeightsError(
                f"ImageNet weights for {name!r} are not cached and could not be downloaded "
                f"({type(err).__name__}: {err}).\n"
                f"  Put the file at: {path}\n"
                f"  Download it from: {url}\n"
                f"  Or pass pretrained=PATH to a local state dict file (or pretrained=None for a "
                f"random init)."
            ) from err
    return _load_weights(path)


def _load_weights(path: Path) -> object:
    """``torch.load(path, weights_only=True)``.

    Raises:
        WeightsError: the file is not a weights file (empty, truncated, or a pickle of more than
            tensors); torch's own message, which suggests ``weights_only=False`` (running whatever a
            crafted pickle holds), is not repeated.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # RuntimeError, EOFError, UnpicklingError ... whatever the file is
        empty = path.stat().st_size == 0
        raise WeightsError(f"{path} is not a weights file{' (it is empty)' if empty else ''}") from None


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone state dict from a file or a mapping, with wrappers and prefixes removed.

    Accepts a plain state dict, a workbench checkpoint ``{"model": state, ...}`` (or
    ``{"state_dict": state}``) whose backbone keys start with ``backbone.``, and DDP's
    ``module.`` prefix. When any key starts with ``backbone.``, only those keys are kept.
    timm's SE-ResNet key names (``.se.fc1``) are renamed to ours (``.attn.fc1``).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path} (point pretrained / --pretrained at the file, "
                               "or pass --pretrained none to start from a random init)")
        source = _load_weights(path)
    if not isinstance(source, Mapping):
        raise WeightsError(f"expected a state dict (a mapping of tensors), got {type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
            break
    state = {k.removeprefix("module."): v for k, v in source.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return {re.sub(r"\.se\.(fc[12])\.", r".attn.\1.", k): v for k, v in state.items()}


def load_backbone_state(backbone: StageBackbone, source: Pretrained) -> LoadedKeys:
    """Load pretrained weights into ``backbone``, strictly.

    Classifier keys (``fc.*``, ``classifier.*``) in the file are ignored. The only keys the file
    may lack are the backbone's new layers (the ``attn`` modules of SE-ResNet-50, so ResNet-50
    weights initialise it). Anything else missing or unexpected, or a shape mismatch, raises
    before any parameter is changed.

    Args:
        backbone: the model to fill.
        source: a path, a state dict or a workbench checkpoint (see ``read_state_dict``).

    Returns:
        ``LoadedKeys(missing, ignored)``.

    Raises:
        WeightsError: unreadable file, or keys/shapes that do not match.
    """
    state = read_state_dict(source)
    own = backbone.state_dict()
    ignored = sorted(k for k in state if k not in own and _IGNORED_KEYS.match(k))
    unexpected = sorted(k for k in state if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    allowed = backbone.new_key_pattern
    bad_missing = [k for k in missing if allowed is None or not re.search(allowed, k)]
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if bad_missing or unexpected or bad_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        problems = [f"missing {show(bad_missing)}" if bad_missing else "",
                    f"unexpected {show(unexpected)}" if unexpected else "",
                    f"shape mismatch {show(bad_shape)}" if bad_shape else ""]
        raise WeightsError(
            f"weights do not match {type(backbone).__name__}: " + "; ".join(p for p in problems if p)
            + " (is it the right backbone? a workbench checkpoint needs 'backbone.' keys)"
        )
    backbone.load_state_dict(state, strict=False)
    if missing:
        log.info("loaded backbone weights; %d new keys keep their init (e.g. %s)", len(missing), missing[0])
    return LoadedKeys(missing, ignored)


def _finish(model: StageBackbone, name: str, pretrained: Pretrained) -> StageBackbone:
    if pretrained is None:
        return model
    if isinstance(pretrained, bool):
        raise ValueError("pretrained must be None, 'imagenet', a file path or a state dict (not a bool)")
    source = imagenet_state_dict(name) if pretrained == "imagenet" else pretrained
    load_backbone_state(model, source)
    return model


# ----------------------------------------------------------------------------- constructors

def resnet50(*, pretrained: Pretrained = None, last_stride: int = 2) -> ResNetBackbone:
    """ResNet-50 (torchvision layout). Args: see ``build_backbone``."""
    return _finish(ResNetBackbone(None, last_stride), "resnet50", pretrained)


def seresnet50(*, pretrained: Pretrained = None, last_stride: int = 2) -> ResNetBackbone:
    """SE-ResNet-50: ResNet-50 with an ``SEModule`` (reduction 16) in each of its 16 bottlenecks.

    ``pretrained="imagenet"`` loads torchvision's ResNet-50 weights; the SE modules stay at
    their init (torchvision has no SE-ResNet-50 weights). timm ``seresnet50`` files load by path.
    """
    return _finish(ResNetBackbone(SEModule, last_stride), "seresnet50", pretrained)


def mobilenet_v2(*, pretrained: Pretrained = None, last_stride: int = 2) -> MobileNetV2Backbone:
    """MobileNetV2 (torchvision), the CPU-friendly backbone. Args: see ``build_backbone``."""
    return _finish(MobileNetV2Backbone(last_stride), "mobilenet_v2", pretrained)


BACKBONES: dict[str, Callable[..., StageBackbone]] = {
    "resnet50": resnet50,
    "seresnet50": seresnet50,
    "mobilenet_v2": mobilenet_v2,
}


def build_backbone(name: str, *, pretrained: Pretrained = None, last_stride: int = 2) -> StageBackbone:
    """Build a backbone by name.

    Args:
        name: one of ``BACKBONES`` (``resnet50``, ``seresnet50``, ``mobilenet_v2``).
        pretrained: ``None`` (random init, torchvision's), ``"imagenet"`` (torchvision weights via
            the torch hub cache; a clear error when offline and not cached), or a path / state dict
            / workbench checkpoint.
        last_stride: 2 (paper) or 1.

    Returns:
        A ``StageBackbone`` with ``stage_channels``, ``stage_strides`` and ``forward(x, stages)``.

    Example:
        >>> net = build_backbone("mobilenet_v2")
        >>> {k: v.shape[1] for k, v in net(torch.randn(1, 3, 64, 32), ["layer4"]).items()}
        {'layer4': 1280}
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained=pretrained, last_stride=last_stride)
