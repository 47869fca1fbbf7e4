"""Plain-PyTorch oracles of every operator: short and obviously correct, not fast.

Tests compare the kernels against these, benchmarks race them, and the package runs on
them when SEQCLR_EXT_REFERENCE=1 (machines without the built extension).
"""
import torch
import torch.nn.functional as F

from .seq_nce import NORM_EPS, check_num_windows, pool_instances
from .tps_grid_sample import tps_grid_terms


def nce_rows(rows, cols, positive, exclude, *, temperature=0.1):
    """Per-row loss -log softmax(rows·colsᵀ/τ)[r, positive[r]], column exclude[r] (≥ 0)
    left out of row r's denominator."""
    logits = rows @ cols.t() / temperature
    r = torch.arange(rows.shape[0], device=rows.device)
    has_excluded = exclude >= 0
    logits = logits.index_put((r[has_excluded], exclude[has_excluded]),
                              torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device))
    return F.cross_entropy(logits, positive, reduction="none")


def seq_nce(frames_a, frames_b, lengths, *, mapping="window", num_windows=5, temperature=0.1):
    """SeqCLR loss (eq. 1): mean NT-Xent over the 2M rows of [Z_a; Z_b]."""
    check_num_windows(mapping, num_windows)
    z = torch.cat([pool_instances(frames_a, lengths, mapping, num_windows),
                   pool_instances(frames_b, lengths, mapping, num_windows)])
    z = F.normalize(z, dim=1, eps=NORM_EPS)
    m = z.shape[0] // 2
    logits = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
    twin = torch.arange(2 * m, device=z.device).roll(m)
    return F.cross_entropy(logits, twin)


def tps_grid_sample(image, control_points, output_size):
    """Thin-plate-spline warp (DESIGN.md §2; deep-text-recognition-benchmark's GridGenerator).

    image [B, C, H, W]; control_points C′ [B, K, 2] (x, y in [-1, 1]); output_size
    (H_out, W_out). Output pixel p (at its pixel centre, (2k+1)/W_out - 1) samples the image
    at P̂(p) T with T = Δ_C⁻¹ [C′; 0], bilinearly, border padding, align_corners=True.
    Δ_C⁻¹ is computed in float64; the rest runs in float32 (float64 for float64 inputs)
    and the result is cast back to the image's dtype.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}")
    if control_points.dim() != 3 or control_points.shape[2] != 2:
        raise ValueError(
            f"control_points must be [B, K, 2], got shape {tuple(control_points.shape)}")
    if control_points.shape[0] != image.shape[0]:
        raise ValueError(f"control_points batch {control_points.shape[0]} != image batch "
                         f"{image.shape[0]}")
    num_points = control_points.shape[1]
    if num_points < 4 or num_points % 2:
        raise ValueError(
            f"control_points must hold an even number K >= 4 of points, got K={num_points}")
    h_out, w_out = (int(s) for s in output_size)
    acc = torch.float64 if image.dtype == torch.float64 else torch.float32
    p_hat, inv_delta = tps_grid_terms(num_points, (h_out, w_out), dtype=acc,
                                      device=image.device)
    cp = control_points.to(acc)
    rhs = torch.cat([cp, cp.new_zeros(cp.shape[0], 3, 2)], dim=1)            # [B, K+3, 2]
    t = torch.matmul(inv_delta, rhs)                                          # [B, K+3, 2]
    grid = torch.matmul(p_hat, t).view(-1, h_out, w_out, 2)                   # (x, y) source points
    out = F.grid_sample(image.to(acc), grid, mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out.to(image.dtype)


def _instance_norm(x, eps):
    """Per-(image, channel) normalization over space with the biased variance."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def siman_local_stats(style, kernel_size=3, eps=1e-5):
    """SimAN eq. 1: mean μ and deviation σ = sqrt(var + eps) of ``style`` [B, C, Hs, Ws]
    over the k×k neighbourhood of every position, counting only positions inside the map.
    Returns (μ, σ), each [B, C, Hs·Ws]."""
    b, c, hs, ws = style.shape
    pad = kernel_size // 2
    inside = F.unfold(style.new_ones(1, 1, hs, ws), kernel_size, padding=pad)   # [1, k², L]
    patches = F.unfold(style, kernel_size, padding=pad).view(b, c, kernel_size ** 2, hs * ws)
    count = inside.sum(1)                                                      # [1, L]
    mu = (patches * inside).sum(2) / count
    var = ((patches - mu.unsqueeze(2)) ** 2 * inside).sum(2) / count
    return mu, torch.sqrt(var + eps)


def siman_normalize(content, style, *, kernel_size=3, eps=1e-5):
    """Similarity-aware normalization (DESIGN.md §3, SimAN §3.2): normalize content [B, C,
    H, W], then give each content position the local style statistics of the style
    positions it resembles: out = σ̂ ⊙ IN(c) + μ̂ with [μ̂, σ̂] = softmax(IN(c)ᵀ IN(s) / √C)
    · [μ, σ]. Computed in float32 (float64 for float64 inputs), cast back."""
    acc = torch.float64 if content.dtype == torch.float64 else torch.float32
    c, s = content.to(acc), style.to(acc)
    b, ch, h, w = c.shape
    c_hat, s_hat = _instance_norm(c, eps), _instance_norm(s, eps)
    mu, sigma = siman_local_stats(s, kernel_size, eps)                          # [B, C, L]
    scores = c_hat.flatten(2).transpose(1, 2) @ s_hat.flatten(2) / ch ** 0.5    # [B, HW, L]
    attn = torch.softmax(scores, dim=-1)
    mu_hat = (attn @ mu.transpose(1, 2)).transpose(1, 2).view(b, ch, h, w)
    sigma_hat = (attn @ sigma.transpose(1, 2)).transpose(1, 2).view(b, ch, h, w)
    return (sigma_hat * c_hat + mu_hat).to(content.dtype)
