"""The model family we scale: the course's TinyLM at any width, with a dense or a mixture-of-experts feed-forward.

A width sweep only means something if *everything that should grow with width does*, and nothing else. The rules
of this family, for a width ``d`` (d_model):

* the head dimension is fixed (``head_dim``, 16 by default), so the number of heads is ``d / head_dim``;
* the dense FFN is ``ffn_ratio * d`` wide (the course's TinyLM uses 4; we use 2, as the paper's MoE code does);
* an MoE keeps the expansion rate E and the granularity G of Krajewski et al. (2024): ``E * G`` experts, each
  ``ffn_ratio * d / G`` wide, ``top_k = G``, so every expert matrix grows with d on both sides (its fan-in is
  d or the expert width), while the number of experts does not grow at all;
* depth, vocabulary (256 bytes) and context length stay fixed.

Forgetting one of these is a classic way to see the optimum drift under a "correct" muP (microsoft/mup issue 66:
a d_ff that did not scale with d). The *base* model is the same family at ``base_width``; muP's multipliers are
ratios of a tensor's shape to its shape in the base model, which :func:`base_shapes` reads from a model built on
PyTorch's ``meta`` device (shapes without memory).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.models.moe import moe_ffn
from efflab.validation import check_choice, check_int, check_positive

FFN_KINDS = ("dense", "moe")


@dataclass(frozen=True)
class ModelFamily:
    """Everything about the model except its width; ``build(width)`` makes one member."""

    base_width: int = 32
    n_layer: int = 2
    head_dim: int = 16
    ffn: str = "moe"
    ffn_ratio: int = 2
    expansion: int = 4  # E: all experts hold E times the parameters of the dense FFN
    granularity: int = 1  # G: experts are G times narrower than the dense FFN, top_k = G
    block_size: int = 64
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.001

    def __post_init__(self):
        check_int("base_width", self.base_width, low=1)
        check_int("n_layer", self.n_layer, low=1)
        check_int("head_dim", self.head_dim, low=1)
        check_choice("ffn", self.ffn, FFN_KINDS)
        check_int("ffn_ratio", self.ffn_ratio, low=1)
        check_int("expansion", self.expansion, low=1)
        check_int("granularity", self.granularity, low=1)
        check_int("block_size", self.block_size, low=1)
        check_positive("balance_loss_weight", self.balance_loss_weight, allow_zero=True)
        check_positive("z_loss_weight", self.z_loss_weight, allow_zero=True)
        self.check_width(self.base_width, name="base_width")

    def check_width(self, width: int, *, name: str = "width") -> None:
        """A width must hold whole heads and whole experts, and be a multiple of the base width."""
        check_int(name, width, low=1)
        if width % self.head_dim:
            raise ValueError(f"{name}={width!r} is not allowed; expected a multiple of head_dim={self.head_dim}")
        if self.ffn == "moe" and (self.ffn_ratio * width) % self.granularity:
            raise ValueError(
                f"{name}={width!r} is not allowed with granularity={self.granularity}; expected ffn_ratio * width "
                f"= {self.ffn_ratio * width} to split into {self.granularity} equal experts"
            )
        if width % self.base_width:
            raise ValueError(
                f"{name}={width!r} is not allowed with base_width={self.base_width}; expected a multiple of "
                "the base width (the width multiplier m_d = width / base_width must be a whole number)"
            )

    def config(self, width: int) -> GPTConfig:
        self.check_width(width)
        return GPTConfig(
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=width // self.head_dim,
            d_model=width,
            d_ff=self.ffn_ratio * width,
        )

    def ffn_factory(self):
        if self.ffn == "dense":
            return None  # TinyLM's own dense FeedForward
        return moe_ffn(
            expansion=self.expansion,
            granularity=self.granularity,
            routing="token_choice",
            balance_loss_weight=self.balance_loss_weight,
            z_loss_weight=self.z_loss_weight,
        )

    def build(self, width: int, *, device: torch.device | str = "cpu") -> TinyLM:
        """A TinyLM of this family at ``width``, with the course's own (GPT-2) initialization."""
        with torch.device(device):
            return TinyLM(self.config(width), self.ffn_factory())

    def with_changes(self, **changes) -> ModelFamily:
        return replace(self, **changes)


def base_shapes(family: ModelFamily) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape in the base model, by name, read from a model on the meta device."""
    base = family.build(family.base_width, device="meta")
    return {name: tuple(parameter.shape) for name, parameter in base.named_parameters()}
