"""Golden text of the IR printer."""

from __future__ import annotations

from archgen import api
from archgen.ir import print_graph
from archgen.spec.loader import parse_spec

SPEC = """
model:
  name: tiny
  vocab_size: 11
  d_model: 8
  max_seq_len: 16
  layers:
    - token_mixer: {kind: attention, heads: 2}
      channel_mixer: {kind: mlp, hidden: 12}
"""

GOLDEN = """\
graph tiny (causal-lm, d_model=8, vocab_size=11, max_seq_len=16) {
  %tokens: int64[B, L]
  %embedding = embedding(%tokens) : f32[B, L, 8]  # params=88 flops=0
  // layers.0
  %layers.0.token_norm = rmsnorm(%embedding) {eps=1e-05} : f32[B, L, 8]  # params=8 flops=512
  %layers.0.token_mixer = attention(%layers.0.token_norm) {heads=2, kv_heads=2, head_dim=4, \
rope_theta=10000.0, bias=false} : f32[B, L, 8]  # params=256 flops=13,904
  %layers.0.token_residual = residual_add(%embedding, %layers.0.token_mixer) : f32[B, L, 8]  \
# params=0 flops=128
  %layers.0.channel_norm = rmsnorm(%layers.0.token_residual) {eps=1e-05} : f32[B, L, 8]  \
# params=8 flops=512
  %layers.0.channel_mixer = mlp(%layers.0.channel_norm) {hidden=12, activation=gelu, bias=true} \
: f32[B, L, 8]  # params=212 flops=6,336
  %layers.0.channel_residual = residual_add(%layers.0.token_residual, %layers.0.channel_mixer) \
: f32[B, L, 8]  # params=0 flops=128
  %final_norm = rmsnorm(%layers.0.channel_residual) {eps=1e-05} : f32[B, L, 8]  \
# params=8 flops=512
  %logits = lm_head(%final_norm) {tied=true} : f32[B, L, 11]  # params=0 flops=2,816
  return %logits
}"""


def test_printer_golden() -> None:
    graph = api.compile_spec(parse_spec(SPEC, "tiny.yaml"))
    assert print_graph(graph) == GOLDEN
