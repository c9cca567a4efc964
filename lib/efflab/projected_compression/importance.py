"""Which channels to keep: importance scores for the residual width, the attention channels and the FFN width.

Projected compression and the hard-pruning baseline start from the *same* choice of channels (arXiv 2506.22255,
the authors' public code): score every channel of each compressed dimension, keep the top ``k``, and sort the
kept indices. Three dimensions of a :class:`~efflab.models.gpt.TinyLM` shrink:

* the residual width ``d -> d'``, one choice shared by every layer (the embedding tables, each block's reads and
  writes, the norms and the head all index the same residual stream);
* each layer's FFN width ``f -> f'``, chosen per layer;
* each layer's attention channels, per head ``d/H -> d'/H``. TinyLM ties the attention width to ``d_model``
  (``qkv`` maps ``d`` to ``3d``), so a merged TinyLM of width ``d'`` must also have ``d'`` attention channels.
  The paper leaves heads untouched; shrinking each head's width while keeping the head count is **our
  adaptation (inferred)**, needed to merge into a plain TinyLM. Queries and keys share one selection per head
  (a score is ``q . k``, so both must keep the same coordinates) and values and the output projection share
  another.

**Activation importance ("Minitron-style").** Run calibration batches through the base model and sum absolute
activations over tokens:

    I_d[c]      = sum_l sum_tokens ( |norm1_l(x)[c]| + |norm2_l(x)[c]| )     the normalised inputs of every block
    I_ffn_l[j]  = sum_tokens |up_l(x)[j]|                                    the up-projection output
    I_qk_l[j]   = mean|q_j| * mean|k_j|                                      (inferred) size of q_j k_j
    I_vo_l[j]   = sum_tokens |v_j|                                           (inferred)

**Magnitude importance.** From weights only, with row norms ``||W[j, :]||`` and column norms ``||W[:, c]||``:

    I_d[c]      = mean over matrices touching the residual stream of their norm along c: columns for readers
                  (qkv, up, head, the token and position tables), rows for writers (attention out, ffn down)
    I_ffn_l[j]  = ||up[j, :]|| + ||down[:, j]||
    I_qk_l[j]   = ||W_q[j, :]|| + ||W_k[j, :]||        I_vo_l[j] = ||W_v[j, :]|| + ||out[:, j]||   (inferred)

**Random importance** draws every score uniformly: the control any criterion must beat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.validation import check_choice, check_int, check_seed

IMPORTANCES = ("activation", "magnitude", "random")


@dataclass(frozen=True)
class Target:
    """The compressed shape: residual width ``d_model`` (d') and FFN width ``d_ff`` (f')."""

    d_model: int
    d_ff: int

    def check_against(self, config: GPTConfig) -> None:
        """Raise ValueError unless this is a real compression of ``config`` that a TinyLM can have."""
        if config.bias:
            raise ValueError(
                "config.bias=True is not allowed; projected compression here handles bias-free TinyLMs"
            )
        check_int("d_model (target d')", self.d_model, low=1, high=config.d_model - 1)
        check_int("d_ff (target f')", self.d_ff, low=1, high=config.d_ff)
        if self.d_model % config.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model!r} (target d') is not allowed with n_head={config.n_head}; expected a "
                "multiple of the head count, since every head keeps d'/n_head channels"
            )

    def config_for(self, config: GPTConfig) -> GPTConfig:
        """The TinyLM config of the compressed model: the base's, with d' and f'."""
        self.check_against(config)
        return GPTConfig(
            vocab_size=config.vocab_size,
            block_size=config.block_size,
            n_layer=config.n_layer,
            n_head=config.n_head,
            d_model=self.d_model,
            d_ff=self.d_ff,
            dropout=config.dropout,
            bias=config.bias,
        )


def _tensor_shape(value) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_scores(name: str, scores, size: int) -> None:
    """A finite floating (size,) tensor: a NaN score would be picked first by the top-k."""
    ok = isinstance(scores, Tensor) and scores.shape == (size,) and scores.is_floating_point()
    if not ok or not torch.isfinite(scores).all():
        raise ValueError(f"{name} has shape {_tensor_shape(scores)}; expected {size} finite scores")


