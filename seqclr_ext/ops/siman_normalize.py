"""siman_normalize (DESIGN.md §3): schema in csrc/seqclr_ext.cpp, kernels in
csrc/siman_normalize/, oracle in reference.py. Here: the fake kernels, the autograd formula
and the public wrapper."""
import torch

from ._library import acc_dtype, check_device, or_reference, register

__all__ = ["siman_normalize"]


def _check_args(content, style, kernel_size, eps):
    for name, t in (("content", content), ("style", style)):
        torch._check(t.dim() == 4, lambda: f"{name} must be a 4-D [B, C, H, W] tensor, got "
                                           f"shape {tuple(t.shape)}")
    torch._check(style.shape[:2] == content.shape[:2],
                 lambda: f"style must have content's batch size and channel count "
                         f"{tuple(content.shape[:2])}, got {tuple(style.shape[:2])}")
    torch._check(style.dtype == content.dtype,
                 lambda: f"style must have content's dtype {content.dtype}, got {style.dtype}")
    check_device("content", content, style=style)
    torch._check(kernel_size >= 1 and kernel_size % 2 == 1,
                 lambda: f"kernel_size must be an odd integer >= 1, got {kernel_size}")
    torch._check(kernel_size <= style.shape[2] and kernel_size <= style.shape[3],
                 lambda: f"kernel_size must be at most the style map's height and width, "
                         f"got {kernel_size} for style shape {tuple(style.shape)}")
    torch._check(eps > 0, lambda: f"eps must be a finite number > 0, got {eps}")


def _fake(content, style, kernel_size, eps):
    _check_args(content, style, kernel_size, eps)
    b, c, h, w = content.shape
    acc = acc_dtype(content.dtype)
    return (torch.empty_like(content, memory_format=torch.contiguous_format),
            content.new_empty((b, h * w), dtype=acc), content.new_empty((b, 2, c), dtype=acc),
            content.new_empty((b, 2, c), dtype=acc))


def _backward_fake(grad_out, content, style, lse, content_stats, style_stats, kernel_size, eps):
    _check_args(content, style, kernel_size, eps)
    torch._check(grad_out.shape == content.shape,
                 lambda: f"grad_out must have content's shape {tuple(content.shape)}, got "
                         f"{tuple(grad_out.shape)}")
    check_device("content", content, grad_out=grad_out, lse=lse, content_stats=content_stats,
                 style_stats=style_stats)
    return (torch.empty_like(content, memory_format=torch.contiguous_format),
            torch.empty_like(style, memory_format=torch.contiguous_format))


def _setup(ctx, inputs, output):
    content, style, kernel_size, eps = inputs
    _, lse, content_stats, style_stats = output
    ctx.mark_non_differentiable(lse, content_stats, style_stats)  # for the backward only
    ctx.save_for_backward(content, style, lse, content_stats, style_stats)
    ctx.args = (kernel_size, eps)


def _backward(ctx, grad, *_unused):
    grad_content, grad_style = torch.ops.seqclr_ext.siman_normalize_backward(
        grad, *ctx.saved_tensors, *ctx.args)
    content_grad, style_grad = ctx.needs_input_grad[:2]
    return (grad_content if content_grad else None), (grad_style if style_grad else None), \
        None, None


register("siman_normalize", fake=_fake, backward_fake=_backward_fake, backward=_backward,
         setup_context=_setup)


@or_reference
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
    return torch.ops.seqclr_ext.siman_normalize(content, style, kernel_size, eps)[0]
