"""IR graph -> ``torch.nn.Module``: the eager model every backend is checked against.

Module paths equal node names (``layers.3.token_mixer``), so parameter names are stable and
readable (``layers.3.token_mixer.q_proj.weight``) and validation can name blocks the same way
the IR printer does. The module holds no mixer math: it instantiates implementations from
``archgen.mixers.registry`` and wires them as the graph says.

The graph's single input may be tokens (a whole LM: embedding first) or a hidden value (a block
cut out with :func:`archgen.ir.slicing.subgraph`: ``f32[B, L, d_model]`` -> the block's
output). Either way the interpreter is this one, and a block's parameters are named as in the
whole model, so block weights load into a whole model unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archgen.errors import ArchgenError
from archgen.ir.graph import Graph, Node
from archgen.ir.ops import Embedding, LMHead, ResidualAdd, Role
from archgen.mixers.base import DecodeState
from archgen.mixers.registry import build_module

EMBED_INIT_STD = 0.02  # GPT-2/Llama: keeps tied logits O(1) at init (N(0,1) would not)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """``root.<path> = module``, creating containers on the way (a ModuleList before an index)."""
    *parents, leaf = path.split(".")
    parent = root
    for i, part in enumerate(parents):
        if isinstance(parent, nn.ModuleList):
            while len(parent) <= int(part):
                parent.append(nn.Module())
            parent = parent[int(part)]
            continue
        if not hasattr(parent, part):
            following = parents[i + 1] if i + 1 < len(parents) else leaf
            parent.add_module(part, nn.ModuleList() if following.isdigit() else nn.Module())
        parent = parent.get_submodule(part)
    parent.add_module(leaf, module)


class ArchModel(nn.Module):
    """The eager PyTorch model of a graph.

    >>> from archgen.api import compile_spec  # doctest: +SKIP
    >>> model = ArchModel(compile_spec("examples/transformer.yaml"))  # doctest: +SKIP
    >>> model(torch.zeros(1, 8, dtype=torch.long)).shape  # doctest: +SKIP
    torch.Size([1, 8, 256])
    >>> block = ArchModel(subgraph(graph, "layers.2"))  # doctest: +SKIP
    >>> block(torch.zeros(1, 8, 256)).shape  # doctest: +SKIP
    torch.Size([1, 8, 256])
    """

    def __init__(
        self,
        graph: Graph,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(graph.inputs) != 1:
            raise ArchgenError(
                f"a model runs a graph with one input, this one has {len(graph.inputs)} "
                f"({', '.join(graph.inputs)})"
            )
        self.graph = graph
        (self._input,) = graph.inputs
        self._embedding_path = next(
            (n.weight_path for n in graph.nodes if isinstance(n.op, Embedding)), None
        )
        self._output = graph.primary_output()
        self._program: list[tuple[Node, str | None]] = []
        for node in graph.nodes:
            op = node.op
            # parameters live at the node's weight path (its name unless a rewrite renamed it)
            path: str | None = node.weight_path
            if isinstance(op, Embedding):
                emb = nn.Embedding(op.vocab_size, op.d_model, device=device, dtype=dtype)
                nn.init.normal_(emb.weight, std=EMBED_INIT_STD)
                _set_submodule(self, path, emb)
            elif isinstance(op, LMHead):
                if op.tied:
                    if self._embedding_path is None:
                        raise ArchgenError(
                            f"{node.name} is tied to an embedding the graph does not hold"
                        )
                    path = None
                else:
                    head = nn.Linear(
                        op.d_model, op.vocab_size, bias=False, device=device, dtype=dtype
                    )
                    _set_submodule(self, path, head)
            elif isinstance(op, ResidualAdd):
                path = None
            else:
                _set_submodule(self, path, build_module(op, device=device, dtype=dtype))
            self._program.append((node, path))
        self._token_mixers = {
            n.name: n.weight_path for n in graph.nodes if n.op.role is Role.TOKEN_MIXER
        }

    def module_of(self, node: str) -> nn.Module:
        """The module holding node ``node``'s parameters."""
        return self.get_submodule(self.graph.node(node).weight_path)

    # Not `_apply`: that name is nn.Module's hook behind .to()/.double(), which it would shadow.
    def _apply_node(
        self, node: Node, args: list[torch.Tensor], path: str | None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(node.op, ResidualAdd):
            return args[0] + args[1]
        if isinstance(node.op, LMHead) and path is None:
            assert self._embedding_path is not None  # checked in __init__
            return F.linear(args[0], self.get_submodule(self._embedding_path).weight)
        return self.get_submodule(path)(*args)  # type: ignore[arg-type]

    def run(
        self, x: torch.Tensor, capture: tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The graph's output for its input ``x`` (tokens ``[B, L]`` of an LM: logits) and the
        values named in ``capture`` (e.g. block outputs, for validation)."""
        env: dict[str, torch.Tensor] = {self._input: x}
        for node, path in self._program:
            _bind(env, node, self._apply_node(node, [env[i] for i in node.inputs], path))
        return env[self._output], {name: env[name] for name in capture}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # LM: [B, L] int64 -> [B, L, V]
        return self.run(x)[0]

    # -- incremental decoding ------------------------------------------------------------------
    def init_state(
        self, batch: int, *, device: torch.device | None = None
    ) -> dict[str, DecodeState]:
        weight = next(self.parameters())
        dtype, device = weight.dtype, device or weight.device
        max_len = self.graph.model.max_seq_len
        return {
            name: self.get_submodule(path).init_state(
                batch, device=device, dtype=dtype, max_len=max_len
            )
            for name, path in self._token_mixers.items()
        }

    def step(
        self,
        x: torch.Tensor,
        state: dict[str, DecodeState],
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, DecodeState]]:
        """The input at position ``pos`` (an LM: one token ``[B]``; a block: ``[B, d_model]``)
        -> the output there (logits ``[B, V]``) and the new state. ``pos`` is one position or
        one per sequence ``[B]``; ``mask`` (``[B, past + 1]``, 1 = a real token) marks the
        left padding of a batch of prompts of different lengths (mixers/base.py)."""
        env: dict[str, torch.Tensor] = {self._input: x[:, None]}
        new_state = dict(state)
        for node, path in self._program:
            args = [env[i] for i in node.inputs]
            if node.name in state:
                y, new_state[node.name] = self.get_submodule(node.weight_path).step(
                    args[0][:, 0], state[node.name], pos, mask
                )
                env[node.output] = y[:, None]
            else:
                _bind(env, node, self._apply_node(node, args, path))
        return env[self._output][:, 0], new_state


def _bind(
    env: dict[str, torch.Tensor], node: Node, result: torch.Tensor | tuple[torch.Tensor, ...]
) -> None:
    """Name ``node``'s result(s): a fused node (``add_norm``) returns one tensor per output."""
    if len(node.outputs) == 1:
        env[node.output] = result  # type: ignore[assignment]
    else:
        env.update(zip(node.outputs, result, strict=True))


def build_model(
    graph: Graph,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ArchModel:
    """Instantiate ``graph`` with weights drawn deterministically from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ArchModel(graph, device=device, dtype=dtype)
