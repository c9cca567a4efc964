"""A small vision transformer for the 8x8 digits: every patch is a token, every block is pre-norm.

The architecture is the ViT of Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words") at toy size:

1. the image (B, C, H, W) is cut into non-overlapping ``patch_size`` x ``patch_size`` patches, each patch is
   flattened and projected to ``d_model`` (one Linear, the same as a strided convolution), and a learned
   position embedding is added, giving ``T = (H / patch_size)^2`` tokens;
2. ``n_layers`` pre-norm blocks ``x + attention(norm1(x))`` then ``x + ffn(norm2(x))``;
3. a final LayerNorm, the mean over tokens, and a linear classifier.

There is no class token: the classifier reads the mean of the patch tokens, so every token is a patch and a
per-token statistic (how many experts a token used, notebook 09) can be drawn as a map over the image.

**The feed-forward block is made of named, swappable parts.** ``model.layers[i].ffn`` is a
:class:`FeedForward` with ``up`` (Linear d_model -> d_ff), ``activation`` (a module: GELU by default) and
``down`` (Linear d_ff -> d_model). Replacing ``ffn.activation`` by ``nn.ReLU()`` turns the model into its ReLU
version without touching the weights, and a hook on ``ffn.activation`` sees the hidden activations; replacing
``layers[i].ffn`` as a whole (by any module mapping (B, T, d_model) to itself) turns it into a mixture of experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.validation import check_choice, check_int

ACTIVATIONS = ("gelu", "relu")


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a :class:`ViT`. The defaults give 16 tokens of 2x2 pixels from an 8x8 digit."""

    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    n_classes: int = 10
    activation: str = "gelu"

    def __post_init__(self):
        check_int("image_size", self.image_size, low=1)
        check_int("patch_size", self.patch_size, low=1, high=self.image_size)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size={self.patch_size!r} is not allowed; expected a divisor of "
                f"image_size={self.image_size}"
            )
        check_int("channels", self.channels, low=1)
        check_int("d_model", self.d_model, low=1)
        check_int("n_layers", self.n_layers, low=1)
        check_int("n_heads", self.n_heads, low=1)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads={self.n_heads!r} is not allowed; expected a divisor of d_model={self.d_model}"
            )
        check_int("d_ff", self.d_ff, low=1)
        check_int("n_classes", self.n_classes, low=2)
        check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2


def make_activation(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    return nn.GELU() if name == "gelu" else nn.ReLU()


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, T, C * p * p): patches in row-major order, each flattened channel-first."""
    check_int("patch_size", patch_size, low=1)
    ok = isinstance(images, Tensor) and images.dim() == 4
    if not ok or images.shape[2] % patch_size or images.shape[3] % patch_size:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images has shape {shape}; expected (B, C, H, W) with H and W multiples of patch_size={patch_size}"
        )
    batch, channels, height, width = images.shape
    p = patch_size
    patches = images.reshape(batch, channels, height // p, p, width // p, p)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask): one fused ``qkv`` Linear, one ``out`` Linear."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, d_model = x.shape
        q, k, v = (
            part.view(batch, tokens, self.n_heads, d_model // self.n_heads).transpose(1, 2)
            for part in self.qkv(x).split(d_model, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(batch, tokens, d_model))


class FeedForward(nn.Module):
    """``down(activation(up(x)))``: the dense FFN, with its three parts as attributes."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu"):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.activation = make_activation(activation)
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.activation(self.up(x)))


class Block(nn.Module):
    """One pre-norm block: ``x + attention(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.activation)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ViT(nn.Module):
    """(B, C, H, W) images -> (B, n_classes) logits."""

    def __init__(self, config: ViTConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, ViTConfig):
            raise ValueError(f"config={config!r} is not allowed; expected a ViTConfig or None")
        self.config = ViTConfig() if config is None else config
        c = self.config
        self.patch_embedding = nn.Linear(c.patch_dim, c.d_model)
        self.position = nn.Parameter(torch.randn(1, c.n_tokens, c.d_model) * 0.02)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_classes)

    def embed(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, d_model) patch tokens with their positions."""
        c = self.config
        ok = isinstance(images, Tensor) and images.is_floating_point() and images.dim() == 4
        if not ok or images.shape[1:] != (c.channels, c.image_size, c.image_size):
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(
                f"images of shape {shape} are not allowed; expected floating (B, {c.channels}, "
                f"{c.image_size}, {c.image_size})"
            )
        # On a GPU the check would wait for the device at every step; a diverged run shows in its loss anyway.
        if images.device.type == "cpu" and not torch.isfinite(images).all():
            raise ValueError("images contains NaN or infinity; expected finite pixel values")
        return self.patch_embedding(patchify(images, c.patch_size)) + self.position

    def tokens(self, images: Tensor) -> Tensor:
        """The final, normalised patch tokens (B, T, d_model), before pooling."""
        x = self.embed(images)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.tokens(images).mean(dim=1))


def vit_outside_ffn_flops_per_image(config: ViTConfig) -> int:
    """FLOPs of one image's forward pass outside the FFN blocks (2 per multiply-add, matrix products only).

    Patch embedding, per layer the qkv and out projections and the two attention products (scores and the
    weighted sum of values), and the classifier. Like :mod:`efflab.flops`, norms, softmax, biases and the
    pooling are left out; ``tests/test_models_vit.py`` checks this sum against PyTorch's FLOP counter.
    """
    c = config
    t, d = c.n_tokens, c.d_model
    embedding = 2 * t * c.patch_dim * d
    attention = c.n_layers * (2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * t * d)
    return embedding + attention + 2 * d * c.n_classes


def vit_ffn_flops_per_token(config: ViTConfig) -> int:
    """FLOPs of one dense FFN on one token: up and down projections."""
    return 2 * 2 * config.d_model * config.d_ff
