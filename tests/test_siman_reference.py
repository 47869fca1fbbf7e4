"""The plain-PyTorch oracle of siman_normalize (DESIGN.md §3) against hand-computed cases;
the fused kernel (not written yet) will be tested against it."""
import torch

from seqclr_ext.ops import reference as R


def test_local_stats_follow_eq1_inside_and_count_only_existing_positions():
    s = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    mu, sigma = R.siman_local_stats(s, 3, eps=0.0)
    patch = s[1, 2, 0:3, 2:5]                       # full 3x3 around (1, 3)
    torch.testing.assert_close(mu[1, 2, 1 * 6 + 3], patch.mean())
    # eq. 1: (1/3) sqrt(sum over the 3x3 of (s - mu)^2)
    torch.testing.assert_close(sigma[1, 2, 1 * 6 + 3],
                               ((patch - patch.mean()) ** 2).sum().sqrt() / 3)
    corner = s[0, 0, 0:2, 0:2]                      # only 4 positions exist at (0, 0)
    torch.testing.assert_close(mu[0, 0, 0], corner.mean())
    torch.testing.assert_close(sigma[0, 0, 0], corner.var(unbiased=False).sqrt())


def test_single_style_position_gives_its_statistics_to_every_content_position():
    c = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    s = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    out = R.siman_normalize(c, s, kernel_size=1, eps=1e-5)
    var = c.var((2, 3), unbiased=False, keepdim=True)
    c_hat = (c - c.mean((2, 3), keepdim=True)) / torch.sqrt(var + 1e-5)
    # softmax over one position is 1; mu = s, sigma = sqrt(0 + eps)
    torch.testing.assert_close(out, 1e-5 ** 0.5 * c_hat + s)


def test_reference_gradients_are_finite_and_correct():
    c = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: R.siman_normalize(a, b, kernel_size=3), (c, s))
