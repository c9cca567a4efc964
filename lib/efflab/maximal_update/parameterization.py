r"""Three ways to scale a language model with width: standard (SP), simpleP and muP for mixtures of experts.

**The problem.** Train a small model, find its best learning rate (LR) η*, then widen the model. Under the
*standard parameterization* (SP: one init scale σ and one LR η for every tensor) η* moves, usually towards smaller
values as the width d grows: with Adam every entry of a d×d weight moves by about η per step, and since the
update is aligned with the inputs, a hidden activation ``ΔW x`` moves by about η·d. The wider the model, the
larger the change one step makes, and at some width the old η* makes training blow up. (This SP, the paper's,
keeps σ fixed at every width; PyTorch's own default init, variance ∝ 1/fan-in, is another "standard"
parameterization, one whose init already shrinks with width while its LR stays global.)

**The fix** (Yang & Hu 2021, Tensor Programs IV/V; Adam version of the table in the research notes, section 0.1).
Let ``m_d = d / d_base`` be the width multiplier. For every tensor, decide how many of its dimensions grow with
width, and scale its init, its LR and a forward multiplier so that every activation, and every activation's change
per step, stays Θ(1) as d → ∞:

===================  ======================  ===============  ===============  ==============================
tensor               kind (width dims)       init std         Adam LR          forward multiplier
===================  ======================  ===============  ===============  ==============================
embedding tables     input (1: fan-out)      σ                η                α_in on the embedding output
attention Q,K,V,O    hidden (2)              σ / √m_d         η / m_d          attention logits √d_h0 / d_h
dense FFN up, down   hidden (2)              σ / √m_d         η / m_d          1
expert up, down      experts (2 of 3)        σ / √m_d         η / m_d          1
router W_R (d→E·G)   router (1: fan-in)      σ                η                α_r / m_d on the router logits
unembedding (d→V)    output (1: fan-in)      σ                η                α_out / m_d on the logits
norm gains           vector (1)              1                η                1
===================  ======================  ===============  ===============  ==============================

(σ is the course's GPT-2 init, 0.02, with the usual 1/√(2L) on the matrices that write into the residual
stream; d_h is the head dimension and d_h0 the base model's, so the attention scale is 1/√d_h at the base and
falls like 1/d_h when heads widen; our model family keeps d_h fixed, where this is SP's scale.)

Why each row. A *hidden* matrix has fan-in and fan-out growing with d: its init must shrink like 1/√fan-in so
``W x`` stays Θ(1) at init, and its Adam step like 1/fan-in so ``ΔW x`` does too. An *output-like* matrix has a
growing fan-in and a fixed fan-out (the V = 256 byte logits): its entries stay at σ, but the logits sum d terms,
so a 1/m_d on its output keeps both the initial logits and their change per step from growing. An *input-like*
table has a fixed fan-in (one row per byte) and needs nothing.

**The MoE part** (Małaśnicki et al. 2025, arXiv 2508.09752). Experts are stored as one 3-D tensor per layer,
``up`` (n_experts, d, d_e) and ``down`` (n_experts, d_e, d). The number of experts is *not* a width: only the
last two dimensions grow, so each slice is an ordinary hidden matrix with fan-in d (``up``) or d_e (``down``).
(microsoft/mup counts every dimension that differs from the base as a width and gives up on three of them.)
The router maps d to E·G scores: fan-in grows, fan-out does not. That is the shape of the unembedding, so it
gets the output rule, a multiplier α_r/m_d on its logits. **This router row is inferred** from μP theory and the
paper's abstract (it claims feature learning "in both the router and experts"); the paper's own table was not
available to us. microsoft/mup reaches the same verdict by its own rules: it refuses a Linear with a growing
fan-in and a fixed fan-out unless it is a ``MuReadout``.

**simpleP** (the paper's middle baseline, by the research notes' reading of its Figure 1): muP for every dense
tensor and the experts, but the router left at SP (σ, η, multiplier α_r). μP theory predicts that under it the
router logits grow like d after the first steps, which is what the coordinate check looks for.

The three parameterizations build exactly the same parameter groups (one per kind); only the numbers differ. At
the base width with all α = 1 every factor is 1 and muP *is* SP, bitwise (a test checks it).

Functions, in the order of the table: :func:`width_multiplier`, :func:`parameter_kind`, :func:`rules` (init std,
LR scale and forward multiplier of every tensor), :func:`initialize`, :func:`attach_multipliers`,
:func:`parameter_groups`, and :func:`parameterize`, which does all of it to a fresh model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from efflab.maximal_update.model import ModelFamily, base_shapes
from efflab.models.gpt import INIT_STD, TinyLM
from efflab.models.moe import moe_layers
from efflab.validation import check_choice, check_int, check_seed

PARAMETERIZATIONS = ("sp", "simple", "mup")
LABELS = {"sp": "SP", "simple": "simpleP", "mup": "μP"}
KINDS = ("input", "hidden", "experts", "router", "output", "vector")
MATRIX_KINDS = ("hidden", "experts")  # the kinds muP gives η / m_d


def check_parameterization(name: str) -> None:
    check_choice("parameterization", name, PARAMETERIZATIONS)


def check_multiplier(name: str, value) -> None:
    """A forward multiplier must be a finite number > 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed; expected a finite number > 0")


