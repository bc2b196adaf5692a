"""Image data for image-classification models, with nothing to download.

``kind: shapes`` is generated here: on a textured, noisy background a square and a disc of random
colours and sizes; the class is *where the disc lies relative to the square* (right, left, below,
above: the dominant axis of their offset) and *which of the two is larger* -- 8 classes that
depend on the global layout of the image, not on any one pixel or colour. Like the token tasks
(train/tasks.py) every batch is a pure function of seeds, so the training and validation
examples never overlap (different seed streams) and a resumed run sees the same images.

``kind: image_folder`` reads the torchvision ImageFolder layout (``root/<class>/<image>``), any
image file Pillow reads, resized to the model's image size; a seeded split holds out a fraction.
A folder may mix 8-bit modes (RGB, grayscale, palette, RGBA, CMYK...): every image is converted
to RGB as torchvision's loader does (grayscale copied to the three channels, alpha dropped), and
the data line of the run says how many of each mode were converted. Images of more than 8 bits
per channel (modes I, I;16, F) are refused: converting them would clip every value above 255.

Batches are :class:`~archgen.train.tasks.TaskBatch` es: ``inputs`` float32 ``[N, S, S, C]``
(channels last, normalised to mean 0, std ~1), ``targets`` int64 ``[N]``, ``mask`` all true.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from archgen.errors import ArchgenError
from archgen.train.config import DataSource, option
from archgen.train.tasks import TaskBatch

DIRECTIONS = ("right", "left", "below", "above")


@dataclass(frozen=True)
class ImageData(DataSource):
    """Base of the image sources: image size, channels and classes a model must match."""

    image_size: int | None = option(
        "height and width of the images; null = the model's image_size", None, ge=4, le=8192
    )

    @property
    def channels(self) -> int:
        return 3

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def chance(self) -> float:
        """Accuracy of guessing the most common class (uniform classes: 1 / classes)."""
        return 1.0 / self.num_classes

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        """``n`` training examples drawn with ``rng``."""
        raise NotImplementedError

    def validation(self, batches: int, batch_size: int) -> list[TaskBatch]:
        """The fixed validation set."""
        raise NotImplementedError

    def notes(self) -> tuple[str, ...]:
        """What reading the images changed that the user should know (shown with the data)."""
        return ()


def _size(data: ImageData) -> int:
    if data.image_size is None:
        raise ArchgenError("data.image_size is not set (training sets it to model.image_size)")
    return data.image_size


def _batch(images: np.ndarray, labels: np.ndarray) -> TaskBatch:
    inputs = ((images - 0.5) / 0.25).astype(np.float32)
    return TaskBatch(inputs, labels.astype(np.int64), np.ones(len(labels), dtype=bool))


@dataclass(frozen=True)
class ShapesData(ImageData):
    """Square-and-disc layouts (see the module docstring); 8 balanced classes."""

    kind: ClassVar[str] = "shapes"
    summary: ClassVar[str] = (
        "generated images: a square and a disc; class = where the disc is relative to the "
        "square x which is larger (8 classes)"
    )

    noise: float = option("std of the per-pixel noise (images are in [0, 1])", 0.08, ge=0, le=1)
    seed: int = option("seed of the validation images", 0, ge=0)

    @property
    def num_classes(self) -> int:
        return 2 * len(DIRECTIONS)

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        labels = rng.integers(0, self.num_classes, n)
        images = np.stack([self._draw(rng, int(label)) for label in labels])
        return _batch(images, labels)

    def validation(self, batches: int, batch_size: int) -> list[TaskBatch]:
        return [
            self.sample(np.random.default_rng([self.seed, 1, i]), batch_size)
            for i in range(batches)
        ]

    def _draw(self, rng: np.random.Generator, label: int) -> np.ndarray:
        s = _size(self)
        direction, disc_larger = divmod(label, 2)
        big, small = rng.uniform(0.17, 0.24) * s, rng.uniform(0.09, 0.13) * s
        r_disc, r_square = (big, small) if disc_larger else (small, big)
        # the offset from the square to the disc: mostly along one axis, and far enough apart
        # that the two never overlap
        along = (r_disc + r_square) * 1.15 + rng.uniform(0, 0.15 * s)
        across = rng.uniform(-0.4, 0.4) * along
        dx, dy = ((along, across), (-along, across), (across, along), (across, -along))[direction]
        lo_x = max(r_square, r_square - dx + r_disc) + 1
        hi_x = min(s - r_square, s - r_disc - dx) - 1
        lo_y = max(r_square, r_square - dy + r_disc) + 1
        hi_y = min(s - r_square, s - r_disc - dy) - 1
        cx, cy = rng.uniform(lo_x, max(lo_x, hi_x)), rng.uniform(lo_y, max(lo_y, hi_y))
        ys, xs = np.mgrid[0:s, 0:s] + 0.5
        image = self._background(rng)
        square = (np.abs(xs - cx) <= r_square) & (np.abs(ys - cy) <= r_square)
        disc = (xs - cx - dx) ** 2 + (ys - cy - dy) ** 2 <= r_disc**2
        backdrop = image.reshape(-1, 3).mean(axis=0)
        for mask in (square, disc):
            image[mask] = self._colour(rng, backdrop)
        image += rng.normal(0, self.noise, image.shape)
        return np.clip(image, 0.0, 1.0)

    @staticmethod
    def _colour(rng: np.random.Generator, backdrop: np.ndarray) -> np.ndarray:
        """A random colour that stands out from the background's mean colour."""
        while True:
            colour = rng.uniform(0.0, 1.0, 3)
            if np.linalg.norm(colour - backdrop) > 0.45:
                return colour

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth random texture: a few random low-frequency waves per channel."""
        s = _size(self)
        ys, xs = np.mgrid[0:s, 0:s] / s
        image = np.full((s, s, 3), 0.5) + rng.uniform(-0.2, 0.2, 3)
        for _ in range(3):
            fx, fy = rng.uniform(-4, 4, 2)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (fx * xs + fy * ys) + phase)
            image += wave[..., None] * rng.uniform(-0.1, 0.1, 3)
        return image


# Pillow modes with more than 8 bits per channel: convert("RGB") clips them to 0..255
WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class FolderImages:
    """An image folder, read: the split arrays and the modes converted to RGB (mode, count)."""

    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    converted: tuple[tuple[str, int], ...]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True, kw_only=True)
class ImageFolderData(ImageData):
    """Images in the torchvision ImageFolder layout: ``path/<class name>/<image file>``."""

    kind: ClassVar[str] = "image_folder"
    summary: ClassVar[str] = "images in folders named by class (torchvision ImageFolder layout)"

    path: str = option("the folder holding one sub-folder per class")
    val_fraction: float = option(
        "fraction of each class held out for validation", 0.1, gt=0, le=0.5
    )
    split_seed: int = option("seed of the train/validation split", 0, ge=0)

    @cached_property
    def classes(self) -> tuple[str, ...]:
        root = Path(self.path)
        if not root.is_dir():
            raise ArchgenError(
                f"data.path: {self.path} is not a folder",
                hint="give a folder with one sub-folder of images per class",
            )
        found = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
        if len(found) < 2:
            raise ArchgenError(
                f"data.path: {self.path} holds {len(found)} class folder(s), need at least 2",
                hint="one sub-folder per class, images inside (the ImageFolder layout)",
            )
        return found

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train images, train labels, validation images, validation labels), in [0, 1]."""
        return self._loaded.arrays

    def notes(self) -> tuple[str, ...]:
        converted = self._loaded.converted
        if not converted:
            return ()
        counts = ", ".join(f"{n} {mode}" for mode, n in converted)
        alpha = any("A" in mode for mode, _ in converted)
        return (f"converted to RGB: {counts} image(s)" + (" (alpha dropped)" if alpha else ""),)

    @cached_property
    def _loaded(self) -> FolderImages:
        from PIL import Image, UnidentifiedImageError

        images, labels = [], []
        modes: Counter[str] = Counter()
        root = Path(self.path)
        for label, name in enumerate(self.classes):
            files = sorted(
                p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise ArchgenError(
                    f"data.path: class folder {root / name} holds no image files",
                    hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}",
                )
            for file in files:
                try:
                    with Image.open(file) as im:
                        mode = im.mode
                        if mode in WIDE_MODES:
                            raise ArchgenError(
                                f"data.path: image {file} has mode {mode} (more than 8 bits "
                                "per channel), which converting to RGB would clip",
                                hint="convert the folder's images to 8-bit RGB or grayscale",
                            )
                        size = (_size(self), _size(self))
                        rgb = im.convert("RGB").resize(size, Image.Resampling.BILINEAR)
                except (OSError, UnidentifiedImageError, ValueError) as exc:
                    raise ArchgenError(
                        f"data.path: cannot read image {file}: {exc}",
                        hint="remove or replace the file",
                    ) from None
                modes[mode] += 1
                images.append(np.asarray(rgb, dtype=np.float64) / 255.0)
                labels.append(label)
        x, y = np.stack(images), np.asarray(labels)
        rng = np.random.default_rng([self.split_seed])
        val = np.zeros(len(y), dtype=bool)
        for label in range(self.num_classes):
            idx = np.flatnonzero(y == label)
            take = max(1, round(len(idx) * self.val_fraction)) if len(idx) > 1 else 0
            val[rng.permutation(idx)[:take]] = True
        if not val.any() or val.all():
            raise ArchgenError(
                f"data.path: {len(y)} images cannot be split into training and validation",
                hint="add images (at least 2 in a class)",
            )
        converted = tuple(sorted((m, n) for m, n in modes.items() if m != "RGB"))
        return FolderImages((x[~val], y[~val], x[val], y[val]), converted)

    def sample(self, rng: np.random.Generator, n: int) -> TaskBatch:
        x, y, _, _ = self.arrays
        idx = rng.integers(0, len(y), n)
        return _batch(x[idx], y[idx])

    def validation(self, batches: int, batch_size: int) -> list[TaskBatch]:
        _, _, x, y = self.arrays
        out = []
        for i in range(0, min(len(y), batches * batch_size), batch_size):
            out.append(_batch(x[i : i + batch_size], y[i : i + batch_size]))
        return out


IMAGE_SOURCES: dict[str, type[ImageData]] = {cls.kind: cls for cls in (ShapesData, ImageFolderData)}
