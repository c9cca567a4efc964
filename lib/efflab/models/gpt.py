"""TinyLM: a small decoder-only transformer that models bytes, the language model of notebooks 03 and 05-09.

The architecture is GPT-2's (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"):
token and position embeddings, a stack of pre-norm blocks ``x + attention(norm1(x))`` then
``x + ffn(norm2(x))``, a final LayerNorm and a linear head that scores the next byte. The vocabulary is the 256
byte values, so any text is a valid input and no tokenizer is needed.

What is particular to this course:

* **Named parts.** ``model.embedding``, ``model.blocks[i].attention``, ``model.blocks[i].ffn``, the norms and
  ``model.head`` are separate modules, so :func:`parameters_by_role` can hand each role its own optimizer
  settings (relative learning rates, notebook 08; muP, notebook 07).
* **A pluggable feed-forward block.** ``TinyLM(config, ffn_factory)`` builds each block's ``ffn`` by calling
  ``ffn_factory(config, layer_index)``, so a mixture-of-experts layer (``efflab.models.moe``) can stand in for
  the dense :class:`FeedForward` without a second transformer implementation. The contract is below, at
  :class:`TinyLM`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from efflab.validation import check_fraction, check_int, check_positive

ROLES = ("embedding", "attention", "ffn", "router", "norm", "head")

INIT_STD = 0.02  # GPT-2's standard deviation for every weight matrix and embedding table


@dataclass
class GPTConfig:
    """Sizes of a TinyLM.

    ``d_ff=None`` becomes ``4 * d_model`` when the config is built. Because the resolved number is then stored,
    ``dataclasses.replace(config, d_model=256)`` keeps the old ``d_ff``; pass ``d_ff=None`` as well to get
    the 4x rule for the new width.
    """

    vocab_size: int = 256  # one token per byte value
    block_size: int = 128  # the longest context the model can see (number of position embeddings)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None  # hidden width of the feed-forward block; None means 4 * d_model
    dropout: float = 0.0
    bias: bool = False  # biases in the Linear layers and LayerNorms (GPT-2 has them; recent models do not)

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, low=1)
        check_int("block_size", self.block_size, low=1)
        check_int("n_layer", self.n_layer, low=1)
        check_int("n_head", self.n_head, low=1)
        check_int("d_model", self.d_model, low=1)
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"n_head={self.n_head!r} is not allowed with d_model={self.d_model}; "
                "expected a divisor of d_model, so that every head gets d_model // n_head dimensions"
            )
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_int("d_ff", self.d_ff, low=1)
        check_fraction("dropout", self.dropout, inclusive=True)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias={self.bias!r} is not allowed; expected True or False")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def init_linear_(linear: nn.Linear, std: float = INIT_STD) -> None:
    """GPT-2 initialization of one Linear layer: weights from N(0, std^2), biases zero."""
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def residual_init_std(config: GPTConfig) -> float:
    """The smaller std for layers that write into the residual stream (attention ``out``, ffn ``down``).

    GPT-2 (Radford et al. 2019, section 2.3) scales these weights by 1/sqrt(N) with N the number of residual
    layers, here two per block, so that the variance of the residual stream does not grow with depth.
    """
    return INIT_STD / math.sqrt(2 * config.n_layer)


class Embedding(nn.Module):
    """Token embedding plus learned position embedding: (B, T) byte ids -> (B, T, d_model)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.block_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.token.weight, mean=0.0, std=INIT_STD)
        nn.init.normal_(self.position.weight, mean=0.0, std=INIT_STD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.dropout(self.token(idx) + self.position(positions))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only.

    One fused Linear (``qkv``) computes queries, keys and values for all heads at once; ``out`` mixes the heads
    back into the residual stream. The attention itself is PyTorch's ``scaled_dot_product_attention``, which
    picks a fused kernel (FlashAttention on a GPU) and applies the causal mask without building it.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.residual_dropout = nn.Dropout(config.dropout)
        # Multiplier of the attention logits q.k; None is PyTorch's default 1/sqrt(head_dim). muP (notebook 07)
        # sets its own so the logits stay the same size when the head dimension grows with width.
        self.scale: float | None = None
        init_linear_(self.qkv)
        init_linear_(self.out, std=residual_init_std(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, d_model = x.shape
        # (B, T, 3 * d_model) -> three tensors of shape (B, n_head, T, head_dim)
        q, k, v = (
            part.view(batch, time, self.n_head, d_model // self.n_head).transpose(1, 2)
            for part in self.qkv(x).split(d_model, dim=2)
        )
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=self.scale)
        y = y.transpose(1, 2).reshape(batch, time, d_model)  # heads side by side again
        return self.residual_dropout(self.out(y))


class FeedForward(nn.Module):
    """The dense feed-forward block: ``down(GELU(up(x)))``, widening d_model to d_ff and back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.activation = nn.GELU()
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        init_linear_(self.up)
        init_linear_(self.down, std=residual_init_std(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


def dense_ffn(config: GPTConfig, layer_index: int) -> nn.Module:
    """The default ``ffn_factory``: the same dense :class:`FeedForward` in every layer."""
    return FeedForward(config)


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attention(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, config: GPTConfig, ffn: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attention = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TinyLM(nn.Module):
    """The language model: (B, T) byte ids -> (B, T, vocab_size) logits for the next byte at every position.

    **The ffn contract.** ``ffn_factory(config, layer_index)`` must return an ``nn.Module`` that maps
    (B, T, d_model) to (B, T, d_model) and initializes its own weights (:class:`FeedForward` shows the GPT-2
    way). If it needs an extra loss term, such as a mixture-of-experts load-balancing loss, it sets a tensor
    attribute ``aux_loss`` during every forward pass; after each forward, ``model.aux_loss`` holds the sum of
    the blocks' ``aux_loss`` tensors (a zero tensor when no block has one), for the training loop to add to
    the language-modelling loss. A submodule named ``router`` inside the ffn gets its own role in
    :func:`parameters_by_role`.
    """

    def __init__(
        self,
        config: GPTConfig,
        ffn_factory: Callable[[GPTConfig, int], nn.Module] | None = None,
    ):
        super().__init__()
        self.config = config
        ffn_factory = ffn_factory or dense_ffn
        self.embedding = Embedding(config)
        self.blocks = nn.ModuleList(
            Block(config, ffn_factory(config, layer_index)) for layer_index in range(config.n_layer)
        )
        self.norm = nn.LayerNorm(config.d_model, bias=config.bias)
        # Not tied to the token embedding (GPT-2 ties them): relative learning rates (notebook 08) give the
        # embedding and the head different learning rates, which needs two separate matrices.
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_linear_(self.head)
        self.aux_loss = torch.zeros(())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.is_floating_point() or idx.is_complex():
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx has shape {shape}; expected integer token ids of shape (batch, time)")
        # On a GPU the range check would wait for the device at every step; there torch's own assert stands.
        if (
            idx.device.type == "cpu"
            and idx.numel()
            and not 0 <= int(idx.min()) <= int(idx.max()) < self.config.vocab_size
        ):
            raise ValueError(
                f"idx holds token ids from {int(idx.min())} to {int(idx.max())}; expected ids in "
                f"[0, vocab_size={self.config.vocab_size})"
            )
        if idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence length T={idx.shape[1]} is not allowed; "
                f"expected T <= block_size={self.config.block_size}"
            )
        x = self.embedding(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        aux_losses = [
            block.ffn.aux_loss for block in self.blocks if getattr(block.ffn, "aux_loss", None) is not None
        ]
        self.aux_loss = sum(aux_losses, torch.zeros((), device=idx.device))
        return logits

    @torch.no_grad()
    def next_token_probabilities(
        self, idx: torch.Tensor, temperature: float = 1.0, *, top_k: int | None = None
    ) -> torch.Tensor:
        """The sampling distribution for the byte after ``idx``: (B, T) -> (B, vocab_size).

        Only the last ``block_size`` tokens are used as context.
        """
        _check_context(idx)
        logits = self(idx[:, -self.config.block_size :])[:, -1, :]
        return probabilities_from_logits(logits, temperature, top_k=top_k)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled bytes to ``idx`` (B, T) and return (B, T + max_new_tokens).

        Each step feeds at most the last ``block_size`` tokens, so the text can grow past the context window.
        Pass a seeded ``generator`` for reproducible samples, and call ``model.eval()`` first if the model has
        dropout (dropout draws from the global RNG, not from ``generator``).
        """
        check_int("max_new_tokens", max_new_tokens, low=0)
        _check_context(idx)
        _check_sampling(temperature, top_k, self.config.vocab_size)
        for _ in range(max_new_tokens):
            probabilities = self.next_token_probabilities(idx, temperature, top_k=top_k)
            next_token = torch.multinomial(probabilities, num_samples=1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
        return idx


def _check_context(idx) -> None:
    """The prompt of :meth:`TinyLM.generate` and :meth:`TinyLM.next_token_probabilities`: at least one token in
    every row (the model's forward pass checks the ids themselves)."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or 0 in idx.shape:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx has shape {shape}; expected token ids of shape (batch, time), both >= 1")


def _check_sampling(temperature, top_k, vocab_size: int) -> None:
    """The sampling knobs: a finite temperature > 0 and, if given, top_k in [1, vocab_size]."""
    check_positive("temperature", temperature)
    if top_k is not None:
        check_int("top_k", top_k, low=1, high=vocab_size)


def probabilities_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, *, top_k: int | None = None
) -> torch.Tensor:
    """softmax(logits / temperature) over the last dimension, optionally keeping only the top_k largest.

    Temperature below 1 sharpens the distribution towards the most likely token (the argmax as temperature
    goes to 0); above 1 it flattens it towards uniform. This is a pure function of precomputed logits, so a
    temperature slider can redraw the distribution without running the model again.
    """
    real = isinstance(logits, torch.Tensor) and not (logits.is_complex() or logits.dtype == torch.bool)
    if not real or logits.dim() == 0 or logits.shape[-1] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits has shape {shape}; expected a real tensor of shape (..., vocab_size >= 1)")
    _check_sampling(temperature, top_k, logits.shape[-1])
    # A NaN or +inf score, or a row with every score -inf, would turn the whole row into NaN. On a GPU the check
    # would wait for the device at every sampled token; there the model's own finiteness stands.
    if logits.device.type == "cpu" and (
        logits.isnan().any() or logits.isposinf().any() or logits.isneginf().all(dim=-1).any()
    ):
        raise ValueError("logits contains NaN, +inf or a row of only -inf; expected scores (-inf masks a token)")
    if not logits.is_floating_point():
        logits = logits.float()
    if top_k is not None:
        kth_largest = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    # Subtracting the max before dividing keeps a tiny temperature from overflowing to inf - inf = nan.
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    return F.softmax(scaled.float(), dim=-1)


def parameters_by_role(model: TinyLM) -> dict[str, list[nn.Parameter]]:
    """Split a TinyLM's parameters by role: every parameter lands in exactly one list of ``ROLES``.

    Role is read from the parameter's name: ``embedding.*`` -> embedding, ``head.*`` -> head, the final
    ``norm`` and each block's ``norm1``/``norm2`` -> norm, ``blocks.i.attention.*`` -> attention,
    ``blocks.i.ffn.*`` -> ffn, except parameters inside a submodule named ``router`` -> router. This is the
    grouping of the relative-learning-rate study (notebook 08, arXiv 2507.03526). Roles without parameters
    (router, for a dense model) map to empty lists.
    """
    block_part_roles = {"norm1": "norm", "norm2": "norm", "attention": "attention", "ffn": "ffn"}
    top_level_roles = {"embedding": "embedding", "norm": "norm", "head": "head"}
    groups: dict[str, list[nn.Parameter]] = {role: [] for role in ROLES}
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        in_block = parts[0] == "blocks"  # blocks.<layer index>.<part>.…
        role = (block_part_roles if in_block else top_level_roles).get(parts[2 if in_block else 0])
        if role is None:
            raise ValueError(f"parameter {name!r} has no role; expected it under one of {ROLES}")
        if "router" in parts[:-1]:
            role = "router"
        groups[role].append(parameter)
    return groups
