import pytest
import torch

from attention_backends.selection import select_cover, select_top


def test_select_top_puts_forced_items_first_within_budget():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.05, 0.05]])
    forced = torch.tensor([False, False, False, True, False])
    keep = select_top(scores, 2, forced)
    assert keep.tolist() == [[False, True, False, True, False]]


def test_select_top_never_selects_masked_items():
    scores = torch.tensor([[1.0, float("-inf"), float("-inf")]])
    assert select_top(scores, 3).tolist() == [[True, False, False]]


def test_select_cover_keeps_fewest_items_reaching_gamma():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert select_cover(scores, 0.8, 0).tolist() == [[True, True, False, False]]
    assert select_cover(scores, 0.81, 0).tolist() == [[True, True, True, False]]
    assert select_cover(scores, 0.5, 3).sum().item() == 3


def test_select_cover_mass_reaches_gamma_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 200, generator=gen) ** 4
    keep = select_cover(scores, 0.9, 1, forced=torch.arange(200) < 3)
    mass = (scores * keep).sum(-1) / scores.sum(-1)
    assert (mass >= 0.9 - 1e-6).all()
    assert keep[:, :3].all()


def test_bad_budgets_raise():
    with pytest.raises(ValueError, match="budget"):
        select_top(torch.ones(1, 3), 0)
    with pytest.raises(ValueError, match="gamma"):
        select_cover(torch.ones(1, 3), 0.0, 1)
