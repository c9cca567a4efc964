"""Projected compression of a real pretrained model: the FFN width of all-MiniLM-L6-v2, distilled on sentences.

The byte-level study uses bases we pretrain ourselves. Here the base is a well-trained public encoder
(:func:`efflab.models.bert.load_minilm`: 6 post-norm BERT layers, ``d = 384``, ``f = 1536``). We compress the FFN
width ``f -> f'`` of some of its layers (``EncoderBudget.layers``) two ways, from the same activation-importance
indices (``I_j = sum over real tokens |up(u)_j|`` on the training sentences):

* **hard prune + retrain**: keep rows ``R`` of ``up`` (weights and bias) and columns ``R`` of ``down``, then train
  every parameter of the layers from the first compressed one onwards;
* **projected compression**: ``up' = P_out [W_up | b_up] + A_up`` (the bias rides along as one more column),
  ``down' = W_down P_in + A_down``, ``P`` initialised as selections, ``A = 0``, every base weight frozen; only
  ``P`` and ``A`` train. Merged, it is an ordinary :class:`~efflab.models.bert.FeedForward` of width ``f'``.

Both train on the same objective, offline distillation to the original model's sentence embeddings
``e = normalize(mean-pool(h^6))``: ``L = 1 - cos(e_student, e_teacher)``, on the same batches, for the same steps.
The layers below the first compressed one never change, so their output on every sentence is computed once, on
the run's device, and cached (on the CPU); training then runs only the top of the network. We score on held-out
sentences: the mean cosine to the original embeddings, and nearest-neighbour agreement (the fraction of sentences
whose most similar other sentence is the same under the compressed and the original model).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efflab.cache import cached
from efflab.parallel import gpu_share_for, run_all, task_progress
from efflab.projected_compression.importance import check_indices
from efflab.projected_compression.projection import selection_matrix
from efflab.runtime import Run, seed_everything
from efflab.validation import check_choice, check_fraction, check_int, check_positive, check_range

METHODS = ("pruned + retrain", "projected compression")


@dataclass(frozen=True)
class EncoderBudget:
    """Which layers to compress, to what FFN width, on how many sentences, for how many steps."""

    enabled: bool = True
    layers: tuple[int, ...] = (5,)
    keep_ffn: float = 0.25
    train_sentences: int = 64
    heldout_sentences: int = 64
    max_length: int = 24
    steps: int = 30
    batch_size: int = 16
    seeds: int = 1
    retrain_lr: float = 1e-4
    projection_lr: float = 3e-4

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled={self.enabled!r} is not allowed; expected True or False")
        if not isinstance(self.layers, tuple) or not self.layers:
            raise ValueError(f"layers={self.layers!r} is not allowed; expected a non-empty tuple of layer indices")
        for layer in self.layers:
            check_int("layers", layer, low=0, high=5)
        if list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers={self.layers!r} is not allowed; expected increasing layer indices")
        check_fraction("keep_ffn", self.keep_ffn)
        for name in ("train_sentences", "steps", "batch_size", "seeds"):
            check_int(name, getattr(self, name), low=1)
        check_int("heldout_sentences", self.heldout_sentences, low=2)
        check_int("max_length", self.max_length, low=4, high=256)
        check_positive("retrain_lr", self.retrain_lr)
        check_positive("projection_lr", self.projection_lr)

    @classmethod
    def quick(cls) -> EncoderBudget:
        return cls()

    @classmethod
    def full(cls) -> EncoderBudget:
        return cls(
            layers=(0, 1, 2, 3, 4, 5),
            keep_ffn=0.25,
            train_sentences=4000,
            heldout_sentences=1000,
            max_length=64,
            steps=400,
            batch_size=64,
            seeds=3,
        )


class ProjectedFeedForward(nn.Module):
    """A frozen BERT FFN seen through trainable projections: width ``f`` -> ``f'``, ``d`` untouched."""

    def __init__(self, ffn: nn.Module, kept: Tensor):
        super().__init__()
        f, d = _check_ffn(ffn, kept)
        self.base = ffn
        for parameter in ffn.parameters():
            parameter.requires_grad_(False)
        k = len(kept)
        self.p_out = nn.Parameter(selection_matrix(kept, f))  # (f', f) on [W_up | b_up]
        self.p_in = nn.Parameter(selection_matrix(kept, f).T.contiguous())  # (f, f') on W_down
        self.a_up = nn.Parameter(torch.zeros(k, d + 1))
        self.a_down = nn.Parameter(torch.zeros(d, k))
        self.activation = copy.deepcopy(ffn.activation)

    def materialise(self) -> dict[str, Tensor]:
        up = torch.cat([self.base.up.weight, self.base.up.bias[:, None]], dim=1)
        up = self.p_out @ up + self.a_up
        return {
            "up.weight": up[:, :-1],
            "up.bias": up[:, -1],
            "down.weight": self.base.down.weight @ self.p_in + self.a_down,
            "down.bias": self.base.down.bias,
        }

    def forward(self, x: Tensor) -> Tensor:
        w = self.materialise()
        return F.linear(
            self.activation(F.linear(x, w["up.weight"], w["up.bias"])), w["down.weight"], w["down.bias"]
        )


