"""Text generation with each mixer's incremental state (KV caches, SSM states).

Byte-level models (vocab >= 256) take the prompt as UTF-8 bytes; tokens >= 256 are not text and
are dropped when decoding the output back to a string. A model trained through a BPE tokenizer
reads and writes text through the ``tokenizer.json`` its run folder holds
(:func:`load_tokenizer`); the prompt is encoded on its own, so its last token may split where
the training text would have merged (e.g. a trailing space).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from archgen.errors import ArchgenError

if TYPE_CHECKING:
    from archgen.train.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Generation:
    prompt_tokens: list[int]
    new_tokens: list[int]
    seconds: float  # decode time of the new tokens (prefill excluded)
    tokenizer: TextTokenizer | None = None  # None: byte-level

    @property
    def text(self) -> str:
        return decode_text(self.new_tokens, self.tokenizer)

    @property
    def tokens_per_second(self) -> float:
        return len(self.new_tokens) / self.seconds if self.seconds > 0 else float("inf")


def token_bytes(token: int, tokenizer: TextTokenizer | None = None) -> bytes:
    """The text bytes of one generated token (none for a non-byte id of a byte-level model)."""
    if tokenizer is not None:
        return tokenizer.decode([token])
    return bytes([token]) if token < 256 else b""


def decode_text(tokens: list[int], tokenizer: TextTokenizer | None = None) -> str:
    return b"".join(token_bytes(t, tokenizer) for t in tokens).decode("utf-8", errors="replace")


def load_tokenizer(
    spec: str | os.PathLike[str], weights: Path | None, text_ids: int
) -> TextTokenizer | None:
    """The tokenizer a model reads text with: ``tokenizer.json`` beside ``weights`` (a run
    folder, or a weights file's folder), else the spec's ``data.tokenizer`` of kind ``file``;
    None for a byte-level model. ``text_ids`` is how many ids may stand for text (the
    vocabulary, less a masked-diffusion LM's mask token)."""
    from archgen import api
    from archgen.train.tokenizer import TextTokenizer

    folder = None if weights is None else (weights if weights.is_dir() else weights.parent)
    tokenizer = None
    if folder is not None and (folder / "tokenizer.json").is_file():
        tokenizer = TextTokenizer.load(folder / "tokenizer.json")
    else:
        data = api.as_spec(spec).data
        wanted = getattr(data, "tokenizer", None)
        if wanted is not None and wanted.kind == "file":
            path = Path(wanted.path).expanduser()
            tokenizer = TextTokenizer.load(path if path.is_absolute() else Path(spec).parent / path)
        elif wanted is not None:
            where = (
                f"{folder} holds no tokenizer.json"
                if folder is not None
                else "no --weights folder was given to read its tokenizer.json from"
            )
            raise ArchgenError(
                f"{spec} reads text through a trained BPE tokenizer (data.tokenizer), but {where}",
                hint="pass --weights RUN_FOLDER, the folder archgen train wrote (it saves "
                "tokenizer.json beside the weights)",
            )
    if tokenizer is not None and tokenizer.vocab_size > text_ids:
        raise ArchgenError(
            f"the tokenizer has {tokenizer.vocab_size} token ids but the model takes {text_ids} "
            "text ids",
            hint="use the tokenizer.json of the run that trained these weights",
        )
    return tokenizer


def encode_prompt(
    prompt: str, vocab_size: int, tokenizer: TextTokenizer | None = None
) -> list[int]:
    if vocab_size < 256 and tokenizer is None:
        raise ArchgenError(
            f"the model's vocabulary ({vocab_size}) is smaller than a byte vocabulary (256): "
            "text prompts need a byte-level model"
        )
    # A raw non-UTF-8 byte on the command line reaches Python as a lone surrogate
    # (surrogateescape); a byte-level model takes that byte back as its token.
    try:
        tokens = list(prompt.encode("utf-8", errors="surrogateescape"))
    except UnicodeEncodeError as exc:  # a lone surrogate that stands for no byte
        raise ArchgenError(
            f"the prompt holds {prompt[exc.start]!r} at character {exc.start}, which is not "
            "text (a lone UTF-16 surrogate)"
        ) from None
    if not tokens:
        raise ArchgenError("the prompt is empty", hint="pass at least one character with --prompt")
    if tokenizer is not None:
        return [int(t) for t in tokenizer.encode(bytes(tokens))]
    return tokens


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_tokens: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    max_seq_len: int | None = None,
    on_token: Callable[[int], None] | None = None,
    tokenizer: TextTokenizer | None = None,
) -> Generation:
    """Sample ``max_new_tokens`` after ``prompt_tokens`` (greedy when ``temperature == 0``);
    ``tokenizer`` only decodes :attr:`Generation.text`."""
    total = len(prompt_tokens) + max_new_tokens
    if max_seq_len is not None and total > max_seq_len:
        raise ArchgenError(
            f"prompt ({len(prompt_tokens)} tokens) + --max-new-tokens ({max_new_tokens}) = {total} "
            f"exceeds the model's max_seq_len {max_seq_len}"
        )
    generator = torch.Generator().manual_seed(seed)
    state = model.init_state(1)  # type: ignore[operator]
    logits = None
    for pos, token in enumerate(prompt_tokens):
        logits, state = model.step(torch.tensor([token]), state, torch.tensor(pos))  # type: ignore[operator]
    new: list[int] = []
    start = time.perf_counter()
    for i in range(max_new_tokens):
        assert logits is not None
        if temperature == 0:
            token = int(logits[0].argmax())
        else:
            scores = logits[0].float() / temperature
            if top_k is not None:
                cutoff = torch.topk(scores, min(top_k, scores.numel())).values[-1]
                scores = scores.masked_fill(scores < cutoff, float("-inf"))
            token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
        new.append(token)
        if on_token is not None:
            on_token(token)
        pos = len(prompt_tokens) + i
        logits, state = model.step(torch.tensor([token]), state, torch.tensor(pos))  # type: ignore[operator]
    return Generation(prompt_tokens, new, time.perf_counter() - start, tokenizer)


def is_onnx_export(weights: Path | None) -> bool:
    """Whether ``weights`` is a folder written by ``archgen export --format onnx``."""
    return weights is not None and weights.is_dir() and (weights / ONNX_MODEL_FILE).is_file()


ONNX_MODEL_FILE = "model.onnx"  # backends/onnx.py's FORWARD_FILE (kept import-free here)


def load_onnx_denoiser(spec: str | os.PathLike[str], folder: Path) -> Callable:
    """The logits graph of an ``archgen export --format onnx`` folder, run in onnxruntime, as
    the denoiser of :func:`archgen.decoding.decode` (``tokens [1, L] -> logits [1, L, V]``).

    The folder must have been exported from ``spec``'s model (equal spec hashes): its graph
    takes the same tokens, and its mask token is the spec's last id."""
    import json

    from archgen import api
    from archgen.backends.base import LowerOptions, get_backend
    from archgen.errors import UnavailableError

    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ArchgenError(
            f"{folder} holds {ONNX_MODEL_FILE} but no manifest.json: not an archgen export folder",
            hint="export it with archgen export SPEC --format onnx -o FOLDER",
        )
    manifest = json.loads(manifest_path.read_text())
    want = api.spec_hash(api.as_spec(spec))
    if manifest.get("spec_hash") != want or manifest.get("format") != "onnx":
        raise ArchgenError(
            f"{folder} was not exported from {spec}'s model (spec hash "
            f"{manifest.get('spec_hash')}, format {manifest.get('format')}; {spec}: {want})",
            hint=f"pass the spec it was exported from: {folder / 'spec.yaml'}",
        )
    backend = get_backend("onnx")
    ok, why = backend.is_available()
    if not ok:
        raise UnavailableError(f"cannot run {folder / ONNX_MODEL_FILE}: {why}")
    artifact = backend.load(folder, api.compile_spec(spec), LowerOptions())
    return artifact.run  # type: ignore[attr-defined]


def load_denoiser(
    spec: str | os.PathLike[str], weights: Path | None, backend: str | None = None
) -> tuple[Callable, str]:
    """A masked-diffusion LM's denoiser (``tokens [1, L] -> logits [1, L, V]``) and what runs
    it: an ``archgen export --format onnx`` folder as ``weights`` runs in onnxruntime, else
    ``backend`` ``"eager"`` (the default) or ``"compile"`` runs the model with ``weights``."""
    if is_onnx_export(weights):
        assert weights is not None
        if backend not in (None, "onnx"):
            raise ArchgenError(
                f"--backend {backend} with {weights}, an onnx export folder (run in onnxruntime)",
                hint="pass the run folder it was exported from, or drop --backend",
            )
        return load_onnx_denoiser(spec, weights), "onnxruntime"
    if backend == "compile":
        return load_compiled_denoiser(spec, weights), "torch.compile"
    if backend not in (None, "eager"):
        raise ArchgenError(f"unknown denoiser backend {backend!r}; choose eager or compile")
    return load_for_generation(spec, weights), "eager"


def load_compiled_denoiser(spec: str | os.PathLike[str], weights: Path | None) -> Callable:
    """The compile backend's artifact of ``spec`` (torch.compile / Inductor) with ``weights``, as
    the denoiser of :func:`archgen.decoding.decode`: every call of a decoding has the same length
    (prompt + generation), so one compiled graph serves them all."""
    from archgen import api
    from archgen.backends.base import LowerOptions, get_backend
    from archgen.backends.weights import weights_file
    from archgen.errors import UnavailableError

    graph = api.compile_spec(spec)
    path = weights_file(weights) if weights is not None else None
    api.check_memory(graph, "generate")
    backend = get_backend("compile")
    ok, why = backend.is_available()
    if not ok:
        raise UnavailableError(f"cannot use the compile backend here: {why}")
    options = LowerOptions(weights=str(path) if path is not None else None)
    return backend.lower(graph, options).run


def load_for_generation(spec: str | os.PathLike[str], weights: Path | None) -> torch.nn.Module:
    """The eager model of ``spec`` with ``weights`` (a file, or a folder written by build, train,
    distill or search: ``OUT/best``)."""
    from archgen import api
    from archgen.backends.torch_model import build_model
    from archgen.backends.weights import load_weights, weights_file

    graph = api.compile_spec(spec)
    path = weights_file(weights) if weights is not None else None  # a wrong path: before building
    api.check_memory(graph, "generate")  # before allocating a model there is no room for
    model = build_model(graph).eval()
    if path is not None:
        load_weights(model, path)
    return model
