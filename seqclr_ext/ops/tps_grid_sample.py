"""tps_grid_sample (DESIGN.md §2): schema in csrc/seqclr_ext.cpp, kernels in
csrc/tps_grid_sample/, oracle in reference.py. Here: the fake kernels, the autograd formula,
the public wrapper, and the TPS system in plain PyTorch (the base points initialize the
localization network; the grid matrix is the exported models' warp and the reference's)."""
import torch

from ._library import check_device, or_reference, register

__all__ = ["tps_grid_sample", "tps_base_points", "tps_grid_terms", "tps_grid_matrix"]


def tps_base_points(num_points, *, dtype=torch.float64, device=None):
    """Base fiducial points C [K, 2] (DESIGN.md §2): K/2 along the top edge (y = -1), then
    K/2 along the bottom edge (y = +1), x = linspace(-1, 1, K/2) on both."""
    x = torch.linspace(-1.0, 1.0, num_points // 2, dtype=dtype, device=device)
    top = torch.stack([x, -torch.ones_like(x)], dim=1)
    bottom = torch.stack([x, torch.ones_like(x)], dim=1)
    return torch.cat([top, bottom])


def _tps_kernel(d2):
    """U(r) = r² log r written on d2 = r² as d2·log(d2)/2, with U(0) = 0."""
    positive = d2 > 0
    safe = torch.where(positive, d2, torch.ones_like(d2))
    return torch.where(positive, 0.5 * d2 * torch.log(safe), torch.zeros_like(d2))


def tps_grid_terms(num_points, output_size, *, dtype=torch.float64, device=None):
    """(P̂ [H_out·W_out, K+3], Δ_C⁻¹ [K+3, K+3]) in ``dtype`` (Δ_C inverted in float64).
    P̂ rows [1, x, y, U(|p - c_k|)] for the output pixel centres (2k+1)/W_out - 1,
    row-major (y outer)."""
    h_out, w_out = (int(s) for s in output_size)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"output_size must be positive, got {tuple(output_size)}")
    # Δ_C = [[1, C, U(C, C)], [0, Cᵀ], [0, 1ᵀ]], inverted in float64.
    c = tps_base_points(num_points, dtype=torch.float64, device=device)
    u_cc = _tps_kernel(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    delta = torch.zeros(num_points + 3, num_points + 3, dtype=torch.float64, device=device)
    delta[:num_points, 0] = 1.0
    delta[:num_points, 1:3] = c
    delta[:num_points, 3:] = u_cc
    delta[num_points:num_points + 2, 3:] = c.t()
    delta[num_points + 2, 3:] = 1.0
    inv_delta = torch.linalg.inv(delta).to(dtype)

    ys = (2 * torch.arange(h_out, dtype=dtype, device=device) + 1) / h_out - 1
    xs = (2 * torch.arange(w_out, dtype=dtype, device=device) + 1) / w_out - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    p = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)                 # [n, 2]
    u_pc = _tps_kernel(((p[:, None, :] - c.to(dtype)[None, :, :]) ** 2).sum(-1))  # [n, K]
    p_hat = torch.cat([torch.ones_like(p[:, :1]), p, u_pc], dim=1)            # [n, K+3]
    return p_hat, inv_delta


def tps_grid_matrix(num_points, output_size, *, dtype=torch.float64, device=None):
    """The TPS grid as a linear map of the control points, A = P̂ Δ_C⁻¹[:, :K] of shape
    [H_out·W_out, K]: the source points for C′ [B, K, 2] are A C′ (the last 3 rows of
    [C′; 0] are zero). Computed in float64, returned in ``dtype``."""
    p_hat, inv_delta = tps_grid_terms(num_points, output_size, device=device)
    return (p_hat @ inv_delta[:, :num_points]).to(dtype)


def _check_args(image, control_points, output_size):
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
    check_device("image", image, control_points=control_points)
    torch._check(len(output_size) == 2 and output_size[0] >= 1 and output_size[1] >= 1,
                 lambda: f"output_size must be two positive ints, got {output_size}")


def _fake(image, control_points, output_size):
    _check_args(image, control_points, output_size)
    return image.new_empty((image.shape[0], image.shape[1], *output_size))


def _backward_fake(grad_output, image, control_points, image_requires_grad):
    _check_args(image, control_points, grad_output.shape[2:])
    check_device("image", image, grad_output=grad_output)
    grad_image = image.new_empty(image.shape if image_requires_grad else (0,))
    return grad_image, control_points.new_empty(control_points.shape)


def _setup(ctx, inputs, output):
    image, control_points, _ = inputs
    ctx.save_for_backward(image, control_points)


def _backward(ctx, grad):
    image, control_points = ctx.saved_tensors
    image_grad, cp_grad = ctx.needs_input_grad[:2]
    grad_image, grad_cp = torch.ops.seqclr_ext.tps_grid_sample_backward(
        grad, image, control_points, image_grad)
    return (grad_image if image_grad else None), (grad_cp if cp_grad else None), None


register("tps_grid_sample", fake=_fake, backward_fake=_backward_fake, backward=_backward,
         setup_context=_setup)


@or_reference
def tps_grid_sample(image, control_points, output_size):
    """Thin-plate-spline warp (DESIGN.md §2; deep-text-recognition-benchmark's GridGenerator
    + grid_sample(padding_mode='border', align_corners=True)), fused.

    image: [B, C, H, W]; control_points: C′ [B, K, 2] (x, y in [-1, 1]; K even, >= 4; the
    base points C are ``tps_base_points(K)``); output_size: (H_out, W_out). Returns
    [B, C, H_out, W_out] in image's dtype; gradients flow to both inputs (the control-point
    gradient is deterministic). Non-finite source points sample as grid_sample's do.
    """
    return torch.ops.seqclr_ext.tps_grid_sample(image, control_points, list(output_size))
