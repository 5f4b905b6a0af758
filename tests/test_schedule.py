"""Progressive pruning inside fit, specified: a schedule of (step, amount) pairs, or a callable of the epoch, reaches
its total budget a step at a time, at the validation ends it reaches; training goes on between the steps, over
optimizers built again; a run resumed from a checkpoint in the middle of a schedule goes on where it stopped; with
LoRPHealCallback, one healing per step. Bad schedules are refused before any batch, naming the schedule.
"""

from __future__ import annotations

import re

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lightning import make_trainer, stories, tiny_llama

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LoRPHealCallback, LoRPPruneCallback
from lorp_lightning.healing import healing_records
from lorp_lightning.module import LoRPModule
from lorp_lightning.rounds import PruningSchedule
from lorp_lightning.surgery import pruning_record

SCHEDULE = [(2, 1), (4, 2), (6, 0.375)]  # of 8 blocks: 1 by step 2, 2 by step 4, 3 by step 6


# --------------------------------------------------------------------------- the schedule


def test_a_schedule_gives_the_blocks_removed_by_each_step_from_its_last_entry_reached():
    schedule = PruningSchedule(SCHEDULE)
    assert schedule.blocks(8, 6) == [1, 2, 3]
    assert [schedule.due(step, 0, 8, 6) for step in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_callable_schedule_is_asked_with_the_epoch_and_may_say_nothing_yet():
    schedule = PruningSchedule(lambda epoch: [0, 1, 0.25][epoch])
    assert [schedule.due(0, epoch, 8, 6) for epoch in range(3)] == [0, 1, 2]
    assert schedule.blocks(8, 6) is None


@pytest.mark.parametrize(
    "schedule, message",
    [
        ([], "a schedule must be a non-empty list of (step, amount) pairs"),
        ([(0, 1), (0, 2)], "the steps of the schedule [(0, 1), (0, 2)] must strictly increase, got [0, 0]"),
        ([(0, 1), (-1, 2)], "holds (-1, 2), which is not a pair (step, amount)"),
        ([(0, 1.5)], "holds (0, 1.5), which is not a pair (step, amount)"),
        ([(0, 1, 2)], "holds (0, 1, 2), which is not a pair"),
    ],
)
def test_what_is_not_a_schedule_is_refused_at_construction_naming_it(schedule, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PruningSchedule(schedule)


@pytest.mark.parametrize(
    "schedule, message",
    [
        (
            [(0, 3), (2, 2)],
            "the schedule [(0, 3), (2, 2)] removes [3, 2] blocks of 8 at its steps: each entry must remove at "
            "least one block more",
        ),
        ([(0, 1), (2, 0.15)], "the schedule [(0, 1), (2, 0.15)] removes [1, 1] blocks of 8"),
        ([(0, 0.1)], "the schedule [(0, 0.1)] asks at step 0 for amount=0.1: num_prune=0.1 of 8 blocks rounds down to 0"),
        ([(0, 2), (5, 7)], "the schedule [(0, 2), (5, 7)] asks at step 5 for amount=7: num_prune=7 exceeds the 6 unprotected"),
    ],
)
def test_a_schedule_that_does_not_grow_by_whole_blocks_within_the_budget_is_refused_naming_it(schedule, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PruningSchedule(schedule).blocks(8, 6)


# --------------------------------------------------------------------------- inside fit


class Depths(Callback):
    """The model's depth after each validation end (after the pruning callback before it), by optimizer step."""

    def __init__(self) -> None:
        self.depths: list[tuple[int, int]] = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.depths.append((trainer.global_step, len(decoder_layers(pl_module.model))))


def fit_on_schedule(tokenizer, tmp_path, callbacks=(), max_steps=7, lr=1e-3, module=None, **trainer_options):
    module = module or LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=lr)
    prune, depths = LoRPPruneCallback(SCHEDULE, method="shortgpt", verbose=False), Depths()
    trainer = make_trainer(
        tmp_path,
        callbacks=[prune, *callbacks, depths],
        max_steps=max_steps,
        val_check_interval=2,
        num_sanity_val_steps=0,
        **trainer_options,
    )
    trainer.fit(module, datamodule=stories(tokenizer, num_calibration_windows=16))
    return module, prune, depths, trainer


def test_the_schedule_prunes_at_the_validation_ends_of_its_steps_and_reaches_the_exact_budget(tokenizer, tmp_path):
    module, prune, depths, trainer = fit_on_schedule(tokenizer, tmp_path)
    assert depths.depths == [(2, 7), (4, 6), (6, 5)]
    assert [p.num_layers for p in prune.plans] == [8, 7, 6] and [p.num_pruned for p in prune.plans] == [1, 1, 1]
    alive, removed = list(range(8)), []  # each step's plan, in the numbering of the model it pruned, composed by hand
    for plan in prune.plans:
        removed += [alive[b] for b in plan.pruned]
        alive = [b for i, b in enumerate(alive) if i not in plan.pruned]
    assert prune.plan.pruned == sorted(removed) and [r["pruned"] for r in prune.plan.rounds] == [[b] for b in removed]
    assert pruning_record(module.model)["pruned_layers"] == prune.plan.pruned
    assert len(decoder_layers(module.model)) == 5 and not set(prune.plan.pruned) & {0, 7}
    optimizer = trainer.optimizers[0]  # built again after the last pruning: over the kept parameters
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in module.model.parameters()}


def test_a_callable_schedule_prunes_when_the_epoch_asks_for_more(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    prune, depths = LoRPPruneCallback(lambda epoch: epoch, method="shortgpt", verbose=False), Depths()
    trainer = make_trainer(tmp_path, callbacks=[prune, depths], max_epochs=3, limit_train_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=stories(tokenizer))
    assert depths.depths == [(2, 8), (4, 7), (6, 6)]  # epoch 0 asks for none, epoch 1 for 1 block, epoch 2 for 2
    assert prune.plan.num_pruned == 2 and len(prune.plans) == 2


def test_a_callable_schedule_that_decreases_is_refused_naming_it(tokenizer, tmp_path):
    def shrinking(epoch):
        return 2 - epoch

    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    prune = LoRPPruneCallback(shrinking, method="shortgpt", verbose=False)
    trainer = make_trainer(tmp_path, callbacks=[prune], max_epochs=3, limit_train_batches=2, num_sanity_val_steps=0)
    with pytest.raises(
        ValueError,
        match=r"the schedule shrinking asks for 1 blocks removed at epoch 1, step 4, but 2 are "
        r"removed already: a schedule may not decrease",
    ):
        trainer.fit(module, datamodule=stories(tokenizer))


def test_a_run_resumed_in_the_middle_of_the_schedule_goes_on_where_it_stopped(tokenizer, tmp_path):
    # lr 0: the weights never change, so each step's statistics, and so its plan, are those of the uninterrupted run
    _, whole, _, _ = fit_on_schedule(tokenizer, tmp_path / "whole", lr=0.0)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    fit_on_schedule(tokenizer, tmp_path / "first", callbacks=[checkpoints], max_steps=3, lr=0.0, enable_checkpointing=True)
    (checkpoint,) = (tmp_path / "ckpt").glob("*step=3*.ckpt")  # after the pruning at step 2: 7 blocks
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=0.0)
    prune, depths = LoRPPruneCallback(SCHEDULE, method="shortgpt", verbose=False), Depths()
    trainer = make_trainer(
        tmp_path / "resumed", callbacks=[prune, depths], max_steps=7, val_check_interval=2, num_sanity_val_steps=0
    )
    trainer.fit(module, datamodule=stories(tokenizer, num_calibration_windows=16), ckpt_path=checkpoint)
    assert [p.num_layers for p in prune.plans] == [8, 7, 6]
    assert prune.plans == whole.plans and prune.plan == whole.plan
    assert len(decoder_layers(module.model)) == 5


def test_a_model_of_another_depth_than_the_schedule_records_is_refused_naming_both(tokenizer, tmp_path):
    _, done, _, _ = fit_on_schedule(tokenizer, tmp_path / "first", max_steps=3)
    prune = LoRPPruneCallback(SCHEDULE, method="shortgpt", verbose=False)
    prune.load_state_dict(done.state_dict())  # 1 of 8 blocks removed; the new module's model has all 8
    trainer = make_trainer(tmp_path, callbacks=[prune], max_steps=7, val_check_interval=2, num_sanity_val_steps=0)
    with pytest.raises(
        ValueError,
        match=r"the model has 8 blocks, but the schedule \[\(2, 1\), \(4, 2\), \(6, 0.375\)\] "
        r"of LoRPPruneCallback has removed 1 of 8 .* which leaves 7",
    ):
        trainer.fit(LoRPModule(tiny_llama(len(tokenizer)), tokenizer), datamodule=stories(tokenizer))


def test_with_heal_callback_each_step_of_the_schedule_is_healed_and_merged_in_turn(tokenizer, tmp_path):
    heal = LoRPHealCallback(rank=2, verbose=False)
    module, prune, depths, _ = fit_on_schedule(tokenizer, tmp_path, callbacks=[heal])
    assert depths.depths == [(2, 7), (4, 6), (6, 5)]
    records = healing_records(module.model)
    assert [r["num_steps"] for r in records] == [2, 2, 1]  # steps 2-4, 4-6, and 6-7 at the end of fit
    assert not any("lora_" in name for name, _ in module.model.named_parameters())  # merged: a plain model
    assert all(p.requires_grad for p in module.model.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prune_on="fit_end"), "a schedule prunes at the validation ends of fit it reaches: pass prune_on='validation_end'"),
        (dict(rounds=2), "rounds=2 splits a single amount into rounds; a schedule gives its own rounds"),
    ],
)
def test_a_schedule_with_settings_of_a_single_amount_is_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LoRPPruneCallback(SCHEDULE, **kwargs)


