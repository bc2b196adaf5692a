"""Bad image folders stop `archgen train` before any training: exit 2, the spec's file:line and
``data.path``, the reason, no traceback. A folder mixing 8-bit modes (RGB, grayscale, palette,
RGBA) is read as RGB and the data line says what was converted; wider modes are refused.

(The spec-level mistakes of the issue's list, an image size the stages cannot divide and a
non-causal mixer in a language model, are in test_vision_spec.py's BAD table.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from archgen import training
from tests.conftest import archgen

SPEC = """\
model:
  task: image-classification
  image_size: 8
  num_classes: 2
  stages:
    - width: 4
      depth: 1
      downsample: {kind: patch_embed, stride: 4}
      block:
        - token_mixer: {kind: raft, axis: vertical}
data: {kind: image_folder, path: imgs}
train: {steps: 1, batch_size: 2, warmup_steps: 1, eval_interval: 1, eval_batches: 1}
"""


def _save(path: Path, mode: str, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (6, 5)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 60000, dtype=np.uint16)).save(path)
    elif mode == "P":  # an adaptive palette holds the one colour exactly
        rgb = Image.new("RGB", size, (value,) * 3)
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    else:
        Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def _folder(root: Path, modes: dict[str, list[str]]) -> Path:
    for name, image_modes in modes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, mode in enumerate(image_modes):
            _save(root / name / f"{i}.png", mode)
    return root


CASES = {
    "no-class-folders": ({}, "data.path: imgs holds 0 class folder(s), need at least 2"),
    "empty-class-folder": (
        {"a": ["RGB", "RGB"], "b": []},
        "data.path: class folder imgs/b holds no image files",
    ),
    "unreadable-image": ({"a": ["RGB", "RGB"], "b": ["RGB", "broken"]}, "cannot read image"),
    "16-bit-image": (
        {"a": ["RGB", "RGB"], "b": ["RGB", "I;16"]},
        "has mode I;16 (more than 8 bits per channel), which converting to RGB would clip",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_image_folder_exits_2_at_data_path(case: str, tmp_path: Path) -> None:
    layout, expected = CASES[case]
    (tmp_path / "imgs").mkdir()
    _folder(tmp_path / "imgs", {k: [m for m in v if m != "broken"] for k, v in layout.items()})
    for name, image_modes in layout.items():
        if "broken" in image_modes:
            (tmp_path / "imgs" / name / "broken.png").write_bytes(b"not a png")
    (tmp_path / "spec.yaml").write_text(SPEC)
    done = archgen("train", "spec.yaml", "-o", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "spec.yaml:11:34: " + (expected if "data.path" in expected else "data.path: ") in (
        done.stderr
    )
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_mixed_modes_are_read_as_rgb_with_a_note(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", {"a": ["RGB", "L", "RGB"], "b": ["RGBA", "P", "L", "RGB"]})
    (tmp_path / "spec.yaml").write_text(SPEC)
    prepared = training.prepare(tmp_path / "spec.yaml")
    described = prepared.data.describe()
    assert "converted to RGB: 2 L, 1 P, 1 RGBA image(s) (alpha dropped)" in described
    train_x, _, val_x, _ = prepared.source.arrays
    images = np.concatenate([train_x, val_x])
    assert images.shape == (7, 8, 8, 3)
    # a grayscale value v is (v, v, v): every image was drawn in one flat value 90
    assert np.allclose(images, 90 / 255)


def test_an_rgb_folder_has_no_note(tmp_path: Path) -> None:
    _folder(tmp_path / "imgs", {"a": ["RGB", "RGB"], "b": ["RGB", "RGB"]})
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert "converted" not in training.prepare(tmp_path / "spec.yaml").data.describe()