def _check_ffn(ffn: nn.Module, kept) -> tuple[int, int]:
    """A BERT FFN (``up`` and ``down`` Linear layers with biases) and the hidden units it keeps; (f, d)."""
    up, down = getattr(ffn, "up", None), getattr(ffn, "down", None)
    ok = isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and hasattr(ffn, "activation")
    if not ok or up.bias is None or down.bias is None:
        raise ValueError(
            f"ffn={type(ffn).__name__} is not allowed; expected a BERT FeedForward (up, activation, down)"
        )
    check_indices("kept", kept, up.out_features)
    return up.weight.shape


def _small_ffn(ffn: nn.Module, width: int) -> nn.Module:
    from efflab.models.bert import BertConfig, FeedForward

    d = ffn.up.weight.shape[1]
    small = FeedForward(dataclasses.replace(BertConfig(), d_model=d, d_ff=width, n_head=1))
    small.activation = copy.deepcopy(ffn.activation)
    return small.to(ffn.up.weight.device)


@torch.no_grad()
def prune_ffn(ffn: nn.Module, kept: Tensor) -> nn.Module:
    """A :class:`~efflab.models.bert.FeedForward` with only the ``kept`` hidden units."""
    _check_ffn(ffn, kept)
    small = _small_ffn(ffn, len(kept))
    small.up.weight.copy_(ffn.up.weight[kept])
    small.up.bias.copy_(ffn.up.bias[kept])
    small.down.weight.copy_(ffn.down.weight[:, kept])
    small.down.bias.copy_(ffn.down.bias)
    return small


@torch.no_grad()
def merge_ffn(projected: ProjectedFeedForward) -> nn.Module:
    """The plain FFN of width ``f'`` with the materialised weights."""
    weights = projected.materialise()
    small = _small_ffn(projected.base, weights["up.weight"].shape[0])
    small.load_state_dict({k: v.detach().clone() for k, v in weights.items()})
    return small


# ---- the top of the network, run on cached states -------------------------------------------------------------


class EncoderTop(nn.Module):
    """MiniLM's layers ``first..5``, mean pooling and normalisation: states entering ``first`` -> embeddings."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        from efflab.models.bert import mean_pool

        for layer in self.layers:
            states = layer(states, mask)
        return F.normalize(mean_pool(states, mask), dim=-1)


def _on(split: dict, device) -> dict:
    """One split's tensors (states, mask, teacher embeddings) on ``device``."""
    return {name: tensor.to(device) for name, tensor in split.items()}


def _cpu_copy(value):
    """``value`` (tensors in nested dicts) with every tensor copied to the CPU: none shares a model's memory."""
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    return value.detach().to("cpu", copy=True)