@dataclass(frozen=True)
class Multipliers:
    """The tuned constants α of the forward pass (the same at every width; muP adds the width factors)."""

    alpha_in: float = 1.0
    alpha_out: float = 1.0
    alpha_router: float = 1.0

    def __post_init__(self):
        for name in ("alpha_in", "alpha_out", "alpha_router"):
            check_multiplier(name, getattr(self, name))

    def label(self) -> str:
        return f"α_in={self.alpha_in:g}, α_out={self.alpha_out:g}, α_router={self.alpha_router:g}"


def checked_multipliers(multipliers: Multipliers | None) -> Multipliers:
    """``multipliers``, or all α = 1 for None; anything else is a mistake."""
    if multipliers is None:
        return Multipliers()
    if not isinstance(multipliers, Multipliers):
        raise ValueError(f"multipliers={multipliers!r} is not allowed; expected a Multipliers")
    return multipliers


def check_family(family) -> None:
    if not isinstance(family, ModelFamily):
        raise ValueError(f"family={family!r} is not allowed; expected a ModelFamily")


def width_multiplier(width: int, base_width: int) -> float:
    """``m_d = width / base_width``; the base must divide the width."""
    ModelFamily(base_width=base_width, ffn="dense", head_dim=1).check_width(width)
    return width / base_width


# ------------------------------------------------------------------------------------------- which tensor is what


def logical_name(name: str) -> str:
    """A parameter's name without torch's parametrization wrapper: ``head.parametrizations.weight.original`` ->
    ``head.weight``."""
    return name.replace(".parametrizations.", ".").removesuffix(".original")


def parameter_kind(name: str, shape: tuple[int, ...]) -> str:
    """The kind of a TinyLM parameter (a row of the table above), read from its name and number of dimensions."""
    if not isinstance(name, str):
        raise ValueError(f"name={name!r} is not allowed; expected a parameter name (a string)")
    parts = logical_name(name).split(".")
    if len(shape) == 1:
        return "vector"  # norm gains (and biases, when a config has them)
    if parts[0] == "embedding":
        return "input"
    if parts[0] == "head":
        return "output"
    if parts[0] == "blocks" and len(parts) >= 4:
        if "router" in parts[2:-1]:
            return "router"
        if parts[2] == "ffn" and len(shape) == 3:
            return "experts"
        if parts[2] in ("attention", "ffn") and len(shape) == 2:
            return "hidden"
    raise ValueError(f"parameter {name!r} of shape {shape} has no kind; expected a TinyLM parameter")


def sp_init_std(name: str, kind: str, n_layer: int) -> float | None:
    """The course's GPT-2 init: σ = 0.02, σ/√(2L) on the matrices that write into the residual stream; None
    for norm gains (ones)."""
    check_choice("kind", kind, KINDS)
    check_int("n_layer", n_layer, low=1)
    if kind == "vector":
        return None
    parts = logical_name(name).split(".")
    writes_residual = parts[0] == "blocks" and parts[-2:] in (["out", "weight"], ["down", "weight"])
    writes_residual = writes_residual or (kind == "experts" and parts[-1] == "down")
    return INIT_STD / math.sqrt(2 * n_layer) if writes_residual else INIT_STD


@dataclass(frozen=True)
class Rule:
    """What a parameterization does to one tensor."""

    name: str
    kind: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    fan_in_multiplier: float  # fan-in / base fan-in (1 for tables and vectors)
    init_std: float | None  # None: ones
    lr_scale: float  # its LR is η * lr_scale
    forward_multiplier: float  # on the output of the layer that reads this tensor


