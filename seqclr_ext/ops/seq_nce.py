"""seq_nce and nce_rows (DESIGN.md §1): schema in csrc/seqclr_ext.cpp, kernels in
csrc/seq_nce/, oracles in reference.py. Here: the fake kernels, the autograd formulas, the
public wrappers, and the instance mapping in plain PyTorch (distributed training pools
with it before gathering, and the reference pools with it)."""
import torch

from ._library import acc_dtype, check_device, or_reference, register

__all__ = ["seq_nce", "nce_rows", "pool_instances", "NORM_EPS", "MAX_WINDOWS"]

NORM_EPS = 1e-8  # instances are divided by max(|z|, NORM_EPS) (csrc/seq_nce/seq_nce.h)
# Windows per image (csrc/seq_nce/seq_nce.h): a bound, so that a mistyped num_windows fails
# at once instead of running an O((N·num_windows)²) loss for hours.
MAX_WINDOWS = 1024


def check_num_windows(mapping, num_windows):
    """The kernels' bound on num_windows (parse_mapping in csrc/seq_nce/seq_nce.cpp), for the
    fake kernel and the reference."""
    if mapping == "window":
        torch._check(1 <= num_windows <= MAX_WINDOWS,
                     lambda: f"num_windows must be in [1, {MAX_WINDOWS}] for mapping='window', "
                             f"got {num_windows}")


def pool_instances(frames, lengths, mapping="window", num_windows=5):
    """seq_nce's instance mapping (DESIGN.md §1 step 1) without a loop over the images:
    packed frames [total, F] -> instances [M, F]. Window j of an image of T frames averages
    frames [floor(j·T/T'), ceil((j+1)·T/T')) (adaptive_avg_pool1d); "all" is T' = 1."""
    if mapping == "frame":
        return frames
    windows = 1 if mapping == "all" else num_windows
    t = lengths.to(frames.device)[:, None]
    j = torch.arange(windows, device=frames.device)
    start = j * t // windows                                   # [N, T']
    end = ((j + 1) * t + windows - 1) // windows
    span = int((end - start).max())
    index = start[..., None] + torch.arange(span, device=frames.device)   # [N, T', span]
    inside = index < end[..., None]
    offsets = (t.cumsum(0) - t)[..., None]
    picked = frames[(offsets + torch.minimum(index, end[..., None] - 1)).flatten()]
    picked = picked.view(*index.shape, -1) * inside[..., None].to(frames.dtype)
    return (picked.sum(2) / (end - start)[..., None].to(frames.dtype)).flatten(0, 1)


def _instances_per_view(frames, lengths, mapping, num_windows):
    if mapping == "frame":
        return frames.shape[0]
    return lengths.shape[0] * (1 if mapping == "all" else num_windows)


def _seq_nce_fake(frames_a, frames_b, lengths, mapping, num_windows, temperature):
    torch._check(frames_a.shape == frames_b.shape,
                 lambda: "frames_a and frames_b must have the same shape")
    check_device("frames_a", frames_a, frames_b=frames_b, lengths=lengths)
    check_num_windows(mapping, num_windows)
    m2 = 2 * _instances_per_view(frames_a, lengths, mapping, num_windows)
    acc = acc_dtype(frames_a.dtype)
    return (frames_a.new_empty(()), frames_a.new_empty((m2, frames_a.shape[1])),
            frames_a.new_empty((m2,), dtype=acc), frames_a.new_empty((m2,), dtype=acc))


def _seq_nce_backward_fake(grad_loss, instances, norms, lse, lengths, mapping, num_windows,
                           temperature, total_frames):
    check_device("instances", instances, grad_loss=grad_loss, norms=norms, lse=lse,
                 lengths=lengths)
    shape = (total_frames, instances.shape[1])
    return instances.new_empty(shape), instances.new_empty(shape)


