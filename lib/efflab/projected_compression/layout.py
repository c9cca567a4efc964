"""Where every tensor of the compressed TinyLM comes from: one table that pruning and projection both read.

For each parameter of the target TinyLM (shape ``(d', f')``) the layout lists its *pieces*: a block of rows of
one base parameter and the kept row and column indices inside that block. A piece of a matrix ``W`` (out x in)
is compressed on its output side with a row selection ``R`` and on its input side with a column selection ``C``:

    hard pruning:   W' = W[R][:, C]
    projection:     W' = P_out W P_in + A,   with P_out = S_R (k_out x out) and P_in = S_C^T (in x k_in) at start

where ``S_R[j, R_j] = 1`` is the 0/1 selection matrix of the indices ``R`` (the notes' table, arXiv 2506.22255's
public code). Which side is compressed, per TinyLM tensor (d-side: the residual selection; f-side: the layer's
FFN selection; qk/vo: the layer's attention selections, see :mod:`.importance`):

=============================  ==============  =============  ===================
tensor                          rows (P_out)    cols (P_in)    target shape
=============================  ==============  =============  ===================
embedding.token / .position     untouched       d              (V, d') / (T, d')
attention.qkv (q, k, v parts)   qk, qk, vo      d              (3 d', d')
attention.out                   d               vo             (d', d')
ffn.up                          f               d              (f', d')
ffn.down                        d               f              (d', f')
head                            untouched       d              (V, d')
norm gains                      d (a slice)                    (d',)
=============================  ==============  =============  ===================

The fused ``qkv`` matrix is three pieces (the q, k and v row blocks), each with its own projections, so the
queries keep drawing from query rows only. The vocabulary side of the embedding and the head is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from efflab.models.gpt import TinyLM
from efflab.projected_compression.importance import Selection


@dataclass(frozen=True)
class Piece:
    """Rows ``[row_start, row_stop)`` of base parameter ``name``, then kept ``rows`` / ``cols`` (None: all)."""

    name: str
    row_start: int
    row_stop: int
    rows: Tensor | None
    cols: Tensor | None


def layout(model: TinyLM, selection: Selection) -> dict[str, list[Piece]]:
    """Target parameter name -> its pieces, concatenated along dim 0 (a norm gain: one piece, ``rows`` kept)."""
    config = model.config
    d, d_ff, vocab = config.d_model, config.d_ff, config.vocab_size

    def whole(name: str, height: int, rows, cols) -> list[Piece]:
        return [Piece(name, 0, height, rows, cols)]

    table: dict[str, list[Piece]] = {
        "embedding.token.weight": whole("embedding.token.weight", vocab, None, selection.d),
        "embedding.position.weight": whole("embedding.position.weight", config.block_size, None, selection.d),
    }
    for i in range(config.n_layer):
        prefix = f"blocks.{i}"
        qkv = f"{prefix}.attention.qkv.weight"
        table[f"{prefix}.norm1.weight"] = whole(f"{prefix}.norm1.weight", d, selection.d, None)
        table[qkv] = [
            Piece(qkv, 0, d, selection.qk[i], selection.d),
            Piece(qkv, d, 2 * d, selection.qk[i], selection.d),
            Piece(qkv, 2 * d, 3 * d, selection.vo[i], selection.d),
        ]
        table[f"{prefix}.attention.out.weight"] = whole(
            f"{prefix}.attention.out.weight", d, selection.d, selection.vo[i]
        )
        table[f"{prefix}.norm2.weight"] = whole(f"{prefix}.norm2.weight", d, selection.d, None)
        table[f"{prefix}.ffn.up.weight"] = whole(f"{prefix}.ffn.up.weight", d_ff, selection.ffn[i], selection.d)
        table[f"{prefix}.ffn.down.weight"] = whole(f"{prefix}.ffn.down.weight", d, selection.d, selection.ffn[i])
    table["norm.weight"] = whole("norm.weight", d, selection.d, None)
    table["head.weight"] = whole("head.weight", vocab, None, selection.d)
    return table
