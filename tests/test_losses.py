"""The chapter's four losses (trainables/losses.py): values, gradients, predictions and probabilities."""

import pytest
import torch
from torch import nn

from trainables.config import ConfigError
from trainables.losses import ChapterLoss, output_units
from trainables.model import build_model


def _loss_and_grads(loss_name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(3072, [64], output_units(loss_name, 2), "tanh")
    x = torch.randn(32, 3, 32, 32)
    y = torch.randint(0, 2, (32,))
    loss = ChapterLoss(loss_name, 2)(model(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_nll_and_ce_give_identical_losses_and_gradients():
    nll_loss, nll_grads = _loss_and_grads("nll")
    ce_loss, ce_grads = _loss_and_grads("ce")
    torch.testing.assert_close(nll_loss, ce_loss, rtol=0, atol=1e-7)
    for a, b in zip(nll_grads, ce_grads, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_mse_compares_softmax_with_one_hot():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)
    expected = ((p - torch.tensor([[1.0, 0.0], [1.0, 0.0]])) ** 2).mean()
    torch.testing.assert_close(ChapterLoss("mse", 2)(logits, y), expected)


def test_bce_uses_one_output_and_thresholds_at_half():
    assert output_units("bce", 2) == 1
    loss = ChapterLoss("bce", 2)
    logits = torch.tensor([[-0.1], [0.1], [3.0]])
    assert loss.predict(logits).tolist() == [0, 1, 1]
    torch.testing.assert_close(
        loss(logits, torch.tensor([0, 1, 1])), nn.BCEWithLogitsLoss()(logits[:, 0], torch.tensor([0.0, 1.0, 1.0]))
    )
    torch.testing.assert_close(loss.probabilities(logits).sum(1), torch.ones(3))


def test_bce_needs_two_classes():
    with pytest.raises(ConfigError, match="bce"):
        output_units("bce", 3)


def test_a_bce_loss_for_three_classes_is_refused_when_built():
    with pytest.raises(ConfigError, match="bce needs exactly 2 classes"):
        ChapterLoss("bce", 3)


def test_a_bce_logit_of_exactly_zero_predicts_the_first_class():
    assert ChapterLoss("bce", 2).predict(torch.tensor([[0.0], [-0.0], [1e-6]])).tolist() == [0, 0, 1]


@pytest.mark.parametrize("name", ["nll", "ce", "mse"])
def test_multi_output_losses_predict_the_argmax_and_give_softmax_probabilities_per_row(name):
    loss = ChapterLoss(name, 3)
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.2, 0.3], [-1.0, -2.0, -0.5]])
    assert loss.predict(logits).tolist() == [1, 0, 2, 2]
    probs = loss.probabilities(logits)
    torch.testing.assert_close(probs, torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True))


def test_bce_probabilities_are_one_minus_p_and_p_of_the_logit_s_sigmoid():
    logits = torch.tensor([[-2.0], [0.0], [1.5]])
    p1 = 1 / (1 + torch.exp(-logits[:, 0]))
    torch.testing.assert_close(ChapterLoss("bce", 2).probabilities(logits), torch.stack([1 - p1, p1], dim=1))


@pytest.mark.parametrize("loss_name", ["nll", "ce", "mse", "bce"])
def test_each_member_s_loss_is_the_loss_of_that_member_s_logits_alone(loss_name):
    """per_member (a population of K nets, one batch): member k's entry is forward on its own logits."""
    torch.manual_seed(0)
    loss = ChapterLoss(loss_name, 2)
    logits = torch.randn(3, 8, output_units(loss_name, 2))
    labels = torch.randint(0, 2, (8,))
    want = torch.stack([loss(logits[k], labels) for k in range(3)])
    assert torch.allclose(loss.per_member(logits, labels), want, rtol=1e-6, atol=1e-7)
