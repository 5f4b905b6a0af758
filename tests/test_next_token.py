"""Specification of the next-token loss, the one rule that scores a causal LM's logits against its text."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorp_lightning.evaluation import perplexity
from lorp_lightning.next_token import IGNORE_INDEX, causal_lm_labels, next_token_loss, next_token_pairs
from lorp_lightning.search import calibration_loss


def test_the_logits_at_t_are_scored_against_the_token_at_t_plus_1():
    # vocabulary of 3; logits that put log-probability log(1/2) on the right token at every scored position
    half = math.log(2.0)
    logits = torch.tensor([[[half, 0.0, 0.0], [0.0, half, 0.0], [9.0, 9.0, 9.0]]])  # the last position predicts nothing
    labels = torch.tensor([[2, 0, 1]])
    # position 0 predicts labels[1] = 0: p = 2/4; position 1 predicts labels[2] = 1: p = 2/4
    assert next_token_loss(logits, labels).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_padding_is_not_scored_and_a_padded_window_scores_as_its_unpadded_part():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[1, 4, 2, 6, 3]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    labels = causal_lm_labels(ids, mask)
    assert labels.tolist() == [[1, 4, 2, IGNORE_INDEX, IGNORE_INDEX]]
    assert torch.equal(causal_lm_labels(ids), ids)
    torch.testing.assert_close(next_token_loss(logits, labels), next_token_loss(logits[:, :3], ids[:, :3]))


def test_logits_of_the_last_positions_score_the_last_tokens():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 8, 11), torch.randint(0, 11, (2, 8))
    predictions, targets = next_token_pairs(logits[:, -3:], ids)  # logits_to_keep=3: positions 5, 6, 7
    assert torch.equal(predictions, logits[:, 5:7].float()) and torch.equal(targets, ids[:, 6:])
    assert predictions.dtype == torch.float32


def test_per_window_gives_each_windows_own_mean():
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 6, 5, dtype=torch.bfloat16), torch.randint(0, 5, (3, 6))
    per_window = next_token_loss(logits, ids, per_window=True)
    assert per_window.shape == (3,) and per_window.dtype == torch.float32
    for i in range(3):
        assert per_window[i].item() == next_token_loss(logits[i : i + 1], ids[i : i + 1]).item()
    torch.testing.assert_close(per_window.mean(), next_token_loss(logits, ids))


def test_it_is_hugging_faces_causal_lm_loss_and_the_log_of_the_perplexity():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, labels=causal_lm_labels(ids, mask))
    torch.testing.assert_close(next_token_loss(output.logits, causal_lm_labels(ids, mask)), output.loss)
    # the tools built on the rule agree with it: the calibration loss is the mean of the windows' own losses
    with torch.no_grad():
        windows = [next_token_loss(model(input_ids=ids[i : i + 1]).logits, ids[i : i + 1]).item() for i in range(2)]
    assert calibration_loss(model, ids) == pytest.approx(sum(windows) / 2, rel=1e-6)
    with torch.no_grad():
        full = next_token_loss(model(input_ids=ids).logits, ids)
    assert math.log(perplexity(model, ids, batch_size=2)) == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape"), [((2, 5), (2, 5)), ((2, 6, 3), (2, 5)), ((2, 1, 3), (2, 5)), ((1, 5, 3), (2, 5))]
)
def test_logits_that_do_not_fit_the_labels_are_refused_with_both_shapes(logits_shape, labels_shape):
    with pytest.raises(ValueError, match=r"logits must be \(batch, L, vocabulary\) for the last L of the \(batch, T\) labels"):
        next_token_pairs(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))
