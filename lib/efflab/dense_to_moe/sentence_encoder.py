"""D2DMoE on a real pretrained model: the FFNs of all-MiniLM-L6-v2, judged by what its sentence embeddings keep.

The encoder (:mod:`efflab.models.bert`) has six GELU FFNs of 1536 neurons. The same pipeline as for the ViT:
balanced clustering of each FFN's neurons into experts, one norm-regressing router per layer trained on the
frozen model's token states, dynamic-k (or top-k) at inference. Two starting points:

* **no fine-tuning**: GELU stays, so activations are small but rarely zero, and skipping an expert always drops
  a little of the output; quality falls faster with the cost;
* **sparsified**: ReLU swap, then a short fine-tune with the Hoyer penalty plus an *embedding distillation* loss,
  the squared distance between the model's unit-length sentence embedding and the original dense model's,
  ||e(x) - e_dense(x)||^2, standing in for the task loss a sentence encoder lacks.

The quality measures compare each routed model with the dense original on held-out sentences:

* mean cosine similarity of the embeddings, (1/N) sum_n <e_n, e_dense_n> (both have unit length);
* nearest-neighbour agreement: for each held-out sentence, is its most similar other held-out sentence the same
  under both models? (the retrieval the embeddings are for);

against the relative FFN FLOPs of :mod:`~efflab.dense_to_moe.cost` (only real tokens count; padding is computed
by the batched model but would not exist in a deployment, so it is excluded from the cost and from k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.dense_to_moe.conversion import configure, experts_per_token
from efflab.dense_to_moe.cost import CostModel
from efflab.dense_to_moe.routers import collect_layer_inputs
from efflab.dense_to_moe.selection import check_rule
from efflab.dense_to_moe.sparsity import SparsityLoss, check_train_config, relufy
from efflab.train import TrainConfig, fit
from efflab.validation import check_int

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]")


def tokenized_batches(tokenizer, sentences: Sequence[str], batch_size: int) -> list[dict[str, Tensor]]:
    """The sentences as tokenized batches (``input_ids``, ``attention_mask``), in order."""
    from efflab.models.bert import check_sentences

    sentences = check_sentences(sentences)
    check_int("batch_size", batch_size, low=1)
    return [tokenizer(list(sentences[i : i + batch_size])) for i in range(0, len(sentences), batch_size)]


def check_batches(batches) -> int:
    """Tokenized batches: a non-empty list of ``{"input_ids", "attention_mask"}`` of equal (batch, seq) shapes;
    returns the number of sentences."""
    if not isinstance(batches, list | tuple) or not batches:
        raise ValueError(f"batches={batches!r:.80} is not allowed; expected a non-empty list of tokenized batches")
    for i, batch in enumerate(batches):
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        ok = isinstance(ids, Tensor) and isinstance(mask, Tensor) and ids.dim() == 2
        if not ok or mask.shape != ids.shape:
            raise ValueError(
                f"batches[{i}] is not allowed; expected a dict of input_ids and attention_mask, both (batch, seq)"
            )
    return sum(len(batch["input_ids"]) for batch in batches)


def _to(batch: dict[str, Tensor], device) -> tuple[Tensor, Tensor]:
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def embed(model: nn.Module, batches: list[dict[str, Tensor]]) -> Tensor:
    """Unit-length mean-pooled embeddings of every sentence of ``batches`` (float32, CPU)."""
    from efflab.models.bert import encode

    check_batches(batches)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return torch.cat([encode(model, *_to(batch, device)).float().cpu() for batch in batches])


def real_token_inputs(model: nn.Module, batches: list[dict[str, Tensor]]) -> list[Tensor]:
    """Each MoE layer's inputs on the real (non-padding) tokens of ``batches``, every expert on."""
    check_batches(batches)
    device = next(model.parameters()).device
    inputs = collect_layer_inputs(model, lambda: [model(*_to(batch, device)) for batch in batches])
    keep = torch.cat([batch["attention_mask"].reshape(-1) for batch in batches]).bool().to(device)
    return [x[keep] for x in inputs]


