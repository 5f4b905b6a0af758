"""Compensation, specified: folded into the weights, a factor per gap gives exactly the logits of the pruned model
whose stream is multiplied by that factor where it enters the block after the gap; the factors come from the
statistics' norms; a family where no fold is exact is refused by name, before anything changes.

The reference is computed here, beside the code under test: the pruned model (``prune_layers`` without
compensation, itself specified in test_surgery.py) run with forward pre-hooks, written below, that multiply the
input of each block after a gap. The small random models are those of test_surgery.py with their norms' epsilon set to
1e-12 (the one term by which the fold is exact only in the limit).
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from test_family_chain import MULTIMODAL
from test_surgery import FAMILIES, LIN, LINEAR_ATTENTION, MOE, SMALL, VOCAB, F, build, input_ids, jamba
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from lorp_lightning import compensation
from lorp_lightning.architectures import ARCHITECTURES, decoder_layers
from lorp_lightning.compensation import gap_factors, gaps
from lorp_lightning.methods import select_layers
from lorp_lightning.search import PlanLoss, calibration_loss
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import prune_layers, pruning_record

REFUSED = {"olmo2", "olmo3", "exaone4", "gemma4_text", "gemma4", "minimax"}  # see the refusals below
PLAN = [1, 3]  # two gaps in 6 blocks: blocks 2 and 4 follow them
FACTORS = {2: 1.75, 4: 0.625}
TINY_EPSILON = 1e-12


def tiny(family: str):
    """The family's small random model, every model of the table: test_surgery's, Jamba and the multimodal ones."""
    if family == "jamba":
        model = jamba()
    elif family == "qwen3_5_moe_text":  # the text part of the multimodal qwen3_5_moe of test_family_chain.py
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            transformers.Qwen3_5MoeTextConfig(
                **SMALL,
                head_dim=16,
                layer_types=[LIN, F, F, LIN, F, LIN],
                **LINEAR_ATTENTION,
                **MOE,
                shared_expert_intermediate_size=32,
            )
        ).eval()
    elif family in FAMILIES:
        model = build(family)
    else:
        model_type, config, _ = MULTIMODAL[family]
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config()).eval()
    for module in model.modules():  # the norms' epsilon to almost nothing: the one term the fold is exact only without
        for name in ("eps", "variance_epsilon", "epsilon", "layer_norm_epsilon"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, TINY_EPSILON)
    return model


COMPENSABLE = sorted(({*FAMILIES, "jamba", "qwen3_5_moe_text", *MULTIMODAL} - REFUSED) - {"gemma4-without-per-layer-inputs"}) + [
    "gemma4-without-per-layer-inputs"
]


def plan_for(family: str) -> tuple[list[int], dict[int, float]]:
    if family == "jamba":  # a plan must keep its period: one whole period, so one gap
        return [2, 3], {4: 1.75}
    return PLAN, FACTORS


@torch.no_grad()
def logits_with_stream_scaled(model, factors_by_block: dict[torch.nn.Module, float]) -> torch.Tensor:
    def scale(factor):
        def hook(module, args, kwargs):
            if args:
                return (args[0] * factor, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * factor}

        return hook

    handles = [block.register_forward_pre_hook(scale(f), with_kwargs=True) for block, f in factors_by_block.items()]
    try:
        return model(input_ids(), use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()


def test_every_family_of_the_table_is_tested_here_either_folded_or_refused():
    model_types = {
        family: (MULTIMODAL[family][0] if family in MULTIMODAL else tiny(family).config.model_type)
        for family in COMPENSABLE + sorted(REFUSED)
    }
    assert set(model_types.values()) == set(ARCHITECTURES)


@pytest.mark.parametrize("family", COMPENSABLE)
def test_folded_factors_give_the_logits_of_the_pruned_model_with_the_stream_scaled_after_each_gap(family):
    plan, factors = plan_for(family)
    reference = prune_layers(tiny(family), plan)
    kept = [b for b in range(6) if b not in plan]
    blocks = decoder_layers(reference)
    expected = logits_with_stream_scaled(reference, {blocks[kept.index(b)]: f for b, f in factors.items()})
    plain = logits_with_stream_scaled(reference, {})

    compensated = prune_layers(tiny(family), plan, compensate=factors)
    got = logits_with_stream_scaled(compensated, {})

    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=2e-5)
    assert (plain - expected).abs().max() / scale > 1e-3  # the factors change the logits: the test can fail
    record = pruning_record(compensated)["steps"][-1]["compensation"]
    assert record == [{"block": b, "factor": f} for b, f in sorted(factors.items())]


def test_compensated_model_saves_reloads_and_generates_with_its_cache(tmp_path):
    model = prune_layers(build("llama"), PLAN, compensate=FACTORS)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits_with_stream_scaled(reloaded, {}), logits_with_stream_scaled(model, {}), rtol=0, atol=0)
    assert pruning_record(reloaded) == pruning_record(model)
    ids = input_ids()[:1, :4]
    with torch.no_grad():
        cached = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_a_second_compensated_pruning_composes_the_record_in_original_numbering():
    model = prune_layers(tiny("llama"), [1], compensate={2: 1.5})  # blocks 0, 2, 3, 4, 5 remain
    prune_layers(model, [2], compensate={3: 1.25})  # current block 2 is original 3; current 3 is original 4
    steps = pruning_record(model)["steps"]
    assert [s["compensation"] for s in steps] == [[{"block": 2, "factor": 1.5}], [{"block": 4, "factor": 1.25}]]


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_plan_loss_compensated_is_the_calibration_loss_of_the_compensated_model_and_counts_as_a_plan(reuse_prefix):
    windows = input_ids()
    loss = PlanLoss(build("llama"), windows, reuse_prefix=reuse_prefix)
    expected = calibration_loss(prune_layers(build("llama"), PLAN, compensate=FACTORS), windows)
    assert loss.compensated(PLAN, FACTORS) == pytest.approx(expected, rel=1e-5)
    assert loss.compensated(PLAN, {2: 1.0, 4: 1.0}) == loss(PLAN)  # factors of 1: the plan itself
    assert loss.plans_checked == 2
    assert loss.compensated(PLAN, FACTORS) == pytest.approx(expected, rel=1e-5) and loss.plans_checked == 2  # remembered
    assert len(decoder_layers(loss.model)) == 6  # the model is left as it was


def test_fit_strength_keeps_the_strength_of_lowest_calibration_loss_and_prices_each_in_checks():
    windows = input_ids()
    loss = PlanLoss(build("llama"), windows)
    norms = [1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 9.0]
    strength, factors, losses = compensation.fit_strength(loss, PLAN, norms)
    assert set(losses) == set(compensation.STRENGTHS)
    assert losses[strength] == min(losses.values())
    assert factors == gap_factors(norms, PLAN, strength)
    assert losses[0.0] == loss(PLAN)
    for s, value in losses.items():
        assert value == loss.compensated(PLAN, gap_factors(norms, PLAN, s))
    assert loss.plans_checked == len(compensation.STRENGTHS)  # the plan, and one check per other strength


# --------------------------------------------------------------------------- the factors


def test_gaps_are_the_runs_of_removed_blocks_with_the_kept_block_after_each_and_none_at_the_end():
    assert gaps([3, 4, 7], 10) == [(3, 5), (7, 8)]
    assert gaps([1, 2, 8, 9], 10) == [(1, 3)]  # 8, 9 reach the end: the final norm ignores the stream's scale
    assert gaps([], 10) == []


def test_gap_factors_are_the_ratio_of_mean_norms_across_each_gap_raised_to_the_strength():
    norms = [1.0, 2.0, 4.0, 5.0, 10.0, 12.0]  # m_0..m_5 of a 5-block model
    assert gap_factors(norms, [1, 2], 1.0) == {3: 5.0 / 2.0}
    assert gap_factors(norms, [1, 3], 0.5) == {2: math.sqrt(4.0 / 2.0), 4: math.sqrt(10.0 / 5.0)}
    assert gap_factors(norms, [1, 3], 0.0) == {2: 1.0, 4: 1.0}


def test_statistics_norms_are_the_mean_l2_norm_of_each_hidden_state_over_the_real_tokens():
    model = build("llama")
    ids = input_ids()
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second sequence
    states = []

    def record(module, args, kwargs):
        states.append((args[0] if args else kwargs["hidden_states"]).detach())

    layers = decoder_layers(model)
    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    handles.append(
        layers[-1].register_forward_hook(lambda m, a, out: states.append((out[0] if isinstance(out, tuple) else out).detach()))
    )
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    for handle in handles:
        handle.remove()
    real = mask.bool()
    expected = torch.tensor(
        [torch.linalg.vector_norm(h.double(), dim=-1)[real].mean().item() for h in states], dtype=torch.float64
    )

    stats = collect_layer_stats(build("llama"), [{"input_ids": ids, "attention_mask": mask}], progress=False)
    torch.testing.assert_close(stats.norms, expected, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "family, reason",
    [
        ("olmo2", "no norm before"),
        ("olmo3", "no norm before"),
        ("exaone4", "no norm before"),
        ("gemma4_text", "hidden_size_per_layer_input=0"),
        ("minimax", "residual after its input norm"),
    ],
)
def test_a_family_whose_blocks_read_the_stream_unnormalised_or_never_see_its_scale_is_refused_by_name_unchanged(family, reason):
    model = tiny(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"compensation is not available for .*{model.config.model_type}.*{reason}"):
        prune_layers(model, PLAN, compensate=FACTORS)
    assert len(decoder_layers(model)) == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_opt_that_normalises_after_its_blocks_is_refused():
    config = FAMILIES["opt"].config()
    config.do_layer_norm_before = False
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"'opt' model: it needs do_layer_norm_before=True"):
        prune_layers(model, PLAN, compensate=FACTORS)


def test_a_family_outside_the_table_is_refused_since_its_stream_writers_are_unknown():
    config = transformers.PersimmonConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"'persimmon' family: it is not in the table"):
        prune_layers(model, PLAN, compensate=FACTORS)


@pytest.mark.parametrize(
    "compensate, error, message",
    [
        ({3: 1.5}, ValueError, r"block 3 is not the kept block after a gap of the plan \[1, 3\] \(those are \[2, 4\]\)"),
        ({2: 0.0}, ValueError, r"the factor of block 2 must be finite and positive, got 0.0"),
        ({2: float("nan")}, ValueError, r"the factor of block 2 must be finite and positive"),
        ({"2": 1.5}, TypeError, r"block '2' is not an int"),
        ([1.5], TypeError, r"compensate must be a mapping"),
    ],
)
def test_bad_factors_are_refused_by_name_before_anything_changes(compensate, error, message):
    model = build("llama")
    with pytest.raises(error, match=message):
        prune_layers(model, PLAN, compensate=compensate)
    assert len(decoder_layers(model)) == 6 and pruning_record(model) is None


def test_gap_factors_refuse_a_negative_strength_and_norms_that_are_not_positive():
    with pytest.raises(ValueError, match=r"strength must be a finite number >= 0, got -1.0"):
        gap_factors([1.0, 2.0, 3.0], [1], -1.0)
    with pytest.raises(ValueError, match=r"norms must be finite and positive"):
        gap_factors([1.0, 0.0, 3.0], [1])


def test_a_model_with_lora_adapters_is_refused():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["o_proj"])).base_model.model
    with pytest.raises(ValueError, match=r"LoRA adapters .*merge them first"):
        compensation.check_compensable(model)


# --------------------------------------------------------------------------- chosen with the plan


@pytest.fixture(scope="module")
def chosen():
    model = build("llama")
    windows = torch.randint(3, VOCAB - 3, (4, 16), generator=torch.Generator().manual_seed(3))
    stats = collect_layer_stats(model, windows.split(2), progress=False)
    plan = select_layers(stats, 2, method="lorp_search", model=model, windows=windows, compensate=True)
    return model, windows, stats, plan


def test_select_layers_compensate_records_the_strength_of_lowest_check_loss_and_its_factors(chosen):
    model, windows, stats, plan = chosen
    checks = PlanLoss(build("llama"), windows)  # the same windows: select_layers checks all 4 (fewer than 8 given)
    tried = {t["strength"]: t["loss"] for t in plan.compensation["tried"]}
    assert set(tried) == set(compensation.STRENGTHS)
    for strength, value in tried.items():
        assert value == pytest.approx(
            checks.compensated(plan.pruned, gap_factors(stats.norms.tolist(), plan.pruned, strength)), rel=1e-6
        )
    strength = plan.compensation["strength"]
    assert tried[strength] == min(tried.values())
    factors = gap_factors(stats.norms.tolist(), plan.pruned, strength)
    assert plan.compensation["factors"] == [{"block": b, "factor": f} for b, f in sorted(factors.items())]
    assert plan.compensation["check_windows"] == 4 * (len(compensation.STRENGTHS) - 1)  # the plan itself was checked
    assert plan.cost["check_windows"] >= plan.compensation["check_windows"]


def test_prune_layers_folds_a_plans_own_compensation_and_the_plan_survives_json(chosen):
    model, windows, stats, plan = chosen
    factors = plan.factors
    expected = prune_layers(build("llama"), plan.pruned, compensate=factors)
    pruned = prune_layers(build("llama"), PruningPlan.from_json(plan.to_json()))
    torch.testing.assert_close(logits_with_stream_scaled(pruned, {}), logits_with_stream_scaled(expected, {}), rtol=0, atol=0)
    assert PruningPlan.from_json(plan.to_json()) == plan
    assert "compensated, strength" in str(plan)


def test_select_layers_compensate_needs_the_model_and_windows_and_the_norms(chosen):
    model, windows, stats, _ = chosen
    with pytest.raises(
        ValueError, match=r"compensate=True chooses its strength on the calibration loss: pass model= and windows="
    ):
        select_layers(stats, 2, method="shortgpt", compensate=True)
    old = type(stats)(stats.similarity, stats.last_token_similarity, stats.num_tokens, stats.num_sequences)  # no norms
    with pytest.raises(ValueError, match=r"compensate=True reads the stream's norms"):
        select_layers(old, 2, method="shortgpt", model=model, windows=windows, compensate=True)
    with pytest.raises(ValueError, match=r"compensation is not available for the 'olmo2' family"):
        select_layers(stats, 2, method="shortgpt", model=build("olmo2"), windows=windows, compensate=True)
    with pytest.raises(ValueError, match=r"compensate must be True or False, got compensate=1"):
        select_layers(stats, 2, method="shortgpt", compensate=1)


def test_pruning_a_checkpoint_on_disk_refuses_a_compensated_plan_and_writes_nothing(chosen, tmp_path):
    from lorp_lightning import prune_checkpoint

    model, _, _, plan = chosen
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(NotImplementedError, match=r"the plan carries a compensation .* does not fold"):
        prune_checkpoint(plan, tmp_path / "dense", tmp_path / "out")
    assert not (tmp_path / "out").exists()
