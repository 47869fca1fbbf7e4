"""Public operator API (DESIGN.md "Operator contracts").

The compiled kernels are loaded from ``seqclr_ext._C``; their autograd formulas and fake
(meta) kernels are registered here, so the ops work under autograd, ``opcheck`` and
``torch.compile(fullgraph=True)``. With ``SEQCLR_EXT_REFERENCE=1`` every op runs its
plain-PyTorch reference instead (for machines without the built extension).
``SEQCLR_EXT_LIBRARY=/path/lib.so`` loads the kernels from another build of ``csrc/``
(the CMake sanitizer build does this).
"""
import importlib.util
import os

import torch

from . import reference

USE_REFERENCE = os.environ.get("SEQCLR_EXT_REFERENCE", "0") == "1"

__all__ = ["seq_nce", "nce_rows", "tps_grid_sample", "siman_normalize", "reference",
           "USE_REFERENCE"]


def _load_library():
    path = os.environ.get("SEQCLR_EXT_LIBRARY")
    if not path:
        spec = importlib.util.find_spec("seqclr_ext._C")
        if spec is None or spec.origin is None:
            raise ImportError(
                f"seqclr_ext's compiled kernels (seqclr_ext._C) are not built next to "
                f"{os.path.dirname(os.path.dirname(__file__))}: run `pip install --no-build-isolation -e .` "
                "in the repository (it builds them in place), or set "
                "SEQCLR_EXT_REFERENCE=1 to use the plain-PyTorch references")
        path = spec.origin
    torch.ops.load_library(path)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _instances_per_view(frames, lengths, mapping, num_windows):
    if mapping == "frame":
        return frames.shape[0]
    return lengths.shape[0] * (1 if mapping == "all" else num_windows)


