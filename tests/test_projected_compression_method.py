"""Projected compression's invariants: shapes, init equivalence, exact merge, frozen base, validation."""

import pytest
import torch
import torch.nn.functional as F

from efflab.models.gpt import GPTConfig, TinyLM
from efflab.projected_compression import cost
from efflab.projected_compression.hard_pruning import hard_prune
from efflab.projected_compression.importance import (
    IMPORTANCES,
    Target,
    activation_importance,
    importance_for,
    select,
)
from efflab.projected_compression.projection import ProjectedLM, merge, selection_matrix

CONFIG = GPTConfig(block_size=16, n_layer=2, n_head=4, d_model=32, d_ff=128)
TARGET = Target(d_model=16, d_ff=48)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = TinyLM(CONFIG)
    # move the gains off 1 so that slicing them is visible
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))


def selection_for(model, kind, tokens):
    return select(importance_for(kind, model, calibration=[tokens], seed=3), CONFIG, TARGET)


def train_steps(projected, tokens, steps=3):
    optimizer = torch.optim.AdamW(projected.trainable_parameters(), lr=3e-2)
    for _ in range(steps):
        logits = projected(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_merged_model_has_the_target_shapes_and_the_pruned_parameter_count(base, tokens):
    selection = selection_for(base, "activation", tokens)
    merged = merge(ProjectedLM(base, selection, TARGET))
    d, f, v = TARGET.d_model, TARGET.d_ff, CONFIG.vocab_size
    expected = {
        "embedding.token.weight": (v, d),
        "embedding.position.weight": (CONFIG.block_size, d),
        "norm.weight": (d,),
        "head.weight": (v, d),
    }
    for i in range(CONFIG.n_layer):
        expected |= {
            f"blocks.{i}.norm1.weight": (d,),
            f"blocks.{i}.attention.qkv.weight": (3 * d, d),
            f"blocks.{i}.attention.out.weight": (d, d),
            f"blocks.{i}.norm2.weight": (d,),
            f"blocks.{i}.ffn.up.weight": (f, d),
            f"blocks.{i}.ffn.down.weight": (d, f),
        }
    assert {k: tuple(p.shape) for k, p in merged.named_parameters()} == expected
    pruned = hard_prune(base, selection, TARGET)
    assert type(merged) is TinyLM and merged.config == pruned.config
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("kind", IMPORTANCES)
def test_before_training_the_projected_model_is_the_hard_pruned_model(base, tokens, kind):
    selection = selection_for(base, kind, tokens)
    with torch.no_grad():
        projected = ProjectedLM(base, selection, TARGET)(tokens)
        pruned = hard_prune(base, selection, TARGET)(tokens)
    assert torch.equal(projected, pruned)


def test_hard_pruning_keeps_the_selected_rows_and_columns(base, tokens):
    selection = selection_for(base, "magnitude", tokens)
    pruned = hard_prune(base, selection, TARGET)
    d_idx, ffn_idx = selection.d, selection.ffn[1]
    assert torch.equal(pruned.blocks[1].ffn.up.weight, base.blocks[1].ffn.up.weight[ffn_idx][:, d_idx])
    assert torch.equal(pruned.blocks[1].norm2.weight, base.blocks[1].norm2.weight[d_idx])
    assert torch.equal(pruned.embedding.token.weight, base.embedding.token.weight[:, d_idx])
    v_rows = base.blocks[0].attention.qkv.weight[2 * CONFIG.d_model :][selection.vo[0]][:, d_idx]
    assert torch.equal(pruned.blocks[0].attention.qkv.weight[2 * TARGET.d_model :], v_rows)


def test_after_training_the_merged_model_computes_the_projected_model(tokens):
    torch.manual_seed(0)
    model = TinyLM(CONFIG)
    projected = ProjectedLM(model, selection_for(model, "activation", tokens), TARGET)
    train_steps(projected, tokens)
    merged = merge(projected)
    projected.eval()
    with torch.no_grad():
        assert (merged(tokens) - projected(tokens)).abs().max() < 1e-5
    # training moved the projections away from the plain selection
    assert not torch.equal(
        merged(tokens), hard_prune(model, selection_for(model, "activation", tokens), TARGET)(tokens)
    )


def test_base_weights_stay_bitwise_and_only_projections_a_and_gains_get_gradients(tokens):
    torch.manual_seed(0)
    model = TinyLM(CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    projected = ProjectedLM(model, selection_for(model, "activation", tokens), TARGET)
    train_steps(projected, tokens, steps=2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for parameter in model.parameters():
        assert parameter.grad is None and not parameter.requires_grad
    trainable = dict((n, p) for n, p in projected.named_parameters() if p.requires_grad)
    assert trainable and all(p.grad is not None for p in trainable.values())
    kinds = {n.rsplit(".", 1)[-1] for n in trainable}
    assert kinds <= {"p_in", "p_out", "a"} | {n.rsplit(".", 1)[-1] for n in trainable if n.startswith("gains.")}
    assert all(n.startswith(("matrices.", "gains.")) for n in trainable)
    gains = [n for n in trainable if n.startswith("gains.")]
    assert len(gains) == 2 * CONFIG.n_layer + 1


def test_gradient_reaches_the_rows_of_discarded_channels(tokens):
    torch.manual_seed(0)
    model = TinyLM(CONFIG)
    selection = selection_for(model, "activation", tokens)
    projected = ProjectedLM(model, selection, TARGET)
    logits = projected(tokens[:, :-1])
    F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
    grad = projected.matrices["blocks__0__ffn__up__weight"][0].p_in.grad
    discarded = [c for c in range(CONFIG.d_model) if c not in set(selection.d.tolist())]
    assert grad[discarded].abs().sum() > 0


def test_selection_is_sorted_top_k_and_stays_inside_each_head(base, tokens):
    importance = activation_importance(base, [tokens])
    selection = select(importance, CONFIG, TARGET)
    assert selection.d.tolist() == sorted(torch.topk(importance.d, TARGET.d_model).indices.tolist())
    head_dim, keep = CONFIG.head_dim, TARGET.d_model // CONFIG.n_head
    heads = (selection.qk[0] // head_dim).tolist()
    assert heads == sorted(heads) and all(heads.count(h) == keep for h in range(CONFIG.n_head))


def test_activation_importance_of_the_ffn_is_the_summed_absolute_up_output(base, tokens):
    importance = activation_importance(base, [tokens])
    with torch.no_grad():
        x = base.embedding(tokens)
        x = x + base.blocks[0].attention(base.blocks[0].norm1(x))
        expected = base.blocks[0].ffn.up(base.blocks[0].norm2(x)).abs().sum((0, 1))
    torch.testing.assert_close(importance.ffn[0], expected)


def test_selection_matrix_selects_rows():
    w = torch.arange(12.0).view(4, 3)
    assert torch.equal(selection_matrix(torch.tensor([1, 3]), 4) @ w, w[[1, 3]])


@pytest.mark.parametrize(
    ("target", "word"),
    [
        (Target(32, 48), "d_model"),  # d' == d
        (Target(40, 48), "d_model"),  # d' > d
        (Target(16, 0), "d_ff"),
        (Target(16, -4), "d_ff"),
        (Target(18, 48), "n_head"),  # 4 heads do not divide 18
    ],
)
def test_bad_targets_raise(base, target, word):
    with pytest.raises(ValueError, match=word):
        target.check_against(CONFIG)
    with pytest.raises(ValueError, match=word):
        ProjectedLM(base, selection_for(base, "magnitude", torch.zeros(1, 4, dtype=torch.long)), target)


def test_unknown_importance_raises(base):
    with pytest.raises(ValueError, match="importance"):
        importance_for("gradient", base)
    with pytest.raises(ValueError, match="calibration"):
        importance_for("activation", base)


def test_projection_cost_is_per_step_and_its_share_falls_with_batch():
    projection = cost.projection_flops_per_step(CONFIG, TARGET)
    small = cost.flops_per_step(CONFIG, TARGET, batch_size=1)
    large = cost.flops_per_step(CONFIG, TARGET, batch_size=64)
    assert small["projected compression"] - small["pruned + retrain"] == projection
    assert large["projected compression"] - large["pruned + retrain"] == projection
    assert large["pruned + retrain"] == 64 * small["pruned + retrain"]
    tokens = cost.breakeven_tokens(CONFIG, TARGET, 0.1)
    sequences = tokens // CONFIG.block_size
    assert projection <= 0.1 * cost.model_flops_per_step(TARGET.config_for(CONFIG), sequences)
    assert projection > 0.1 * cost.model_flops_per_step(TARGET.config_for(CONFIG), sequences - 1)


def test_projection_cost_counts_the_measured_forward_products():
    from torch.utils.flop_counter import FlopCounterMode

    model = TinyLM(CONFIG)
    projected = ProjectedLM(model, selection_for(model, "magnitude", torch.zeros(1, 4, dtype=torch.long)), TARGET)
    counter = FlopCounterMode(display=False)
    with counter:
        weights = projected.materialise()
        sum(w.sum() for w in weights.values()).backward()
    assert counter.get_total_flops() == cost.projection_flops_per_step(CONFIG, TARGET)
