"""The stochastic rounding that merged copies are served with (self_lengthen/serve/worker.py)."""
import torch

from self_lengthen.serve.worker import round_stochastically


def test_each_weight_goes_to_a_neighbouring_bfloat16_and_keeps_its_mean():
    base = torch.tensor([0.05, -0.05, 1.0, -3.0e-3]).bfloat16().float()  # weights a bfloat16 base holds exactly
    step = torch.tensor([2.0 ** -12, 2.0 ** -12, 2.0 ** -7, 2.0 ** -16])  # one bfloat16 step at each of them
    weights = (base + 0.3 * step * torch.sign(base)).repeat(20000, 1)  # a change under half a step: lost to nearest
    assert torch.equal(weights.bfloat16().float()[0], base)
    rounded = round_stochastically(weights, torch.Generator().manual_seed(0)).float()
    assert set(torch.unique(rounded[:, 0]).tolist()) == {base[0].item(), (base[0] + step[0]).item()}
    share_up = ((rounded - base).abs() > 0).float().mean(0)
    assert torch.allclose(share_up, torch.full((4,), 0.3), atol=0.02)  # 30% of a step: up 30% of the time
    assert torch.allclose(rounded.mean(0), weights[0], rtol=0, atol=0.02 * step.max())


def test_a_weight_bfloat16_holds_is_left_as_it_is():
    exact = torch.randn(1000).bfloat16().float()
    assert torch.equal(round_stochastically(exact, torch.Generator().manual_seed(1)).float(), exact)