def check_indices(name: str, indices, size: int, count: int | None = None) -> None:
    """Kept channels: an integer 1-D tensor of distinct indices in [0, size), ``count`` of them (None: at least
    one)."""
    ok = isinstance(indices, Tensor) and indices.dim() == 1 and not indices.is_floating_point()
    ok = ok and (len(indices) > 0 if count is None else len(indices) == count)
    ok = ok and bool(((indices >= 0) & (indices < size)).all()) and len(indices.unique()) == len(indices)
    if not ok:
        how_many = "" if count is None else f"{count} "
        raise ValueError(
            f"{name}={indices!r:.80} is not allowed; expected {how_many}distinct integer indices in [0, {size})"
        )


def _check_layers(name: str, values, n_layer: int) -> None:
    if not isinstance(values, tuple) or len(values) != n_layer:
        raise ValueError(
            f"{name}={values!r:.80} is not allowed; expected a tuple with one entry per layer ({n_layer})"
        )


@dataclass(frozen=True)
class Importance:
    """Scores: ``d`` (d,), and per layer ``qk``, ``vo`` (d,) over attention channels and ``ffn`` (f,)."""

    d: Tensor
    qk: tuple[Tensor, ...]
    vo: tuple[Tensor, ...]
    ffn: tuple[Tensor, ...]

    def check_against(self, config: GPTConfig) -> None:
        """Raise ValueError unless every score vector has the size of its dimension in ``config``."""
        _check_scores("importance.d", self.d, config.d_model)
        for name, size in (("qk", config.d_model), ("vo", config.d_model), ("ffn", config.d_ff)):
            _check_layers(f"importance.{name}", getattr(self, name), config.n_layer)
            for i, scores in enumerate(getattr(self, name)):
                _check_scores(f"importance.{name}[{i}]", scores, size)


@dataclass(frozen=True)
class Selection:
    """Kept indices, sorted: ``d`` (d',), per layer ``qk`` and ``vo`` (d',) attention channels, ``ffn`` (f',)."""

    d: Tensor
    qk: tuple[Tensor, ...]
    vo: tuple[Tensor, ...]
    ffn: tuple[Tensor, ...]

    def to_lists(self) -> dict:
        """Plain lists (for pickling into results and for display)."""
        return {
            "d": self.d.tolist(),
            "qk": [t.tolist() for t in self.qk],
            "vo": [t.tolist() for t in self.vo],
            "ffn": [t.tolist() for t in self.ffn],
        }

    def check_against(self, config: GPTConfig, target: Target) -> None:
        """Raise ValueError unless this keeps d' residual and attention channels and f' FFN units of ``config``."""
        target.check_against(config)
        check_indices("selection.d", self.d, config.d_model, target.d_model)
        for name, size, count in (
            ("qk", config.d_model, target.d_model),
            ("vo", config.d_model, target.d_model),
            ("ffn", config.d_ff, target.d_ff),
        ):
            _check_layers(f"selection.{name}", getattr(self, name), config.n_layer)
            for i, indices in enumerate(getattr(self, name)):
                check_indices(f"selection.{name}[{i}]", indices, size, count)


def _top_sorted(scores: Tensor, k: int) -> Tensor:
    return torch.sort(torch.topk(scores, k).indices).values


def _per_head_top(scores: Tensor, n_head: int, keep_per_head: int) -> Tensor:
    """Top ``keep_per_head`` channels inside each head's block of ``len(scores) / n_head``, as global indices."""
    head_dim = scores.numel() // n_head
    blocks = scores.view(n_head, head_dim)
    local = torch.sort(torch.topk(blocks, keep_per_head, dim=1).indices, dim=1).values
    return (local + head_dim * torch.arange(n_head)[:, None]).reshape(-1)


def select(importance: Importance, config: GPTConfig, target: Target) -> Selection:
    """Top-k indices of every compressed dimension, sorted (the same for projection and pruning)."""
    target.check_against(config)
    importance.check_against(config)
    keep_per_head = target.d_model // config.n_head
    return Selection(
        d=_top_sorted(importance.d, target.d_model),
        qk=tuple(_per_head_top(s, config.n_head, keep_per_head) for s in importance.qk),
        vo=tuple(_per_head_top(s, config.n_head, keep_per_head) for s in importance.vo),
        ffn=tuple(_top_sorted(s, target.d_ff) for s in importance.ffn),
    )


