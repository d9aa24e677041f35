"""Image decoding and the train/test transforms (uint8 CHW tensors in, normalized float out).

Train: resize → random horizontal flip → zero-pad + random crop back to size → normalize (the
paper's augmentation). Test: resize → normalize. Randomness comes from an explicit
``torch.Generator`` so that a batch's augmentation depends only on (seed, epoch, position): runs
resume exactly and do not depend on the number of DataLoader workers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from workbench.data.datasets import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path: str) -> torch.Tensor:
    """Decode an image file to a ``(3, H, W)`` uint8 RGB tensor.

    Raises:
        DatasetError: naming the file when it is missing, unreadable or corrupt.
    """
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def resize(img: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 ``(3, H, W)`` image to ``image_size`` = (height, width)."""
    if tuple(img.shape[-2:]) == tuple(image_size):
        return img
    out = F.interpolate(img[None].float(), size=tuple(image_size), mode="bilinear",
                        antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


class EvalTransform:
    """Resize and normalize.

    Args:
        image_size: (height, width), e.g. (384, 128) as in the paper or (128, 64) on CPU.
        mean, std: normalization statistics (ImageNet by default).
    """

    def __init__(self, image_size: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.image_size = tuple(image_size)
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(3, 1, 1) * 255.0

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() - self.mean) / self.std

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalize(resize(img, self.image_size))


class TrainTransform(EvalTransform):
    """Resize, random horizontal flip, zero-pad by ``pad`` and random crop, normalize.

    Args:
        image_size: (height, width).
        pad: pixels of zero padding before the random crop (paper: 7 at 384×128); 0 disables.
        flip_prob: probability of a horizontal flip.
    """

    def __init__(self, image_size: tuple[int, int], pad: int = 7, flip_prob: float = 0.5,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__(image_size, mean, std)
        self.pad = int(pad)
        self.flip_prob = float(flip_prob)

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        img = resize(img, self.image_size)
        draws = torch.rand(3, generator=generator)
        if draws[0] < self.flip_prob:
            img = img.flip(-1)
        out = self.normalize(img)
        if self.pad > 0:
            h, w = self.image_size
            top = int(draws[1] * (2 * self.pad + 1))
            left = int(draws[2] * (2 * self.pad + 1))
            padded = F.pad(out, (self.pad, self.pad, self.pad, self.pad))  # zeros = the mean colour
            out = padded[:, top:top + h, left:left + w]
        return out
