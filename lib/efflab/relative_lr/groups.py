"""Which learning-rate group each parameter belongs to: the components of the paper, found by name.

The paper (arXiv 2507.03526) treats a Transformer as a handful of *components* and gives each its own
schedule: the token embedding, the attention projections, the MoE router, the experts (or, in a dense model,
the feed-forward layer) and the unembedding (head). Its code decides membership from the parameter's name
with an ordered list of keys; the **first key that matches wins**, and whatever matches none (the norm gains)
keeps the base schedule, as if its two multipliers were 1.

For the course's :class:`~efflab.models.gpt.TinyLM` the names are

=============  ==============================================  =======================================
group          names (regular expressions, tried in order)     what they are
=============  ==============================================  =======================================
embedding      ``embedding.*``                                 token and position tables
head           ``head.*``                                      the unembedding (not tied to embedding)
router         ``*.router.*``                                  the MoE router (inside the ffn)
experts        ``blocks.i.ffn.up``, ``blocks.i.ffn.down``       stacked 3-D expert tensors
attention      ``blocks.i.attention.*``                        fused q/k/v projection and output
ffn            ``blocks.i.ffn.up.*``, ``blocks.i.ffn.down.*``   the dense feed-forward Linear layers
other          everything else                                 LayerNorm gains (multipliers 1)
=============  ==============================================  =======================================

An MoE's experts are bare ``nn.Parameter`` tensors (``blocks.0.ffn.up``), a dense FFN's are ``nn.Linear``
weights (``blocks.0.ffn.up.weight``), which is how the two rules tell them apart; an MoE output norm
(``blocks.0.ffn.norm.weight``) matches neither and stays in ``other``, with the other norms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

GROUPS = ("embedding", "attention", "router", "experts", "ffn", "head")
OTHER = "other"  # what no rule claims: always multipliers 1
MOE_GROUPS = ("embedding", "attention", "router", "experts", "head")  # the paper's five MoE components
DENSE_GROUPS = ("embedding", "attention", "ffn", "head")  # its four dense ones

RULES: tuple[tuple[str, str], ...] = (
    ("embedding", r"^embedding\."),
    ("head", r"^head\."),
    ("router", r"(^|\.)router\."),
    ("experts", r"^blocks\.\d+\.ffn\.(up|down)$"),
    ("attention", r"^blocks\.\d+\.attention\."),
    ("ffn", r"^blocks\.\d+\.ffn\.(up|down)\."),
)


def check_rules(rules: Sequence[tuple[str, str]]) -> None:
    """Every rule is (group, pattern) with a known group and a valid regular expression."""
    for rule in rules:
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise ValueError(f"rules entry {rule!r} is not allowed; expected a (group, pattern) pair")
        group, pattern = rule
        if group not in GROUPS:
            raise ValueError(f"group={group!r} is not allowed; expected one of {GROUPS}")
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"pattern={pattern!r} for group {group!r} is not a regular expression ({error})"
            ) from error


def group_of(name: str, rules: Sequence[tuple[str, str]] = RULES) -> str:
    """The group of one parameter name: the first rule whose pattern matches, else ``other``."""
    if not isinstance(name, str):
        raise ValueError(f"name={name!r} is not allowed; expected a parameter name")
    check_rules(rules)
    return _first_match(name, rules)


def _first_match(name: str, rules: Sequence[tuple[str, str]]) -> str:
    for group, pattern in rules:
        if re.search(pattern, name):
            return group
    return OTHER


def partition(model: nn.Module, rules: Sequence[tuple[str, str]] = RULES) -> dict[str, list[str]]:
    """Parameter names by group, every parameter in exactly one list; keys are ``GROUPS`` then ``other``.

    Groups that no parameter falls into (the router of a dense model) map to empty lists.
    """
    check_rules(rules)
    names: dict[str, list[str]] = {group: [] for group in (*GROUPS, OTHER)}
    for name, _ in model.named_parameters():
        names[_first_match(name, rules)].append(name)
    return names


def group_sizes(model: nn.Module, rules: Sequence[tuple[str, str]] = RULES) -> dict[str, int]:
    """Number of scalar parameters in each group."""
    parameters = dict(model.named_parameters())
    return {group: sum(parameters[n].numel() for n in names) for group, names in partition(model, rules).items()}


def present_groups(model: nn.Module, rules: Sequence[tuple[str, str]] = RULES) -> tuple[str, ...]:
    """The groups (of ``GROUPS``) that hold at least one parameter of this model, in ``GROUPS`` order."""
    return tuple(group for group, names in partition(model, rules).items() if names and group != OTHER)
