"""Projected compression (Stefaniak et al. 2025, arXiv 2506.22255): train projections of frozen weights, merge.

Hard pruning throws the discarded channels away. Projected compression keeps *every* weight ``W`` of the trained
base model, frozen, and learns how to map it to the target size. For each compressed matrix (sides as in the
:mod:`layout <efflab.projected_compression.layout>` table)

    W'(P_out, P_in, A) = P_out W P_in + A                                                         (1)

with ``P_out`` (k_out x out) and ``P_in`` (in x k_in) trainable, and a target-size matrix ``A`` that the
authors' public implementation adds, initialised to zero (whether the paper's first version had it is not
verified). The embedding tables are ``E' = E P_in + A_E`` (their vocabulary side is untouched) and the norm gains
are sliced to the kept ``d'`` entries and trained.

**Initialisation.** ``P_out`` and ``P_in`` start as the 0/1 selections of the kept indices and ``A = 0``, so before
the first step ``W' = W[R][:, C]``: the projected model *is* the hard-pruned model (tested).

**Training.** Only the projections, ``A`` and the gains are trained, on the ordinary language-model loss.
Gradients reach ``P`` through the product (1): ``dL/dP_in = W^T P_out^T G`` with ``G = dL/dW'``, which is
nonzero in the rows of the *discarded* channels too, so a kept channel can learn to draw on them.

**Per-token compute.** A forward pass first materialises every ``W'`` (cost independent of the batch), then runs
the target-size model on the tokens. So per token the projected model costs what the compressed model costs;
the projection products are paid once per step (:mod:`.cost`).

**Merge.** After training, compute every ``W'`` once in fp32 and load them into a plain
:class:`~efflab.models.gpt.TinyLM` of shape ``(d', f')``; projections, ``A`` and the frozen base are dropped.
Because the projected model's forward *is* that TinyLM's forward with the materialised weights
(``torch.func.functional_call``), the merged model's logits equal the projected model's (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from efflab.models.gpt import TinyLM
from efflab.projected_compression.hard_pruning import slice_piece
from efflab.projected_compression.importance import Selection, Target, check_indices
from efflab.projected_compression.layout import Piece, layout
from efflab.validation import check_int


def selection_matrix(indices: Tensor, size: int) -> Tensor:
    """``S`` (k x size) with ``S[j, indices[j]] = 1``: ``S @ W`` keeps the rows ``indices`` of ``W``."""
    check_int("size", size, low=1)
    check_indices("indices", indices, size)
    matrix = torch.zeros(len(indices), size)
    matrix[torch.arange(len(indices)), indices.cpu()] = 1.0
    return matrix


class ProjectedMatrix(nn.Module):
    """One compressed piece: ``P_out W P_in + A`` (either projection absent when that side is untouched)."""

    def __init__(self, piece: Piece, base_shape: torch.Size):
        super().__init__()
        rows = piece.row_stop - piece.row_start
        cols = base_shape[1]
        self.p_out = None if piece.rows is None else nn.Parameter(selection_matrix(piece.rows, rows))
        self.p_in = None if piece.cols is None else nn.Parameter(selection_matrix(piece.cols, cols).T.contiguous())
        height = rows if piece.rows is None else len(piece.rows)
        width = cols if piece.cols is None else len(piece.cols)
        self.a = nn.Parameter(torch.zeros(height, width))

    def forward(self, weight: Tensor) -> Tensor:
        """The compressed matrix from the frozen block ``weight`` (out x in)."""
        if self.p_in is not None:
            weight = weight @ self.p_in
        if self.p_out is not None:
            weight = self.p_out @ weight
        return weight + self.a


def _key(name: str) -> str:
    return name.replace(".", "__")


class ProjectedLM(nn.Module):
    """A frozen base TinyLM plus trainable projections: ``model(idx)`` gives the target-size model's logits."""

    def __init__(self, base: TinyLM, selection: Selection, target: Target):
        super().__init__()
        self.config = target.config_for(base.config)
        selection.check_against(base.config, target)
        self.target = target
        self.base = base
        for parameter in self.base.parameters():
            parameter.requires_grad_(False)
        self.layout = layout(base, selection)
        parameters = dict(base.named_parameters())
        self.matrices = nn.ModuleDict()
        self.gains = nn.ParameterDict()
        for name, pieces in self.layout.items():
            weight = parameters[pieces[0].name]
            if weight.dim() == 1:
                self.gains[_key(name)] = nn.Parameter(slice_piece(weight.detach(), pieces[0]).clone())
            else:
                self.matrices[_key(name)] = nn.ModuleList(ProjectedMatrix(p, weight.shape) for p in pieces)
        self.to(next(base.parameters()).device)
        # The target-shaped TinyLM whose forward we run with the materialised weights; it is not a submodule
        # (its own parameters are never used or trained), and it lives on the meta device: no memory.
        with torch.device("meta"):
            object.__setattr__(self, "_skeleton", TinyLM(self.config))
        self.aux_loss = torch.zeros(())

    def materialise(self) -> dict[str, Tensor]:
        """Every parameter of the target TinyLM, as differentiable tensors: equation (1) for each matrix."""
        base = dict(self.base.named_parameters())
        weights: dict[str, Tensor] = {}
        for name, pieces in self.layout.items():
            if _key(name) in self.gains:
                weights[name] = self.gains[_key(name)]
                continue
            blocks = [
                matrix(base[p.name][p.row_start : p.row_stop])
                for p, matrix in zip(pieces, self.matrices[_key(name)], strict=True)
            ]
            weights[name] = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
        return weights

    def forward(self, idx: Tensor) -> Tensor:
        logits = functional_call(self._skeleton, self.materialise(), (idx,), strict=True)
        self.aux_loss = torch.zeros((), device=idx.device)
        return logits

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projections, the ``A`` matrices and the sliced gains: what projected compression trains."""
        return [p for p in self.parameters() if p.requires_grad]

    def base_parameters(self) -> list[nn.Parameter]:
        return list(self.base.parameters())


@torch.no_grad()
def merge(projected: ProjectedLM) -> TinyLM:
    """The plain TinyLM of shape ``(d', f')``: every ``W' = P_out W P_in + A`` computed once, in fp32."""
    device = next(projected.parameters()).device
    merged = TinyLM(projected.config).to(device)
    state = {name: tensor.detach().float().clone() for name, tensor in projected.materialise().items()}
    merged.load_state_dict(state, strict=True)
    return merged


def projection_sources(projected: ProjectedLM, name: str) -> Tensor:
    """|P_in| of the matrix ``name`` (its first piece): how much each kept input channel draws from each base one.

    Shape (in, k_in): column ``j`` is what target channel ``j`` reads from the ``in`` base channels. At the start
    it is a one-hot column; after training, weight on rows of discarded channels is what pruning could not learn.
    """
    if _key(name) not in projected.matrices:
        raise ValueError(
            f"name={name!r} is not allowed; expected a matrix of the target model, e.g. 'head.weight'"
        )
    matrices = projected.matrices[_key(name)]
    p_in = matrices[0].p_in
    if p_in is None:
        raise ValueError(f"name={name!r} has no input projection; expected a matrix whose columns are compressed")
    return p_in.detach().abs().cpu()