def test_a_schedule_beyond_the_budget_is_refused_at_setup_before_any_batch(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    prune = LoRPPruneCallback([(0, 2), (4, 7)], method="shortgpt")
    with pytest.raises(ValueError, match=r"the schedule \[\(0, 2\), \(4, 7\)\] asks at step 4 for amount=7"):
        make_trainer(tmp_path, callbacks=[prune], max_steps=2).fit(module, datamodule=stories(tokenizer))
    assert prune.stats is None and len(decoder_layers(module.model)) == 8


def test_distillation_from_the_dense_model_across_a_schedule_is_refused_at_setup(tokenizer, tmp_path):
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    callbacks = [LoRPPruneCallback(SCHEDULE, method="shortgpt"), LoRPHealCallback(teacher="dense")]
    with pytest.raises(ValueError, match=r"LoRPHealCallback\(teacher='dense'\) with the schedule"):
        make_trainer(tmp_path, callbacks=callbacks, max_steps=2).fit(module, datamodule=stories(tokenizer))
    assert len(decoder_layers(module.model)) == 8


# --------------------------------------------------------------------------- prune_and_heal, the same without a Trainer


HEALING = dict(text="tinystories", window=32, batch_size=2, num_windows=4)


def test_prune_and_heal_selects_each_round_on_the_model_the_healed_rounds_before_left(tokenizer):
    from lorp_lightning.healing import heal, prune_and_heal
    from lorp_lightning.methods import select_layers
    from lorp_lightning.stats import collect_layer_stats
    from lorp_lightning.surgery import prune_layers

    windows = stories(tokenizer).windows("calibration")
    model = tiny_llama(len(tokenizer))
    plan = prune_and_heal(
        model,
        tokenizer,
        collect_layer_stats(model, windows.split(4), progress=False),
        3,
        rounds=2,
        steps=3,
        windows=windows,
        method="shortgpt",
        **HEALING,
    )

    by_hand = tiny_llama(len(tokenizer))  # round 1: 2 blocks, healed 2 steps; round 2: 1 block, healed 1 step
    first = select_layers(
        collect_layer_stats(by_hand, windows.split(4), progress=False), 2, method="shortgpt", model=by_hand, windows=windows
    )
    heal(prune_layers(by_hand, first), tokenizer, steps=2, **HEALING)
    second = select_layers(
        collect_layer_stats(by_hand, windows.split(4), progress=False),
        1,
        method="shortgpt",
        protect=[0, 5],
        model=by_hand,
        windows=windows,
    )
    heal(prune_layers(by_hand, second), tokenizer, steps=1, seed=1, **HEALING)  # the second round's own order of windows

    kept = [b for b in range(8) if b not in first.pruned]
    assert [r["pruned"] for r in plan.rounds] == [first.pruned, [kept[b] for b in second.pruned]]
    assert pruning_record(model)["pruned_layers"] == plan.pruned and len(decoder_layers(model)) == 5
    assert [(r["num_steps"], r["seed"]) for r in healing_records(model)] == [(2, 0), (1, 1)]
    for name, value in by_hand.state_dict().items():  # healed alike: the same seeds, windows and steps
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6)
    assert plan.cost["statistics_windows"] == 2 * len(windows)


def test_prune_and_heal_refuses_fewer_healing_steps_than_rounds_before_any_work(tokenizer):
    from lorp_lightning.healing import prune_and_heal

    model = tiny_llama(len(tokenizer))
    with pytest.raises(ValueError, match=r"steps=2 heals fewer steps than the 3 rounds: give each round at least one"):
        prune_and_heal(
            model,
            tokenizer,
            None,
            3,
            rounds=3,
            steps=2,
            windows=stories(tokenizer).windows("calibration"),
            method="sleb",
            **HEALING,
        )
    assert len(decoder_layers(model)) == 8
