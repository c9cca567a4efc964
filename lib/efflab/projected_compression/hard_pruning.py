"""The baseline: hard structured pruning to ``(d', f')`` by slicing, then (optionally) retraining everything.

With the kept indices of :func:`~efflab.projected_compression.importance.select`, every matrix keeps the rows and
columns the :mod:`layout <efflab.projected_compression.layout>` names, ``W' = W[R][:, C]``, and every norm gain
keeps its ``d'`` entries. The result is an ordinary :class:`~efflab.models.gpt.TinyLM` of the target shape whose
parameters are all trainable; "hard prune + retrain" trains all of them on the language-model loss for the same
number of tokens the projected model gets. The discarded channels are gone for good: this is what projected
compression's trainable projections are meant to avoid.
"""

from __future__ import annotations

import torch

from efflab.models.gpt import TinyLM
from efflab.projected_compression.importance import Selection, Target
from efflab.projected_compression.layout import Piece, layout


def slice_piece(weight: torch.Tensor, piece: Piece) -> torch.Tensor:
    """``W[row_start:row_stop][rows][:, cols]`` (a vector: ``w[rows]``)."""
    block = weight[piece.row_start : piece.row_stop]
    if piece.rows is not None:
        block = block[piece.rows.to(block.device)]
    if piece.cols is not None:
        block = block[:, piece.cols.to(block.device)]
    return block


@torch.no_grad()
def pruned_state(model: TinyLM, selection: Selection) -> dict[str, torch.Tensor]:
    """The sliced parameters of the target model, by name."""
    parameters = dict(model.named_parameters())
    return {
        name: torch.cat([slice_piece(parameters[p.name], p) for p in pieces]).clone()
        for name, pieces in layout(model, selection).items()
    }


def hard_prune(model: TinyLM, selection: Selection, target: Target) -> TinyLM:
    """A new TinyLM of shape ``target`` holding the base's kept rows and columns (the base is not changed)."""
    config = target.config_for(model.config)
    selection.check_against(model.config, target)
    device = next(model.parameters()).device
    pruned = TinyLM(config).to(device)
    pruned.load_state_dict(pruned_state(model, selection), strict=True)
    return pruned