@torch.no_grad()
def _prepare(budget: EncoderBudget, device) -> dict:
    """States entering the first compressed layer, masks and teacher embeddings, for both splits; FFN scores.

    MiniLM runs on ``device``, over each split at once; everything returned is on the CPU.
    """
    from efflab.data.sentences import load_sentences
    from efflab.models.bert import MiniLMTokenizer, load_minilm

    model = load_minilm(device)
    tokenizer = MiniLMTokenizer(max_length=budget.max_length)
    first = budget.layers[0]
    out = {}
    for split, count in (("train", budget.train_sentences), ("heldout", budget.heldout_sentences)):
        batch = tokenizer(load_sentences(split, count))
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = model.embeddings(ids)
        for layer in model.layers[:first]:
            states = layer(states, mask)
        top = EncoderTop(model.layers[first:])
        out[split] = {"states": states, "mask": mask, "teacher": top(states, mask)}
    # activation importance: sum over real tokens of |up(u)| in each compressed layer, on the training sentences
    scores = {}
    states, mask = out["train"]["states"], out["train"]["mask"]
    for index in range(first, 6):
        layer = model.layers[index]
        u = layer.attention_norm(states + layer.attention(states, mask))
        if index in budget.layers:
            scores[str(index)] = (layer.ffn.up(u).abs() * mask[..., None]).sum((0, 1))
        states = layer.ffn_norm(u + layer.ffn(u))
    out["scores"] = scores
    out["top_state"] = EncoderTop(model.layers[first:]).state_dict()
    return _cpu_copy(out)


def prepared_data(budget: EncoderBudget, device: str | torch.device = "cpu") -> dict:
    """:func:`_prepare`'s states, masks, teacher embeddings and FFN scores: computed on ``device``, held on the
    CPU.

    Cached by the budget's sentences and layers and, off the CPU, the device type (CUDA's numbers differ from the
    CPU's in the last bits); a CPU entry's key names no device.
    """
    keys = ("layers", "train_sentences", "heldout_sentences", "max_length")
    key = {k: getattr(budget, k) for k in keys} | {"format": 1}
    kind = torch.device(device).type
    if kind != "cpu":
        key["device"] = kind
    return cached("pc_minilm_states", key, lambda: _prepare(budget, device))


@dataclass(frozen=True)
class EncoderTask:
    method: str
    seed: int
    budget: EncoderBudget
    data: dict
    device: str = "cpu"


def _top_model(data: dict, budget: EncoderBudget) -> EncoderTop:
    from efflab.models.bert import BertConfig, Layer

    first = budget.layers[0]
    top = EncoderTop(nn.ModuleList(Layer(BertConfig()) for _ in range(first, 6)))
    top.load_state_dict(data["top_state"])
    return top


def kept_units(scores: Tensor, keep: float) -> Tensor:
    """Top ``round(keep * f)`` FFN units by score (at least one), sorted."""
    if not isinstance(scores, Tensor) or scores.dim() != 1 or len(scores) == 0 or not torch.isfinite(scores).all():
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores has shape {shape}; expected a non-empty vector of finite unit scores")
    check_range("keep", keep, low=0, high=1, low_open=True)
    k = max(1, round(keep * scores.numel()))
    return torch.sort(torch.topk(scores, k).indices).values


def compressed_top(data: dict, budget: EncoderBudget, method: str) -> EncoderTop:
    """The top of the network with every compressed layer's FFN pruned (or projected)."""
    check_choice("method", method, ("pruned, no retrain", *METHODS))
    top = _top_model(data, budget)
    first = budget.layers[0]
    for index in budget.layers:
        layer = top.layers[index - first]
        kept = kept_units(data["scores"][str(index)], budget.keep_ffn)
        layer.ffn = (
            ProjectedFeedForward(layer.ffn, kept)
            if method == "projected compression"
            else prune_ffn(layer.ffn, kept)
        )
    if method == "projected compression":
        for name, parameter in top.named_parameters():
            parameter.requires_grad_(".p_" in name or ".a_" in name)
    return top


@torch.no_grad()
def score(top: EncoderTop, split: dict) -> dict:
    """Mean cosine to the teacher embeddings and top-1 nearest-neighbour agreement on one split (``top`` and
    ``split`` on one device), as floats."""
    top.eval()
    student = top(split["states"], split["mask"])
    teacher = split["teacher"]
    cosine = float((student * teacher).sum(-1).mean())

    def neighbours(e: Tensor) -> Tensor:
        similarity = e @ e.T
        similarity.fill_diagonal_(-float("inf"))
        return similarity.argmax(-1)

    agreement = float((neighbours(student) == neighbours(teacher)).float().mean())
    return {"cosine": cosine, "neighbours": agreement}