def _fan_in_multiplier(kind: str, shape, base_shape) -> float:
    if kind in ("hidden", "router", "output"):  # Linear weights (out, in)
        return shape[1] / base_shape[1]
    if kind == "experts":  # (n_experts, in, out): the expert count (dim 0) is not a width
        if shape[0] != base_shape[0]:
            raise ValueError(
                f"an expert tensor of shape {shape} against base shape {base_shape}: the number of experts must "
                "match the base model's; only the expert matrices' own dimensions scale with width"
            )
        return shape[1] / base_shape[1]
    return 1.0


def rules(
    model: TinyLM,
    family: ModelFamily,
    parameterization: str,
    multipliers: Multipliers | None = None,
) -> list[Rule]:
    """The rule of every parameter of ``model`` (a member of ``family``), in ``named_parameters`` order."""
    check_family(family)
    check_parameterization(parameterization)
    multipliers = checked_multipliers(multipliers)
    base = base_shapes(family)
    found = []
    for name, parameter in model.named_parameters():
        key = logical_name(name)
        if key not in base:
            raise ValueError(f"parameter {name!r} is not in the base model of {family}")
        shape, base_shape = tuple(parameter.shape), base[key]
        kind = parameter_kind(name, shape)
        m = _fan_in_multiplier(kind, shape, base_shape)
        std = sp_init_std(key, kind, family.n_layer)
        lr_scale, forward = 1.0, 1.0
        if parameterization != "sp" and kind in MATRIX_KINDS:
            std, lr_scale = std / math.sqrt(m), 1.0 / m
        if kind == "input":
            forward = multipliers.alpha_in
        elif kind == "output":
            forward = multipliers.alpha_out if parameterization == "sp" else multipliers.alpha_out / m
        elif kind == "router":
            forward = multipliers.alpha_router / m if parameterization == "mup" else multipliers.alpha_router
        found.append(Rule(key, kind, shape, base_shape, m, std, lr_scale, forward))
    return found


def attention_scale(parameterization: str, head_dim: int, base_head_dim: int) -> float | None:
    """Scale of the attention logits; None means PyTorch's 1/√head_dim (SP, and muP at the base head dim)."""
    check_parameterization(parameterization)
    check_int("head_dim", head_dim, low=1)
    check_int("base_head_dim", base_head_dim, low=1)
    if parameterization == "sp" or head_dim == base_head_dim:
        return None
    return (1.0 / math.sqrt(base_head_dim)) * (base_head_dim / head_dim)


# ----------------------------------------------------------------------------------------------- applying them


class Multiplier(nn.Module):
    """A torch parametrization that multiplies a weight by a constant: ``α (W x) = (α W) x``.

    Putting the multiplier on the weight the layer reads, instead of on its output, reaches the router, whose
    logits are computed inside the MoE layer. The optimizer still sees the raw tensor, so the gradient it gets is
    α times the gradient of the effective weight, exactly as with a multiplier on the output.
    """

    def __init__(self, factor: float):
        super().__init__()
        check_multiplier("factor", factor)
        self.factor = float(factor)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


@torch.no_grad()
def initialize(model: TinyLM, model_rules: list[Rule], seed: int) -> None:
    """Draw every tensor from N(0, init_std²) (norm gains: ones), one seeded generator, ``named_parameters``
    order: every parameterization draws the same standard normals, only scaled differently."""
    check_seed(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    parameters = dict(model.named_parameters())
    for rule in model_rules:
        parameter = parameters[rule.name]
        if rule.init_std is None:
            parameter.fill_(1.0)
        else:
            draw = torch.empty(parameter.shape, device="cpu").normal_(0.0, rule.init_std, generator=generator)
            parameter.copy_(draw)


def attach_multipliers(model: TinyLM, model_rules: list[Rule]) -> None:
    """Register each forward multiplier as a parametrization of the weight it multiplies (always, even when it
    is 1, so every parameterization runs the same code)."""
    by_name = {rule.name: rule for rule in model_rules}
    targets = [
        (model.embedding.token, "embedding.token.weight"),
        (model.embedding.position, "embedding.position.weight"),
        (model.head, "head.weight"),
    ]
    for layer in moe_layers(model):
        targets.append((layer.router, f"blocks.{_block_of(model, layer)}.ffn.router.weight"))
    for module, name in targets:
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"{name} already has a multiplier; parameterize a fresh model")
        parametrize.register_parametrization(module, "weight", Multiplier(by_name[name].forward_multiplier))