def _register():
    lib = "seqclr_ext::"

    @torch.library.register_fake(lib + "seq_nce")
    def _(frames_a, frames_b, lengths, mapping, num_windows, temperature):
        torch._check(frames_a.shape == frames_b.shape,
                     lambda: "frames_a and frames_b must have the same shape")
        torch._check(lengths.device == frames_a.device,
                     lambda: f"lengths must be on the same device as frames_a "
                             f"({frames_a.device}), got {lengths.device}")
        m2 = 2 * _instances_per_view(frames_a, lengths, mapping, num_windows)
        acc = _acc_dtype(frames_a.dtype)
        return (frames_a.new_empty(()), frames_a.new_empty((m2, frames_a.shape[1])),
                frames_a.new_empty((m2,), dtype=acc), frames_a.new_empty((m2,), dtype=acc))

    @torch.library.register_fake(lib + "seq_nce_backward")
    def _(grad_loss, instances, norms, lse, lengths, mapping, num_windows, temperature,
          total_frames):
        shape = (total_frames, instances.shape[1])
        return instances.new_empty(shape), instances.new_empty(shape)

    @torch.library.register_fake(lib + "nce_rows")
    def _(rows, cols, positive, exclude, temperature):
        n = rows.shape[0]
        return rows.new_empty((n,)), rows.new_empty((n,), dtype=_acc_dtype(rows.dtype))

    @torch.library.register_fake(lib + "nce_rows_backward")
    def _(grad_loss, rows, cols, positive, exclude, lse, temperature):
        return torch.empty_like(rows), torch.empty_like(cols)

    def seq_nce_setup(ctx, inputs, output):
        _, _, lengths, mapping, num_windows, temperature = inputs
        _, instances, norms, lse = output
        ctx.mark_non_differentiable(instances, norms, lse)  # saved for the backward only
        ctx.save_for_backward(instances, norms, lse, lengths)
        ctx.args = (mapping, num_windows, temperature, inputs[0].shape[0])

    def seq_nce_backward(ctx, grad_loss, *_unused):
        instances, norms, lse, lengths = ctx.saved_tensors
        grad_a, grad_b = torch.ops.seqclr_ext.seq_nce_backward(
            grad_loss, instances, norms, lse, lengths, *ctx.args)
        return grad_a, grad_b, None, None, None, None

    torch.library.register_autograd(lib + "seq_nce", seq_nce_backward, setup_context=seq_nce_setup)

    def nce_rows_setup(ctx, inputs, output):
        rows, cols, positive, exclude, temperature = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(rows, cols, positive, exclude, output[1])
        ctx.temperature = temperature

    def nce_rows_backward(ctx, grad_loss, _grad_lse):
        rows, cols, positive, exclude, lse = ctx.saved_tensors
        grad_rows, grad_cols = torch.ops.seqclr_ext.nce_rows_backward(
            grad_loss, rows, cols, positive, exclude, lse, ctx.temperature)
        return grad_rows, grad_cols, None, None, None

    torch.library.register_autograd(lib + "nce_rows", nce_rows_backward,
                                    setup_context=nce_rows_setup)

    def check_tps_args(image, control_points, output_size):
        torch._check(image.dim() == 4, lambda: f"image must be a 4-D [B, C, H, W] tensor, got "
                                               f"shape {tuple(image.shape)}")
        torch._check(control_points.dim() == 3 and control_points.shape[2] == 2,
                     lambda: f"control_points must be a 3-D [B, K, 2] tensor, got shape "
                             f"{tuple(control_points.shape)}")
        torch._check(control_points.shape[0] == image.shape[0],
                     lambda: f"control_points must have image's batch size {image.shape[0]}, "
                             f"got {control_points.shape[0]}")
        torch._check(control_points.dtype == image.dtype,
                     lambda: f"control_points must have image's dtype {image.dtype}, got "
                             f"{control_points.dtype}")
        torch._check(control_points.device == image.device,
                     lambda: f"control_points must be on image's device {image.device}, got "
                             f"{control_points.device}")
        torch._check(len(output_size) == 2 and output_size[0] >= 1 and output_size[1] >= 1,
                     lambda: f"output_size must be two positive ints, got {output_size}")

    @torch.library.register_fake(lib + "tps_grid_sample")
    def _(image, control_points, output_size):
        check_tps_args(image, control_points, output_size)
        return image.new_empty((image.shape[0], image.shape[1], *output_size))

    @torch.library.register_fake(lib + "tps_grid_sample_backward")
    def _(grad_output, image, control_points, image_requires_grad):
        check_tps_args(image, control_points, grad_output.shape[2:])
        grad_image = image.new_empty(image.shape if image_requires_grad else (0,))
        return grad_image, control_points.new_empty(control_points.shape)

    def tps_setup(ctx, inputs, output):
        image, control_points, _ = inputs
        ctx.save_for_backward(image, control_points)

    def tps_backward(ctx, grad):
        image, control_points = ctx.saved_tensors
        image_grad, cp_grad = ctx.needs_input_grad[:2]
        grad_image, grad_cp = torch.ops.seqclr_ext.tps_grid_sample_backward(
            grad, image, control_points, image_grad)
        return (grad_image if image_grad else None), (grad_cp if cp_grad else None), None

    torch.library.register_autograd(lib + "tps_grid_sample", tps_backward,
                                    setup_context=tps_setup)

    def check_siman_args(content, style, kernel_size, eps):
        for name, t in (("content", content), ("style", style)):
            torch._check(t.dim() == 4, lambda: f"{name} must be a 4-D [B, C, H, W] tensor, got "
                                               f"shape {tuple(t.shape)}")
        torch._check(style.shape[:2] == content.shape[:2],
                     lambda: f"style must have content's batch size and channel count "
                             f"{tuple(content.shape[:2])}, got {tuple(style.shape[:2])}")
        torch._check(style.dtype == content.dtype,
                     lambda: f"style must have content's dtype {content.dtype}, got {style.dtype}")
        torch._check(style.device == content.device,
                     lambda: f"style must be on content's device {content.device}, got "
                             f"{style.device}")
        torch._check(kernel_size >= 1 and kernel_size % 2 == 1,
                     lambda: f"kernel_size must be an odd integer >= 1, got {kernel_size}")
        torch._check(kernel_size <= style.shape[2] and kernel_size <= style.shape[3],
                     lambda: f"kernel_size must be at most the style map's height and width, "
                             f"got {kernel_size} for style shape {tuple(style.shape)}")
        torch._check(eps > 0, lambda: f"eps must be a finite number > 0, got {eps}")

    @torch.library.register_fake(lib + "siman_normalize")
    def _(content, style, kernel_size, eps):
        check_siman_args(content, style, kernel_size, eps)
        b, c, h, w = content.shape
        acc = _acc_dtype(content.dtype)
        return (torch.empty_like(content, memory_format=torch.contiguous_format),
                content.new_empty((b, h * w), dtype=acc), content.new_empty((b, 2, c), dtype=acc),
                content.new_empty((b, 2, c), dtype=acc))

    @torch.library.register_fake(lib + "siman_normalize_backward")
    def _(grad_out, content, style, lse, content_stats, style_stats, kernel_size, eps):
        check_siman_args(content, style, kernel_size, eps)
        torch._check(grad_out.shape == content.shape,
                     lambda: f"grad_out must have content's shape {tuple(content.shape)}, got "
                             f"{tuple(grad_out.shape)}")
        return (torch.empty_like(content, memory_format=torch.contiguous_format),
                torch.empty_like(style, memory_format=torch.contiguous_format))

    def siman_setup(ctx, inputs, output):
        content, style, kernel_size, eps = inputs
        _, lse, content_stats, style_stats = output
        ctx.mark_non_differentiable(lse, content_stats, style_stats)  # for the backward only
        ctx.save_for_backward(content, style, lse, content_stats, style_stats)
        ctx.args = (kernel_size, eps)

    def siman_backward(ctx, grad, *_unused):
        grad_content, grad_style = torch.ops.seqclr_ext.siman_normalize_backward(
            grad, *ctx.saved_tensors, *ctx.args)
        content_grad, style_grad = ctx.needs_input_grad[:2]
        return (grad_content if content_grad else None), (grad_style if style_grad else None), \
            None, None

    torch.library.register_autograd(lib + "siman_normalize", siman_backward,
                                    setup_context=siman_setup)


