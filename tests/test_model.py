"""The chapter's fully connected net (trainables/model.py): sizes, the book's Sequential, dropout."""

import pytest
import torch
from torch import nn

from trainables.losses import ChapterLoss
from trainables.model import build_model, count_params, param_count


@pytest.mark.parametrize("hidden,expected", [((512,), 1_574_402), ((1024, 512, 128), 3_737_474)])
def test_chapter_nets_have_the_books_parameter_counts(hidden, expected):
    model = build_model(3072, hidden, 2, "tanh")
    assert param_count(model) == expected
    assert count_params(3072, hidden, 2) == expected


def test_chapter_net_matches_the_books_sequential():
    torch.manual_seed(0)
    ours = build_model(3072, [512], 2, "tanh")
    book = nn.Sequential(nn.Linear(3072, 512), nn.Tanh(), nn.Linear(512, 2), nn.LogSoftmax(dim=1))
    book[0].load_state_dict(ours[1].state_dict())
    book[2].load_state_dict(ours[3].state_dict())
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 2, (8,))
    expected = nn.NLLLoss()(book(x.view(8, -1)), y)
    assert torch.equal(ChapterLoss("nll", 2)(ours(x), y), expected)


def test_dropout_is_active_in_train_mode_and_inactive_in_eval_mode():
    torch.manual_seed(0)
    model = build_model(3072, (256, 256), 2, "relu", dropout=0.5)
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x)), "train mode: a new mask each call"
    model.eval()
    assert torch.equal(model(x), model(x))
    hidden = model[:3](x)  # Flatten, Linear, ReLU, then the Dropout below
    model.train()
    dropped = model[3](hidden)
    alive = hidden != 0
    zeroed = ((dropped == 0) & alive).sum().item() / alive.sum().item()
    assert 0.4 < zeroed < 0.6 and torch.allclose(dropped[dropped != 0], 2 * hidden[dropped != 0])


@pytest.mark.parametrize("hidden,expected", [((512,), 1_574_402), ((1024, 512, 128), 3_737_474)])
def test_dropout_leaves_the_chapter_nets_parameter_counts_alone(hidden, expected):
    assert param_count(build_model(3072, hidden, 2, "tanh", dropout=0.3)) == expected == count_params(3072, hidden, 2)


def test_a_net_without_dropout_has_no_dropout_layer():
    assert "Dropout" not in str(build_model(3072, (512,), 2))
    assert "Dropout" in str(build_model(3072, (512,), 2, "tanh", dropout=0.1))