def _seq_nce_setup(ctx, inputs, output):
    _, _, lengths, mapping, num_windows, temperature = inputs
    _, instances, norms, lse = output
    ctx.mark_non_differentiable(instances, norms, lse)  # saved for the backward only
    ctx.save_for_backward(instances, norms, lse, lengths)
    ctx.args = (mapping, num_windows, temperature, inputs[0].shape[0])


def _seq_nce_backward(ctx, grad_loss, *_unused):
    # The backward op sees the frames only through the saved (non-differentiable)
    # instances: a graph of it would miss their second-order terms, so it is refused.
    if torch.is_grad_enabled():
        raise RuntimeError("double backward is not supported for seq_nce (backward with "
                           "create_graph=True)")
    instances, norms, lse, lengths = ctx.saved_tensors
    grad_a, grad_b = torch.ops.seqclr_ext.seq_nce_backward(
        grad_loss, instances, norms, lse, lengths, *ctx.args)
    return grad_a, grad_b, None, None, None, None


def _nce_rows_fake(rows, cols, positive, exclude, temperature):
    check_device("rows", rows, cols=cols, positive=positive, exclude=exclude)
    n = rows.shape[0]
    return rows.new_empty((n,)), rows.new_empty((n,), dtype=acc_dtype(rows.dtype))


def _nce_rows_backward_fake(grad_loss, rows, cols, positive, exclude, lse, temperature):
    check_device("rows", rows, grad_loss=grad_loss, cols=cols, positive=positive,
                 exclude=exclude, lse=lse)
    return torch.empty_like(rows), torch.empty_like(cols)


def _nce_rows_setup(ctx, inputs, output):
    rows, cols, positive, exclude, temperature = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(rows, cols, positive, exclude, output[1])
    ctx.temperature = temperature


def _nce_rows_backward(ctx, grad_loss, _grad_lse):
    rows, cols, positive, exclude, lse = ctx.saved_tensors
    grad_rows, grad_cols = torch.ops.seqclr_ext.nce_rows_backward(
        grad_loss, rows, cols, positive, exclude, lse, ctx.temperature)
    return grad_rows, grad_cols, None, None, None


register("seq_nce", fake=_seq_nce_fake, backward_fake=_seq_nce_backward_fake,
         backward=_seq_nce_backward, setup_context=_seq_nce_setup)
register("nce_rows", fake=_nce_rows_fake, backward_fake=_nce_rows_backward_fake,
         backward=_nce_rows_backward, setup_context=_nce_rows_setup)


@or_reference
def seq_nce(frames_a, frames_b, lengths, *, mapping="window", num_windows=5, temperature=0.1):
    """SeqCLR's sequence contrastive loss (DESIGN.md §1), fused.

    frames_a, frames_b: [total_frames, F] packed frames of two augmented views (image i is
    rows offsets[i]:offsets[i+1]); lengths: [N] int64 frames per image, on the same device;
    mapping: "all" (one instance per image), "window" (num_windows adaptive-average windows
    per image, 1 <= num_windows <= MAX_WINDOWS) or "frame" (one per frame); temperature:
    τ > 0. Returns the scalar mean NT-Xent loss over the 2M instances of both views;
    gradients flow to both views.
    """
    return torch.ops.seqclr_ext.seq_nce(frames_a, frames_b, lengths, mapping, num_windows,
                                        temperature)[0]


@or_reference
def nce_rows(rows, cols, positive, exclude, *, temperature=0.1):
    """The primitive under seq_nce: per-row NT-Xent of rows [R, F] against cols [C, F].

    positive: [R] int64 column of each row's positive; exclude: [R] int64 column left out
    of each row's denominator (its own copy among the columns), -1 for none. Rows and
    columns are used as given (normalize them first for cosine similarity). Returns the
    per-row losses [R]; distributed training calls it with local rows against the columns
    gathered from every rank.
    """
    return torch.ops.seqclr_ext.nce_rows(rows, cols, positive, exclude, temperature)[0]