if not USE_REFERENCE:
    _load_library()
    _register()


def seq_nce(frames_a, frames_b, lengths, *, mapping="window", num_windows=5, temperature=0.1):
    """SeqCLR's sequence contrastive loss (DESIGN.md §1), fused.

    frames_a, frames_b: [total_frames, F] packed frames of two augmented views (image i is
    rows offsets[i]:offsets[i+1]); lengths: [N] int64 frames per image, on the same device;
    mapping: "all" (one instance per image), "window" (num_windows adaptive-average windows
    per image) or "frame" (one per frame); temperature: τ > 0. Returns the scalar mean
    NT-Xent loss over the 2M instances of both views; gradients flow to both views.
    """
    if USE_REFERENCE:
        return reference.seq_nce(frames_a, frames_b, lengths, mapping=mapping,
                                 num_windows=num_windows, temperature=temperature)
    return torch.ops.seqclr_ext.seq_nce(frames_a, frames_b, lengths, mapping, num_windows,
                                        temperature)[0]


def nce_rows(rows, cols, positive, exclude, *, temperature=0.1):
    """The primitive under seq_nce: per-row NT-Xent of rows [R, F] against cols [C, F].

    positive: [R] int64 column of each row's positive; exclude: [R] int64 column left out
    of each row's denominator (its own copy among the columns), -1 for none. Rows and
    columns are used as given (normalize them first for cosine similarity). Returns the
    per-row losses [R]; distributed training calls it with local rows against the columns
    gathered from every rank.
    """
    if USE_REFERENCE:
        return reference.nce_rows(rows, cols, positive, exclude, temperature=temperature)
    return torch.ops.seqclr_ext.nce_rows(rows, cols, positive, exclude, temperature)[0]


def tps_grid_sample(image, control_points, output_size):
    """Thin-plate-spline warp (DESIGN.md §2; deep-text-recognition-benchmark's GridGenerator
    + grid_sample(padding_mode='border', align_corners=True)), fused.

    image: [B, C, H, W]; control_points: C′ [B, K, 2] (x, y in [-1, 1]; K even, >= 4; the
    base points C are ``reference.tps_base_points(K)``); output_size: (H_out, W_out).
    Returns [B, C, H_out, W_out] in image's dtype; gradients flow to both inputs (the
    control-point gradient is deterministic).
    """
    if USE_REFERENCE:
        return reference.tps_grid_sample(image, control_points, output_size)
    return torch.ops.seqclr_ext.tps_grid_sample(image, control_points, list(output_size))



def siman_normalize(content, style, *, kernel_size=3, eps=1e-5):
    """SimAN's similarity-aware normalization (DESIGN.md §3, SimAN §3.2), fused.

    content: [B, C, H, W] features of the augmented patch; style: [B, C, H_s, W_s] features
    of the neighbouring patch (same B, C, dtype and device); kernel_size: the odd k of the
    k×k neighbourhood of the local style statistics (eq. 1; k <= H_s, W_s), counted over
    the positions inside the map; eps > 0: added to every variance. Returns
    σ̂ ⊙ IN(content) + μ̂ [B, C, H, W] in content's dtype, where [μ̂, σ̂] are the local style
    statistics averaged with softmax(IN(content)ᵀ IN(style) / √C) over the style positions;
    gradients flow to both inputs.
    """
    if USE_REFERENCE:
        return reference.siman_normalize(content, style, kernel_size=kernel_size, eps=eps)
    return torch.ops.seqclr_ext.siman_normalize(content, style, kernel_size, eps)[0]