@torch.no_grad()
def activation_importance(model: TinyLM, batches: Iterable[Tensor]) -> Importance:
    """Minitron-style scores from calibration inputs (each a (B, T) tensor of byte ids)."""
    config = model.config
    d = config.d_model
    residual = torch.zeros(d)
    qk_q = [torch.zeros(d) for _ in model.blocks]
    qk_k = [torch.zeros(d) for _ in model.blocks]
    vo = [torch.zeros(d) for _ in model.blocks]
    ffn = [torch.zeros(config.d_ff) for _ in model.blocks]
    tokens = 0

    def absolute_sum(output: Tensor) -> Tensor:
        return output.detach().abs().reshape(-1, output.shape[-1]).sum(0).float().cpu()

    handles = []
    for index, block in enumerate(model.blocks):

        def on_norm(module, inputs, output):
            residual.add_(absolute_sum(output))

        def on_qkv(module, inputs, output, index=index):
            q, k, v = output.split(d, dim=-1)
            qk_q[index].add_(absolute_sum(q))
            qk_k[index].add_(absolute_sum(k))
            vo[index].add_(absolute_sum(v))

        def on_up(module, inputs, output, index=index):
            ffn[index].add_(absolute_sum(output))

        handles += [
            block.norm1.register_forward_hook(on_norm),
            block.norm2.register_forward_hook(on_norm),
            block.attention.qkv.register_forward_hook(on_qkv),
            block.ffn.up.register_forward_hook(on_up),
        ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for x in batches:
            model(x.to(device))
            tokens += x.numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("batches is empty; activation importance needs at least one calibration batch")
    qk = tuple((q / tokens) * (k / tokens) for q, k in zip(qk_q, qk_k, strict=True))
    return Importance(d=residual, qk=qk, vo=tuple(vo), ffn=tuple(ffn))


@torch.no_grad()
def magnitude_importance(model: TinyLM) -> Importance:
    """Scores from the weights alone (row and column norms), see the module docstring."""
    d = model.config.d_model
    readers, writers = [], []  # (out, d) matrices read the residual stream by columns; (d, in) write it by rows
    readers += [model.embedding.token.weight, model.embedding.position.weight, model.head.weight]
    qk, vo, ffn = [], [], []
    for block in model.blocks:
        qkv, out = block.attention.qkv.weight, block.attention.out.weight
        up, down = block.ffn.up.weight, block.ffn.down.weight
        readers += [qkv, up]
        writers += [out, down]
        w_q, w_k, w_v = qkv.split(d, dim=0)
        qk.append((w_q.norm(dim=1) + w_k.norm(dim=1)).float().cpu())
        vo.append((w_v.norm(dim=1) + out.norm(dim=0)).float().cpu())
        ffn.append((up.norm(dim=1) + down.norm(dim=0)).float().cpu())
    norms = [w.norm(dim=0) for w in readers] + [w.norm(dim=1) for w in writers]
    residual = torch.stack([n.float().cpu() for n in norms]).mean(0)
    return Importance(d=residual, qk=tuple(qk), vo=tuple(vo), ffn=tuple(ffn))


def random_importance(model: TinyLM, seed: int) -> Importance:
    """Uniform random scores from a generator seeded with ``seed``."""
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = model.config

    def draw(size: int) -> Tensor:
        return torch.rand(size, generator=generator)

    layers = range(config.n_layer)
    return Importance(
        d=draw(config.d_model),
        qk=tuple(draw(config.d_model) for _ in layers),
        vo=tuple(draw(config.d_model) for _ in layers),
        ffn=tuple(draw(config.d_ff) for _ in layers),
    )


def importance_for(
    kind: str, model: TinyLM, *, calibration: Iterable[Tensor] | None = None, seed: int = 0
) -> Importance:
    """The scores named ``kind`` (one of :data:`IMPORTANCES`)."""
    check_choice("importance", kind, IMPORTANCES)
    if kind == "activation":
        if calibration is None:
            raise ValueError("importance='activation' needs calibration batches; pass calibration=[...]")
        return activation_importance(model, calibration)
    if kind == "magnitude":
        return magnitude_importance(model)
    return random_importance(model, seed)
