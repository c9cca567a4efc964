"""Projected compression's experiment, MiniLM pieces and playground: wiring, validation and computed findings."""

import copy
import dataclasses

import pytest
import torch

from efflab.flops import gpt_parameter_count
from efflab.models.bert import BertConfig, FeedForward
from efflab.models.gpt import TinyLM
from efflab.projected_compression import experiment
from efflab.projected_compression.experiment import (
    METHODS,
    QUALITIES,
    CompressionBudget,
    channel_selections,
    findings,
    live_task,
    paper_rows,
    run_experiment,
    target_for_keep,
)
from efflab.projected_compression.importance import IMPORTANCES
from efflab.projected_compression.sentence_encoder import (
    EncoderBudget,
    ProjectedFeedForward,
    merge_ffn,
    prune_ffn,
)
from efflab.runtime import setup


def test_targets_follow_the_keep_fraction_of_non_embedding_parameters():
    config = CompressionBudget.quick().config
    full = gpt_parameter_count(config, include_embedding=False)
    widths = []
    for keep in (0.5, 0.35, 0.2):
        target = target_for_keep(config, keep)
        small = dataclasses.replace(config, d_model=target.d_model, d_ff=target.d_ff)
        share = gpt_parameter_count(small, include_embedding=False) / full
        assert abs(share - keep) < 0.06 and target.d_model % config.n_head == 0
        widths.append(target.d_model)
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 3


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"pretrain_steps": (600, 100)}, "pretrain_steps"),
        ({"token_budgets": (120, 40)}, "token_budgets"),
        ({"keep_fractions": (0.5, 1.0)}, "keep_fractions"),
        ({"retrain_lrs": (float("nan"),)}, "lr"),
        ({"seeds": 0}, "seeds"),
    ],
)
def test_bad_budgets_raise(changes, word):
    with pytest.raises(ValueError, match=word):
        dataclasses.replace(CompressionBudget.quick(), **changes)


def test_bad_encoder_budgets_raise():
    with pytest.raises(ValueError, match="layers"):
        EncoderBudget(layers=(6,))
    with pytest.raises(ValueError, match="keep_ffn"):
        EncoderBudget(keep_ffn=1.5)


