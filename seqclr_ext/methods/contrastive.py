"""What SeqCLR and SimCLR share: the NT-Xent loss, on one process (``seq_nce``) or with
the negatives of every rank of a distributed run (``nce_rows`` on gathered instances), and
the training task of two augmented views."""
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..ops import nce_rows, seq_nce
from ..ops.seq_nce import NORM_EPS, pool_instances
from ..task import Task

__all__ = ["contrastive_loss", "diagnostics", "two_view_task"]


class _AllGather(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order (row counts may differ). Every rank's
    loss depends on every rank's rows, so the backward sums the gradient over the ranks
    and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x, counts):
        padded = x.new_zeros(max(counts), x.shape[1])
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.counts = counts
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        start = sum(ctx.counts[: dist.get_rank()])
        return grad[start: start + ctx.counts[dist.get_rank()]], None


def contrastive_loss(frames_a, frames_b, lengths, *, mapping="window", num_windows=5,
                     temperature=0.1):
    """``seq_nce(frames_a, frames_b, lengths, ...)`` of this process's batch; under a
    process group of W > 1 ranks, the loss of the global batch (every rank's images, in
    rank order): this rank's 2M_r rows against the instances of all ranks.

    Distributed, it returns W · (sum of this rank's row losses) / (2M global rows): the
    mean over the ranks is the global loss, and the gradient, averaged over the ranks by
    DistributedDataParallel, is the global loss's gradient (the gradient of one rank's
    inputs is W times theirs in the global loss)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return seq_nce(frames_a, frames_b, lengths, mapping=mapping, num_windows=num_windows,
                       temperature=temperature)
    # float32 (float64 kept) whatever autocast produced, as seq_nce accumulates.
    acc = torch.float64 if frames_a.dtype == torch.float64 else torch.float32
    z = torch.cat([pool_instances(f.to(acc), lengths, mapping, num_windows)
                   for f in (frames_a, frames_b)])
    z = F.normalize(z, dim=1, eps=NORM_EPS)
    count = torch.tensor([z.shape[0]], device=z.device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    columns = _AllGather.apply(z, counts)
    # Columns: [Z_a; Z_b] of rank 0, then of rank 1, ...; this rank's start at `first`.
    m = z.shape[0] // 2
    first = sum(counts[: dist.get_rank()])
    own = first + torch.arange(2 * m, device=z.device)
    twin = own.roll(m)
    losses = nce_rows(z, columns, twin, own, temperature=temperature)
    return losses.sum() * (len(counts) / sum(counts))


# Retrieval is scored for at most this many rows: the full similarity matrix of a paper-size
# frame-mapping batch (2M ~ 50k rows) would not fit in memory.
RETRIEVAL_QUERIES = 256


@torch.no_grad()
def diagnostics(representation, lengths, instances_a, instances_b) -> dict[str, torch.Tensor]:
    """What a contrastive step learned, beside its loss (logged with it; this process's
    batch only). ``representation``: packed frames of R [sum T_i, D] of view a (before the
    head), ``lengths`` [N]; ``instances_*``: the two views' instances [M, F] (after the head
    and the instance mapping).

    - ``chance_loss``: log(2M − 1), the loss of instances that carry no information;
    - ``retrieval``: share of (up to RETRIEVAL_QUERIES evenly spaced) instances whose most
      similar other instance is their twin in the other view;
    - ``instance_std``: per-dimension std of the L2-normalized instances × sqrt(F) — about 1
      when they spread over the sphere, → 0 when they collapse to a point;
    - ``rep_rank``: effective rank of R, exp(entropy of its normalized covariance spectrum)
      (Roy & Vetterli 2007): low = dimensional collapse, the few directions left cannot
      tell characters apart;
    - ``rep_within``: share of R's variance along each image's frames (the rest is between
      images): what a CTC decoder reads per frame; it falls when R encodes only which image
      it is."""
    z = F.normalize(torch.cat([instances_a, instances_b]).float(), dim=1, eps=NORM_EPS)
    rows, m = z.shape[0], instances_a.shape[0]
    queries = torch.linspace(0, rows - 1, min(rows, RETRIEVAL_QUERIES),
                             device=z.device).round().long()
    similarity = z[queries] @ z.T
    similarity[torch.arange(len(queries), device=z.device), queries] = -float("inf")
    retrieval = (similarity.argmax(1) == (queries + m) % rows).float().mean()
    r = representation.float()
    centered = r - r.mean(0)
    spectrum = torch.linalg.eigvalsh(centered.T @ centered).clamp_min(0)
    p = spectrum / spectrum.sum().clamp_min(1e-12)
    rank = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())
    lengths = lengths.to(r.device)
    image = torch.repeat_interleave(torch.arange(len(lengths), device=r.device), lengths)
    means = torch.zeros(len(lengths), r.shape[1], device=r.device).index_add_(0, image, r)
    means = means / lengths.clamp_min(1)[:, None]
    within = (r - means[image]).pow(2).sum() / centered.pow(2).sum().clamp_min(1e-12)
    return {"chance_loss": torch.tensor(math.log(max(rows - 1, 1))), "retrieval": retrieval,
            "instance_std": z.std(0).mean() * math.sqrt(z.shape[1]), "rep_rank": rank,
            "rep_within": within}


def two_view_task(method, augment, batches, step_generator, device, log_every) -> Task:
    """The pre-training task of ``method(view_a, view_b, widths, diagnose) -> (loss,
    diagnostics or {})``: each step's images augmented twice, drawn from
    ``step_generator(step)``; the Trainer's optimizer; the diagnostics computed only on the
    steps the Trainer logs (every ``log_every``), beside the loss."""

    def loss(model, item):
        step, batch = item
        batch = batch.to(device)
        generator = step_generator(step)
        views = [augment(batch.images, batch.widths, generator) for _ in range(2)]
        return model(*views, batch.widths, diagnose=(step + 1) % log_every == 0)

    return Task(method, batches, loss, best_metric="none", checkpoint_kind="pretrain")
