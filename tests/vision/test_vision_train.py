"""Training image classifiers: the generated shapes data, image folders, and `archgen train`
(validation accuracy, loss.png, checkpoints, exact resume) through the LM training loop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from archgen import training
from archgen.errors import ArchgenError
from archgen.train.images import ImageFolderData, ShapesData
from tests.conftest import archgen

TINY = """\
model:
  name: tiny-vision
  task: image-classification
  image_size: 16
  num_classes: 8
  stages:
    - width: 8
      depth: 1
      downsample: {kind: patch_embed, stride: 4}
      block:
        - token_mixer: {kind: raft, axis: vertical}
        - token_mixer: {kind: raft, axis: horizontal}
          channel_mixer: {kind: convglu, hidden: 8}
train: {steps: 4, batch_size: 4, warmup_steps: 1, eval_interval: 2, eval_batches: 1,
        checkpoint_interval: 2, log_interval: 1}
"""


def test_shapes_are_pure_functions_of_the_seed_and_balanced() -> None:
    data = ShapesData(image_size=24)
    a = data.sample(np.random.default_rng([0, 1]), 64)
    b = data.sample(np.random.default_rng([0, 1]), 64)
    c = data.sample(np.random.default_rng([0, 2]), 64)
    assert np.array_equal(a.inputs, b.inputs) and not np.array_equal(a.inputs, c.inputs)
    assert a.inputs.shape == (64, 24, 24, 3) and a.inputs.dtype == np.float32
    counts = np.bincount(data.sample(np.random.default_rng(3), 800).targets)
    assert len(counts) == 8 and counts.min() > 60
    assert abs(float(a.inputs.mean())) < 0.5  # normalised around 0


def test_shapes_class_is_the_disc_position_relative_to_the_square() -> None:
    """Read the class back from the drawn pixels: the disc's and the square's centres (each a
    region of one flat colour) give the direction, their areas which one is larger."""
    data = ShapesData(image_size=32, noise=0.0)
    batch = data.sample(np.random.default_rng(7), 24)
    for image, label in zip(batch.inputs, batch.targets, strict=True):
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        regions = []
        for colour in colours[np.argsort(counts)[::-1]]:
            mask = np.all(image == colour, axis=-1)
            ys, xs = np.nonzero(mask)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            if mask.sum() >= 9:  # a shape: the background is never one flat colour
                regions.append((mask.sum() / box, ys.mean(), xs.mean(), mask.sum()))
        (square,) = [r for r in regions if r[0] > 0.99]
        (disc,) = [r for r in regions if r[0] < 0.9]
        dy, dx = disc[1] - square[1], disc[2] - square[2]
        direction = (0 if dx > 0 else 1) if abs(dx) > abs(dy) else (2 if dy > 0 else 3)
        assert label == 2 * direction + int(disc[3] > square[3])


def test_train_reports_accuracy_checkpoints_and_resumes(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    done = archgen("train", str(spec), "-o", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    for name in ("loss.png", "weights.safetensors", "spec.yaml", "checkpoints"):
        assert (run / name).exists(), name
    vals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [0, 2, 4] and all(0 <= r["accuracy"] <= 1 for r in vals)


class Killed(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    from archgen import api
    from archgen.spec.loader import parse_spec
    from archgen.train.config import TrainConfig
    from archgen.train.data import load_data
    from archgen.train.loop import train

    graph = api.compile_spec(parse_spec(TINY, "tiny.yaml"))
    data = load_data(ShapesData(image_size=16), vocab_size=8, seq_len=0)
    cfg = TrainConfig(steps=5, batch_size=4, warmup_steps=1, eval_interval=2, eval_batches=1,
                      checkpoint_interval=2, log_interval=1)  # fmt: skip
    quiet = {"progress": False, "log": lambda m: None}
    train(graph, data, cfg, tmp_path / "full", **quiet)

    def kill_at_3(done: int, loss: float) -> None:
        if done == 3:
            raise Killed

    with pytest.raises(Killed):
        train(graph, data, cfg, tmp_path / "part", on_step=kill_at_3, **quiet)
    resumed = train(graph, data, cfg, tmp_path / "part", resume=True, **quiet)
    assert resumed.trained_steps == 3  # from the step-2 checkpoint
    a = load_file(tmp_path / "full" / "weights.safetensors")
    b = load_file(tmp_path / "part" / "weights.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _folder(root: Path, sizes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = (rng.random((10, 14, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_reads_resizes_and_splits(tmp_path: Path) -> None:
    data = ImageFolderData(path=str(_folder(tmp_path / "imgs", {"cat": 6, "dog": 4})),
                           image_size=8, val_fraction=0.25)  # fmt: skip
    assert data.classes == ("cat", "dog") and data.num_classes == 2
    train_x, train_y, _, val_y = data.arrays
    assert train_x.shape[1:] == (8, 8, 3) and len(train_y) + len(val_y) == 10
    assert set(val_y) == {0, 1}  # every class held out in part
    batch = data.sample(np.random.default_rng(0), 5)
    assert batch.inputs.shape == (5, 8, 8, 3) and batch.targets.shape == (5,)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds 0 class folder(s), need at least 2"),
        ({"a": 2, "b": 0}, "holds no image files"),
    ],
)
def test_image_folder_mistakes_are_clear(tmp_path: Path, layout: dict, message: str) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for name, count in layout.items():
        (root / name).mkdir()
        for i in range(count):
            Image.new("RGB", (4, 4)).save(root / name / f"{i}.png")
    with pytest.raises(ArchgenError, match=re.escape(message)):
        _ = ImageFolderData(path=str(root), image_size=8).arrays


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ArchgenError, match=r"cannot read image .*broken\.png"):
        _ = ImageFolderData(path=str(root), image_size=8).arrays


def test_data_must_fit_the_model(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("num_classes: 8", "num_classes: 5"))
    with pytest.raises(ArchgenError, match=r"model\.num_classes: 5, but data \(shapes\) has 8"):
        training.prepare(spec)
    spec.write_text(TINY + "data: {kind: text}\n")
    with pytest.raises(ArchgenError, match="trains on images, not text"):
        training.prepare(spec)


@pytest.mark.slow
def test_export_to_onnx_validates_every_block(tmp_path: Path) -> None:
    """`archgen export` of an image classifier: pixels with a dynamic batch -> logits, checked
    block by block against the eager float64 reference; `archgen validate` agrees."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("channel_mixer: {kind: convglu, hidden: 8}",
                                 "channel_mixer: {kind: convglu, hidden: 8}\n"
                                 "        - token_mixer: {kind: attention, heads: 2}"))  # fmt: skip
    done = archgen("export", str(spec), "-o", str(tmp_path / "onnx"))
    assert done.returncode == 0, done.stderr
    assert "decode" not in done.stdout + done.stderr  # nothing to decode: no note about it
    numerics = json.loads((tmp_path / "onnx" / "numerics.json").read_text())
    assert numerics["passed"] and "stages.0.layers.2" in json.dumps(numerics)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (inp,) = session.get_inputs()
    assert inp.name == "pixels" and inp.shape[1:] == [16, 16, 3]
    for batch in (1, 3):  # the batch is dynamic
        (logits,) = session.run(None, {"pixels": np.zeros((batch, 16, 16, 3), np.float32)})
        assert logits.shape == (batch, 8)
    assert archgen("validate", str(spec)).returncode == 0
