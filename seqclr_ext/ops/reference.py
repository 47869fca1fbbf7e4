"""Plain-PyTorch oracles of every operator: short and obviously correct, not fast.

Tests compare the kernels against these, benchmarks race them, and the package runs on
them when SEQCLR_EXT_REFERENCE=1 (machines without the built extension).
"""
import torch
import torch.nn.functional as F

NORM_EPS = 1e-8


def instances(frames, lengths, mapping="window", num_windows=5):
    """Packed frames [total, F] -> instances [M, F] (DESIGN.md §1 step 1)."""
    if mapping == "frame":
        return frames
    windows = 1 if mapping == "all" else num_windows
    pooled = [
        F.adaptive_avg_pool1d(seq.t().unsqueeze(0), windows).squeeze(0).t()
        for seq in torch.split(frames, lengths.tolist())
    ]
    return torch.cat(pooled)


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
    z = torch.cat([instances(frames_a, lengths, mapping, num_windows),
                   instances(frames_b, lengths, mapping, num_windows)])
    z = F.normalize(z, dim=1, eps=NORM_EPS)
    m = z.shape[0] // 2
    logits = (z @ z.t() / temperature).fill_diagonal_(float("-inf"))
    twin = torch.arange(2 * m, device=z.device).roll(m)
    return F.cross_entropy(logits, twin)
