"""The spec's optional ``search:`` section: what may change, the workload, budget and quality.

```yaml
search:
  budget: 10ms                  # --budget on the command line overrides it
  trials: 40
  workload: {batch: 1, seq_len: 512, phase: prefill, backend: eager, device: cpu, threads: 2}
  quality: {fidelity: blockwise}
  slots:
    - layers: [0, 1, 2, 4, 5, 6]          # indices of the expanded layer list, or "all"
      token_mixer:                        # the choices; a list value expands into one choice each
        - {kind: mamba}
        - {kind: swa, window: [64, 256]}
        - {kind: checkpoint_attention, segment_size: 10}
```

An image model's slots name stages, and the layers within each (``examples/vision/search.yaml``):
``{stages: [1], per: stage, token_mixer: [{kind: raft, raft_size: 2}, {kind: spectrum}]}`` is one
choice for every layer of stage 1 (``per: block``: one per layer); ``channel_mixer`` choices
swap channel mixers the same way. The workload is ``batch`` images of the model's image size.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkloadSpec(_Section):
    batch: int = Field(1, ge=1, le=4096, description="batch size the budget applies to")
    seq_len: int | None = Field(
        None,
        ge=1,
        description="sequence length (prefill) or context (decode); default max_seq_len (an "
        "image model reads batch images of its image_size: no seq_len)",
    )
    phase: Literal["prefill", "decode", "diffusion-decode"] = Field(
        "prefill",
        description="prefill: a whole sequence; decode: one token at context seq_len; "
        "diffusion-decode (masked-diffusion LMs): one generation of gen_length tokens with "
        "decoder, the denoiser reading seq_len tokens per call",
    )
    decoder: str | None = Field(
        None,
        description="diffusion-decode: the policy, as archgen generate --decoder "
        "(default localleap)",
    )
    gen_length: int | None = Field(
        None, ge=1, description="diffusion-decode: tokens generated per run (default seq_len / 2)"
    )
    calls_per_token: float | None = Field(
        None,
        gt=0,
        le=1,
        description="diffusion-decode with threshold/localleap: denoiser calls per generated "
        "token (model-dependent; archgen generate prints the NFE); confidence's are fixed",
    )
    dtype: Literal["float32", "bfloat16", "float64"] = Field("float32")
    backend: Literal["eager", "compile", "onnx", "tensorrt", "null"] = Field(
        "eager", description="where latency is measured"
    )
    device: Literal["cpu", "cuda"] = Field("cpu")
    threads: int = Field(2, ge=1, le=1024, description="intra-op threads, pinned and recorded")
    repeats: int = Field(15, ge=3, le=10000, description="timed runs per measurement")


class QualitySpec(_Section):
    fidelity: Literal["analytic", "capability", "blockwise"] = Field(
        "blockwise",
        description="analytic: memory/params proxy; capability: synthetic recall task; "
        "blockwise: local distillation from the trained base model (a masked-diffusion LM: "
        "capability by default, blockwise refused)",
    )
    teacher_steps: int = Field(300, ge=1, description="training steps of the teacher (cached)")
    distill_steps: int = Field(60, ge=1, description="steps per blockwise distillation job")
    finalists: int = Field(3, ge=0, description="finalists re-scored by end-to-end distillation")
    finalist_steps: int = Field(0, ge=0, description="0 disables end-to-end finalist scoring")


class SlotSpec(_Section):
    layers: list[int] | Literal["all"] = Field(
        "all",
        description="indices into the expanded layer list (an image model: into each chosen "
        "stage's expanded blocks, depth x block)",
    )
    stages: list[int] | Literal["all"] | None = Field(
        None, description="image models: the stages whose layers the slot covers (default all)"
    )
    per: Literal["block", "stage"] | None = Field(
        None,
        description="image models: one choice for each layer (block, the default) or one for "
        "all the chosen layers of a stage (stage)",
    )
    token_mixer: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="choices: mixer specs; a list-valued attribute expands"
    )
    channel_mixer: list[dict[str, Any]] | None = Field(
        None,
        min_length=1,
        description="image models: channel-mixer choices (a slot takes token_mixer or "
        "channel_mixer)",
    )


class SearchSpec(_Section):
    budget: str | None = Field(None, description="latency budget, e.g. 10ms")
    trials: int = Field(
        40, ge=1, le=1_000_000, description="distinct candidates to evaluate (repeats are free)"
    )
    seed: int = Field(0, ge=0)
    sampler: Literal["tpe", "nsga2", "random"] = Field("tpe")
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    slots: list[SlotSpec] = Field(min_length=1)