def nearest_neighbours(embeddings: Tensor) -> Tensor:
    """For each row, the index of the most similar other row (cosine; the embeddings have unit length)."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or len(embeddings) < 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings has shape {shape}; expected (sentences >= 2, d): a neighbour must exist")
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(1)


@torch.no_grad()
def encoder_sweep(
    model: nn.Module,
    batches: list[dict[str, Tensor]],
    dense_embeddings: Tensor,
    cost: CostModel,
    rule: str,
    values: Sequence,
) -> list[dict]:
    """Per value: cosine similarity to the dense embeddings, NN agreement, relative FFN FLOPs, mean k."""
    from efflab.models.bert import encode

    check_rule(rule)
    sentences = check_batches(batches)
    ok = isinstance(dense_embeddings, Tensor) and dense_embeddings.dim() == 2
    if not ok or len(dense_embeddings) != sentences:
        shape = tuple(dense_embeddings.shape) if isinstance(dense_embeddings, Tensor) else "not a tensor"
        raise ValueError(f"dense_embeddings has shape {shape}; expected ({sentences}, d), one row per sentence")
    device = next(model.parameters()).device
    dense_neighbours = nearest_neighbours(dense_embeddings)
    rows = []
    model.eval()
    for value in values:
        options = {"tau": value} if rule == "dynamic_k" else {"k": value}
        configure(model, rule, record=True, **options)
        pieces, tokens, pairs = [], 0, None
        try:
            for batch in batches:
                ids, mask = _to(batch, device)
                pieces.append(encode(model, ids, mask).float().cpu())
                k = experts_per_token(model).cpu() * batch["attention_mask"].unsqueeze(0)  # (layers, B, S)
                batch_pairs = k.sum((1, 2)).double()
                pairs = batch_pairs if pairs is None else pairs + batch_pairs
                tokens += int(batch["attention_mask"].sum())
        finally:
            configure(model, "dense", record=False)
        embeddings = torch.cat(pieces)
        per_token = (pairs / tokens).tolist()
        rows.append(
            {
                "rule": rule,
                "value": value,
                "cosine": float((embeddings * dense_embeddings).sum(-1).mean()),
                "neighbour_agreement": float((nearest_neighbours(embeddings) == dense_neighbours).double().mean()),
                "relative_flops": cost.relative(1.0, per_token),
                "mean_k": float(sum(per_token) / len(per_token)),
            }
        )
    return rows


def distillation_finetune(
    model: nn.Module,
    batches: list[dict[str, Tensor]],
    targets: list[Tensor],
    *,
    weight: float,
    config: TrainConfig,
    progress: bool | None = False,
):
    """ReLU swap, then fit ``||e(x) - e_dense(x)||^2 + lambda(t) * Hoyer`` over the batches (cycled)."""
    check_batches(batches)
    if len(batches) != len(targets):
        raise ValueError(f"targets has {len(targets)} entries; expected one per batch ({len(batches)})")
    for i, (batch, target) in enumerate(zip(batches, targets, strict=True)):
        if not isinstance(target, Tensor) or target.dim() != 2 or len(target) != len(batch["input_ids"]):
            raise ValueError(f"targets[{i}] is not allowed; expected embeddings (batch, d), one per sentence")
    check_train_config(config)
    # fit moves one tensor of inputs: pack ids and mask as (B, 2, S); unpack in the loss.
    packed = [torch.stack([b["input_ids"], b["attention_mask"]], dim=1) for b in batches]
    state = {"step": 0}

    def next_batch():
        index = state["step"] % len(packed)
        state["step"] += 1
        return packed[index], targets[index]

    def distillation(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        from efflab.models.bert import encode

        return F.mse_loss(encode(model, x[:, 0], x[:, 1]), y, reduction="sum") / len(y)

    loss = SparsityLoss(weight, config.steps, task_loss=distillation)  # checks weight before the swap
    relufy(model)
    device = next(model.parameters()).device
    return fit(model, next_batch, config, loss_fn=loss, device=device, progress=progress, description="distil")


@torch.no_grad()
def word_experts(model: nn.Module, tokenizer, sentence: str, rule: str, value) -> list[tuple[str, float]]:
    """The words of ``sentence`` with the mean number of experts their WordPiece tokens ran (over layers);
    the special tokens ([CLS], [SEP]) run experts too but are left out of the list."""
    check_rule(rule)
    device = next(model.parameters()).device
    batch = tokenizer([sentence])
    options = {"tau": value} if rule == "dynamic_k" else {"k": value} if rule == "top_k" else {}
    configure(model, rule, record=True, **options)
    try:
        model.eval()
        model(*_to(batch, device))
        k = experts_per_token(model)[:, 0].double().mean(0).cpu()  # (seq,)
    finally:
        configure(model, "dense", record=False)
    words: list[tuple[str, list[float]]] = []
    for piece, value_k in zip(tokenizer.tokens(sentence), k.tolist(), strict=False):
        if piece.startswith("##") and words:
            words[-1] = (words[-1][0] + piece[2:], [*words[-1][1], value_k])
        else:
            words.append((piece, [value_k]))
    return [(word, sum(ks) / len(ks)) for word, ks in words if word not in SPECIAL_TOKENS]