def test_projected_bert_ffn_starts_as_the_pruned_one_and_merges_exactly():
    torch.manual_seed(0)
    ffn = FeedForward(BertConfig(d_model=16, d_ff=64, n_head=2))
    before = copy.deepcopy(ffn.state_dict())
    kept = torch.tensor([1, 5, 8, 30, 63])
    x = torch.randn(2, 3, 16)
    projected = ProjectedFeedForward(ffn, kept)
    assert torch.equal(projected(x), prune_ffn(ffn, kept)(x))
    optimizer = torch.optim.AdamW([p for p in projected.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = projected(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    merged = merge_ffn(projected)
    assert merged.up.weight.shape == (5, 16) and merged.down.weight.shape == (16, 5)
    with torch.no_grad():
        assert (merged(x) - projected(x)).abs().max() < 1e-5
    for name, value in ffn.state_dict().items():
        assert torch.equal(value, before[name]) and ffn.get_parameter(name).grad is None


TINY = CompressionBudget(
    d_model=16,
    d_ff=32,
    n_layer=1,
    n_head=2,
    block_size=8,
    batch_size=2,
    corpus_bytes=20_000,
    pretrain_steps=(3, 6),
    keep_fractions=(0.5, 0.2),
    token_budgets=(2, 4),
    seeds=2,
    retrain_lrs=(1e-3,),
    projection_lrs=(1e-3, 3e-3),
    calibration_batches=1,
    eval_batches=1,
    eval_batch_size=2,
    evals_per_run=1,
    encoder=EncoderBudget(enabled=False),
)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    import os

    previous = os.environ.get("EFFLAB_CACHE")
    os.environ["EFFLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        run = setup("quick", "cpu", 0, verbose=False)
        from efflab.parallel import run_all  # noqa: F401  (the study runs its tasks inline below)

        os.environ["EFFLAB_EXECUTOR"] = "inline"
        yield run_experiment(run, TINY)
    finally:
        os.environ.pop("EFFLAB_EXECUTOR", None)
        if previous is None:
            os.environ.pop("EFFLAB_CACHE", None)
        else:
            os.environ["EFFLAB_CACHE"] = previous


def test_tiny_study_gives_every_method_every_setting_at_equal_tokens(tiny_result):
    summary = tiny_result.summary()
    assert summary["merge_error"] < 1e-5 and summary["parameter_match"]
    for quality in ("low", "high"):
        for keep in ("0.5", "0.2"):
            final = summary["final_loss"][quality][keep]
            assert all(len(final[m]) == 2 for m in final)
            for tokens in summary["tokens"]:
                assert len(summary["gap_pc_minus_pruned"][quality][keep][str(tokens)]) == 2
    trained = tiny_result.runs[tiny_result.runs.method != "pruned, no retrain"]
    assert set(trained.tokens) == {2 * 16, 4 * 16}
    assert set(tiny_result.runs.importance) == {"activation", "magnitude", "random"}
    assert tiny_result.lrs["projected compression"] in TINY.projection_lrs
    text = findings(summary)
    assert "Longer-pretrained base" in text and "Shorter-pretrained base" in text
    table = paper_rows(summary, None)
    assert "this run" in table.columns and len(table) >= 5


def test_each_importance_is_computed_once_per_base_for_every_keep_fraction(monkeypatch):
    config = TINY.config
    torch.manual_seed(0)
    bases = {quality: TinyLM(config) for quality in QUALITIES}
    targets = {keep: target_for_keep(config, keep) for keep in (0.5, 0.35, 0.2)}
    calibration = [torch.randint(0, 256, (2, config.block_size)) for _ in range(2)]
    one_at_a_time = {
        (quality, keep, kind): experiment._selection_for(bases[quality], kind, targets[keep], calibration, 3)
        for quality in QUALITIES
        for keep in targets
        for kind in IMPORTANCES
    }
    calls = []
    importance_for = experiment.importance_for

    def counted(kind, model, **kwargs):
        calls.append((kind, id(model)))
        return importance_for(kind, model, **kwargs)

    monkeypatch.setattr(experiment, "importance_for", counted)
    selections = channel_selections(bases, targets, calibration, 3)
    assert sorted(calls) == sorted((kind, id(base)) for base in bases.values() for kind in IMPORTANCES)
    assert selections.keys() == one_at_a_time.keys()
    for key, selection in selections.items():
        assert selection.to_lists() == one_at_a_time[key].to_lists()
        assert all(t.device.type == "cpu" for t in (selection.d, *selection.qk, *selection.vo, *selection.ffn))


def test_the_study_computes_each_importance_once_per_base(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("EFFLAB_EXECUTOR", "inline")
    calls = []
    importance_for = experiment.importance_for

    def counted(kind, model, **kwargs):
        calls.append(kind)
        return importance_for(kind, model, **kwargs)

    monkeypatch.setattr(experiment, "importance_for", counted)
    result = run_experiment(setup("quick", "cpu", 0, verbose=False), TINY)
    assert sorted(calls) == sorted(IMPORTANCES * len(QUALITIES))  # two keep fractions, one importance each
    assert result.device == "cpu" and result.heatmap["p_in"].device.type == "cpu"


def _summary_with_gaps(high: list[float], low: list[float]) -> dict:
    def per_keep(gaps):
        return {"0.5": {"100": [g + 0.01 for g in gaps], "300": gaps}}

    def losses(pc):
        return {"0.5": {METHODS[0]: [2.5, 2.5], METHODS[1]: [2.2, 2.4], METHODS[2]: pc, METHODS[3]: [2.9, 3.0]}}

    return {
        "tokens": [100, 300],
        "base_loss": {"high": 2.0, "low": 3.0},
        "gap_pc_minus_pruned": {"high": per_keep(high), "low": per_keep(low)},
        "final_loss": {"high": losses([2.0, 2.2]), "low": losses([2.6, 2.7])},
    }


def _minilm(pc: list[float], pruned: list[float]) -> dict:
    return {
        "layers": [5],
        "d_ff": 1536,
        "target_d_ff": 384,
        "steps": 30,
        "cosine": {"projected compression": pc, "pruned + retrain": pruned, "pruned, no retrain": [0.5]},
        "neighbours": {"projected compression": [0.8] * len(pc), "pruned + retrain": [0.7] * len(pruned)},
    }


def test_findings_has_a_sentence_for_each_outcome():
    better = findings(_summary_with_gaps([-0.05, -0.04], [0.02, 0.03]))
    assert "projected compression beats hard prune + retrain" in better
    assert "hard prune + retrain beats projected compression" in better
    assert "larger on the better base at every keep fraction and seed" in better and "in PC's favour" in better
    worse = findings(_summary_with_gaps([0.02, 0.03], [-0.05, -0.04]))
    assert "smaller on the better base at every keep fraction and seed" in worse
    mixed = findings(_summary_with_gaps([-0.05, 0.04], [-0.01, -0.02]))
    assert "mixed" in mixed and "seeds disagree" in mixed


def test_a_better_base_is_claimed_only_when_every_seed_agrees():
    # the means favour the better base (-0.045 vs 0.0), but the second seed says the opposite
    text = findings(_summary_with_gaps([-0.10, 0.01], [0.0, 0.0]))
    assert "seeds disagree on whether PC's margin is larger on the better base (it is in 1 of 2" in text
    assert "at every keep fraction and seed" not in text


@pytest.mark.parametrize(
    ("pc", "pruned", "words"),
    [
        ([0.9], [0.8], "PC higher, on one seed only"),
        ([0.7], [0.8], "PC lower, on one seed only"),
        ([0.9, 0.85], [0.8, 0.8], "PC higher on every seed"),
        ([0.9, 0.7], [0.8, 0.8], "the seeds disagree on which is higher"),
    ],
)
def test_the_minilm_verdict_says_how_many_seeds_it_rests_on(pc, pruned, words):
    summary = {**_summary_with_gaps([-0.05, -0.04], [0.02, 0.03]), "minilm": _minilm(pc, pruned)}
    line = next(line for line in findings(summary).splitlines() if line.startswith("- **MiniLM**"))
    assert f"({words})" in line


def test_findings_end_with_the_final_losses_of_every_method_per_base_and_keep():
    text = findings(_summary_with_gaps([-0.05, -0.04], [0.02, 0.03]))
    assert "Final eval loss after 300 training tokens, mean [min, max] over seeds" in text
    header = "| base (its own loss) | keep | " + " | ".join(METHODS) + " |"
    assert header in text
    assert "| longer-pretrained (2.000) | 0.5 | 2.500 | 2.300 [2.200, 2.400] | 2.100 [2.000, 2.200] | " in text
    assert "| shorter-pretrained (3.000) | 0.5 | 2.500 | 2.300 [2.200, 2.400] | 2.650 [2.600, 2.700] | " in text
    assert text.rstrip().endswith("2.950 [2.900, 3.000] |")


def test_paper_rows_quote_the_committed_minilm_numbers(tiny_result):
    summary = tiny_result.summary()
    committed = {**copy.deepcopy(summary), "minilm": _minilm([0.912, 0.914], [0.887, 0.889])}
    table = paper_rows(summary, committed)
    full = next(column for column in table.columns if column.startswith("full-mode run"))
    row = table.loc["MiniLM FFN compression: cosine to original embeddings, PC vs prune+retrain"]
    assert row[full] == "0.913 vs 0.888" and row["this run"] == "n/a"
    ours = paper_rows({**summary, "minilm": _minilm([0.5], [0.6])}, None)
    row = ours.loc["MiniLM FFN compression: cosine to original embeddings, PC vs prune+retrain"]
    assert row["this run"] == "0.500 vs 0.600" and row[full] == "n/a"


def test_the_live_task_trains_on_the_run_s_device_from_the_run_s_cached_base(tiny_result, monkeypatch):
    def no_pretraining(task):
        raise AssertionError(f"the live task missed the cached base and pretrained again: {task}")

    monkeypatch.setattr(experiment, "_train_base", no_pretraining)
    task = live_task(tiny_result, "projected compression", "high", 0.5, "activation", 2)
    assert task.device == tiny_result.device == "cpu"
    # a run on another device: the base is asked for there, and the live run trains there
    asked = []
    cached_on_cpu = experiment.pretrain_base

    def pretrain_base(base_task):
        asked.append(base_task.device)
        return cached_on_cpu(dataclasses.replace(base_task, device="cpu"))

    monkeypatch.setattr(experiment, "pretrain_base", pretrain_base)
    elsewhere = dataclasses.replace(tiny_result, device="cuda")
    assert live_task(elsewhere, "pruned + retrain", "low", 0.2, "magnitude", 2).device == "cuda"
    assert asked == ["cuda"]


def test_playground_answers_every_control_and_its_button_adds_a_run(tiny_result):
    from efflab.projected_compression import plots

    result = copy.deepcopy(tiny_result)
    playground = plots.playground(result)
    first = playground.status.value
    playground.controls["keep"].value = 0.2
    assert playground.status.value != first
    playground.controls["importance"].value = "random"
    playground.controls["tokens_per_run"].value = 64
    assert "precomputed only" in playground.status.value
    playground.controls["quality"].value = "low"
    rows = len(result.runs)
    playground.run_action()
    assert playground.actions_run == 1 and len(result.runs) == rows + 2
    for figure in (
        plots.final_loss_by_keep(result),
        plots.gap_vs_tokens(result),
        plots.projection_heatmap(result),
        plots.flops_figure(result),
    ):
        assert figure.data