def train_encoder(task: EncoderTask) -> dict:
    """Distil one compressed top for ``budget.steps`` steps; held-out scores and the merge check.

    The outcome also says what the run consumed (``steps`` taken, training ``sentences`` drawn) and what it
    produced (the final top's ``ffn_widths`` and ``parameters``, after the merge for PC), so that the two methods
    can be checked to have had the same budget and to end at the same size.
    """
    started = time.process_time()
    seed_everything(task.seed)
    budget = task.budget
    train, heldout = _on(task.data["train"], task.device), _on(task.data["heldout"], task.device)
    top = compressed_top(task.data, budget, task.method).to(task.device)
    lr = budget.projection_lr if task.method == "projected compression" else budget.retrain_lr
    parameters = [p for p in top.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(task.seed)
    count = train["states"].shape[0]
    curve, drawn = [], 0
    with task_progress(budget.steps, f"MiniLM {task.method}") as bar:
        for _ in range(budget.steps):
            top.train()
            rows = torch.randint(0, count, (budget.batch_size,), generator=generator).to(task.device)
            student = top(train["states"][rows], train["mask"][rows])
            loss = 1.0 - (student * train["teacher"][rows]).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            curve.append(loss.item())
            drawn += len(rows)
            bar.update()
    outcome = {"train_loss": curve, "steps": len(curve), "sentences": drawn, **score(top, heldout)}
    if task.method == "projected compression":
        first = budget.layers[0]
        with torch.no_grad():
            before = top(heldout["states"], heldout["mask"])
            for index in budget.layers:
                layer = top.layers[index - first]
                layer.ffn = merge_ffn(layer.ffn)
            outcome["merge_error"] = float((top(heldout["states"], heldout["mask"]) - before).abs().max())
    outcome["ffn_widths"] = [top.layers[index - budget.layers[0]].ffn.up.out_features for index in budget.layers]
    outcome["parameters"] = sum(p.numel() for p in top.parameters())
    outcome["cpu_seconds"] = time.process_time() - started
    return outcome


@dataclass
class EncoderResult:
    budget: EncoderBudget
    d_ff: int
    target_d_ff: int
    uncompressed: dict
    no_retrain: dict
    runs: dict  # method -> list of outcomes over seeds

    def summary(self) -> dict:
        methods = {m: self.runs[m] for m in METHODS}
        cosine = {m: [o["cosine"] for o in outs] for m, outs in methods.items()}
        neighbours = {m: [o["neighbours"] for o in outs] for m, outs in methods.items()}
        cosine["pruned, no retrain"] = [self.no_retrain["cosine"]]
        neighbours["pruned, no retrain"] = [self.no_retrain["neighbours"]]
        return {
            "layers": list(self.budget.layers),
            "d_ff": self.d_ff,
            "target_d_ff": self.target_d_ff,
            "steps": self.budget.steps,
            "cosine": cosine,
            "neighbours": neighbours,
            "merge_error": max(o.get("merge_error", 0.0) for o in self.runs["projected compression"]),
            "parameter_match": len({o["parameters"] for outs in methods.values() for o in outs}) == 1,
        }


def run_encoder_study(run: Run, budget: EncoderBudget) -> EncoderResult:
    """Prepare the cached states, then distil both methods over the seeds side by side.

    Everything runs on the run's device: the states' preparation and the scoring of the unretrained and the
    uncompressed tops here, the distillations in their tasks. The prepared data and the result stay on the CPU.
    """
    data = prepared_data(budget, run.device)
    seeds = [run.seed + i for i in range(budget.seeds)]
    tasks = [EncoderTask(m, s, budget, data, run.device.type) for m in METHODS for s in seeds]
    outcomes = run_all(
        train_encoder, tasks, description="MiniLM distillation", gpu_share=gpu_share_for(run.device)
    )
    runs = {m: [o for t, o in zip(tasks, outcomes, strict=True) if t.method == m] for m in METHODS}
    heldout = _on(data["heldout"], run.device)
    no_retrain = score(compressed_top(data, budget, "pruned, no retrain").to(run.device), heldout)
    uncompressed = score(_top_model(data, budget).to(run.device), heldout)
    d_ff = data["scores"][str(budget.layers[0])].numel()
    return EncoderResult(
        budget=budget,
        d_ff=d_ff,
        target_d_ff=len(kept_units(data["scores"][str(budget.layers[0])], budget.keep_ffn)),
        uncompressed=uncompressed,
        no_retrain=no_retrain,
        runs=runs,
    )