def _block_of(model: TinyLM, layer: nn.Module) -> int:
    return next(i for i, block in enumerate(model.blocks) if block.ffn is layer)


def parameter_groups(model: TinyLM, model_rules: list[Rule]) -> list[dict]:
    """Optimizer groups for ``efflab.train.fit``: one per kind (and LR scale), every parameter in exactly one.

    Each group is ``{"name", "params", "lr_scale", "kind"}``; ``fit`` gives it the LR ``η * lr_scale``.
    """
    parameters = {logical_name(name): parameter for name, parameter in model.named_parameters()}
    groups: dict[tuple[str, float], dict] = {}
    for rule in model_rules:
        key = (rule.kind, rule.lr_scale)
        if key not in groups:
            groups[key] = {"name": rule.kind, "kind": rule.kind, "lr_scale": rule.lr_scale, "params": []}
        groups[key]["params"].append(parameters[rule.name])
    ordered = sorted(groups.values(), key=lambda g: (KINDS.index(g["kind"]), g["lr_scale"]))
    kinds = [group["kind"] for group in ordered]
    for group in ordered:
        if kinds.count(group["kind"]) > 1:  # several LR scales within one kind: name them apart
            group["name"] = f"{group['kind']} (lr x{group['lr_scale']:.4g})"
    return ordered


@dataclass
class ParameterizedModel:
    """A fresh model of a family at a width, parameterized, with its rules and optimizer groups."""

    model: TinyLM
    family: ModelFamily
    width: int
    parameterization: str
    multipliers: Multipliers
    rules: list[Rule]

    @property
    def width_multiplier(self) -> float:
        return self.width / self.family.base_width

    def parameter_groups(self) -> list[dict]:
        return parameter_groups(self.model, self.rules)

    def rule_table(self):
        """One row per kind: its tensors, init std, LR scale, forward multiplier and a note (pandas)."""
        return rule_table(self.rules, self.parameterization)


ROUTER_NOTE = "inferred: α_r/m_d from μP theory, not read from the paper"


def rule_table(model_rules: list[Rule], parameterization: str):
    """The rules as a table, one row per (kind, init std, LR scale, multiplier), for display. The ``note``
    column marks μP's router row as inferred (see the module)."""
    import pandas as pd

    check_parameterization(parameterization)
    rows = {}
    for rule in model_rules:
        key = (rule.kind, rule.init_std, rule.lr_scale, rule.forward_multiplier)
        row = rows.setdefault(key, {"kind": rule.kind, "tensors": 0, "example": rule.name, "shape": rule.shape})
        row["tensors"] += 1
        row.update(
            init_std="ones" if rule.init_std is None else f"{rule.init_std:.4g}",
            lr_scale=f"{rule.lr_scale:.4g}",
            forward_multiplier=f"{rule.forward_multiplier:.4g}",
            note=ROUTER_NOTE if rule.kind == "router" and parameterization == "mup" else "",
        )
    table = pd.DataFrame(list(rows.values()))
    order = {kind: index for index, kind in enumerate(KINDS)}
    return table.sort_values("kind", key=lambda column: column.map(order), kind="stable").reset_index(drop=True)


def parameterize(
    family: ModelFamily,
    width: int,
    parameterization: str,
    multipliers: Multipliers | None = None,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ParameterizedModel:
    """Build a member of ``family`` at ``width`` and apply ``parameterization``: init, multipliers, attention
    scale. ``.parameter_groups()`` then gives the optimizer its per-group LRs."""
    check_family(family)
    check_parameterization(parameterization)
    multipliers = checked_multipliers(multipliers)
    check_seed(seed)
    # Shapes first (meta device, no memory, no wasted random draws), then storage; initialize() fills every tensor.
    model = family.build(width, device="meta").to_empty(device="cpu")
    model_rules = rules(model, family, parameterization, multipliers)
    initialize(model, model_rules, seed)
    attach_multipliers(model, model_rules)
    # The family keeps the head dimension fixed, so the base model's head dimension is the same.
    scale = attention_scale(parameterization, family.head_dim, family.head_dim)
    for block in model.blocks:
        block.attention.scale = scale
    return ParameterizedModel(model.to(device), family, width, parameterization, multipliers, model_rules)
