"""Image data: CIFAR-10/100 (torchvision), .npz image files, scikit-learn digits; and the training transforms."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from ..training.config import DataConfig
from ..device.errors import MonoconError
from ..files import existing_file


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, H, W, C) RGB or grey, integer labels (N,), and the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str

    @property
    def channels(self) -> int:
        """Return C, the number of colour channels."""
        return int(self.images.shape[-1])


def load_image_set(cfg: DataConfig) -> ImageSet:
    """Return the image set ``cfg`` names (digits | npz | cifar10 | cifar100), validated."""
    if cfg.kind == "digits":
        return _load_digits()
    if cfg.kind == "npz":
        if not cfg.path:
            raise MonoconError("an npz data set needs --data PATH.npz")
        return load_npz(cfg.path)
    if cfg.kind in ("cifar10", "cifar100"):
        return _load_cifar(cfg.kind, cfg.path or "data", cfg.download)
    raise MonoconError(f"{cfg.kind!r} is not an image data set")


def _load_digits() -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ImageSet(images, d.target.astype(np.int64), [str(i) for i in range(10)], "sklearn.load_digits")


def load_npz(path: str) -> ImageSet:
    """Return the ImageSet in an .npz file with ``images`` uint8 (N, H, W, C) and ``labels`` (N,)."""
    p = existing_file(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise MonoconError(f"{path} lacks the key(s) {', '.join(sorted(missing))} (has: {', '.join(sorted(keys))})")
            images, labels = npz["images"], npz["labels"]
            names = [str(n) for n in npz["class_names"]] if "class_names" in keys else None
    except MonoconError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MonoconError(f"cannot read {path} as an npz file: {type(exc).__name__}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MonoconError(f"{path}: images must be uint8 (N, H, W, C) with C in (1, 3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise MonoconError(f"{path}: labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}")
    if images.shape[0] < 4:
        raise MonoconError(f"{path}: needs at least 4 images, has {images.shape[0]}")
    labels = labels.astype(np.int64)
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageSet(images, labels, names, str(p))


def _load_cifar(kind: str, root: str, download: bool) -> ImageSet:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    try:
        ds = cls(root=root, train=True, download=download)
    except RuntimeError:
        raise MonoconError(
            f"{kind.upper()} not found under {root!r}: pass --data-dir with the extracted python version, "
            "or --download where there is internet"
        ) from None
    except Exception as exc:  # network errors during --download
        raise MonoconError(f"could not download {kind.upper()} ({type(exc).__name__}): no network?") from None
    return ImageSet(np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64),
                    list(ds.classes), f"torchvision.{cls.__name__}({root})")


def to_float_batch(images: np.ndarray) -> torch.Tensor:
    """Return uint8 (N, H, W, C) images as float32 (N, C, H, W) in [0, 1] (the model input)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def build_train_transform(kind: str, size: int):
    """Return the per-image training transform on uint8 (C, H, W) tensors, output float in [0, 1].

    ``paper``: TrivialAugmentWide + RandomErasing (the MonoCon CIFAR recipe); ``light``: random crop with
    padding + horizontal flip; ``none``: only the conversion to float.
    """
    from torchvision.transforms import v2

    to_float = v2.ToDtype(torch.float32, scale=True)
    if kind == "none":
        return to_float
    if kind == "light":
        return v2.Compose([v2.RandomCrop(size, padding=max(1, size // 8)), v2.RandomHorizontalFlip(), to_float])
    if kind == "paper":
        # TrivialAugmentWide runs ~14x faster on PIL images than on tensors for 32x32 inputs.
        return v2.Compose([v2.ToPILImage(), v2.TrivialAugmentWide(), v2.PILToTensor(), to_float, v2.RandomErasing()])
    raise MonoconError(f"unknown augmentation {kind!r}")


class AugmentedImages(torch.utils.data.Dataset):
    """(image, label) pairs from uint8 NHWC arrays, each image passed through ``transform``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]
