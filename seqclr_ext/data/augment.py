"""Sequence-preserving augmentations of SeqCLR (Appendix B), batched on the images' device.

Images are RecognitionCollate batches: float [B, C, H, W] in [-1, 1] ((x/255 − 0.5)/0.5),
optionally right-padded, with ``widths`` [B] valid columns. Every image draws its own
parameters from ``generator`` (the global RNG when None), so two calls give two independent
views, and a generator seeded from (seed, step) gives the same views again on resume.

Appendix B's imgaug pipeline is ``SomeOf((1, 5), [...], random_order=True)`` over seven
operations; here each image draws a subset of 1–5 of them, and the chosen geometric ones
(vertical crop, horizontal crop, perspective, piecewise-affine-like local warp) are composed
into one sampling grid applied to the valid region before the chosen photometric ones
(linear contrast, Gaussian blur, sharpen) — one resampling instead of several. Nothing moves
text across the width by more than the 2 % horizontal crop and the small local warps, and
nothing flips: the frames of the two views stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SeqCLRAugment", "SimCLRAugment", "SimANAugment", "make_augment"]

OPERATIONS = ("contrast", "blur", "vertical_crop", "horizontal_crop", "sharpen",
              "local_warp", "perspective")


def _uniform(lo, hi, n, generator, device):
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _gaussian_blur(images, sigma):
    """Per-image Gaussian blur (standard deviation sigma [B], pixels), separable, edges
    replicated."""
    b, c, h, w = images.shape
    radius = int(torch.ceil(3 * sigma.max()).item())
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B·C, k]
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"),
                 kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"),
                 kernel[:, None, :, None], groups=b * c)
    return x.view(b, c, h, w)


def _sharpen(images, alpha, lightness):
    """imgaug's Sharpen: convolve with (1 − α)·identity
    + α·[[-1,-1,-1],[-1,8+L,-1],[-1,-1,-1]], in [0, 255] pixel units."""
    b, c, h, w = images.shape
    effect = -torch.ones(b, 3, 3, device=images.device, dtype=images.dtype)
    effect[:, 1, 1] = 8 + lightness
    identity = torch.zeros_like(effect)
    identity[:, 1, 1] = 1
    kernel = (1 - alpha)[:, None, None] * identity + alpha[:, None, None] * effect
    pixels = (images + 1) * 127.5
    x = F.conv2d(F.pad(pixels.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="replicate"),
                 kernel.repeat_interleave(c, 0)[:, None], groups=b * c)
    return x.view(b, c, h, w) / 127.5 - 1


def _homography(src, dst):
    """[B, 3, 3] maps taking the 4 points src [B, 4, 2] to dst [B, 4, 2] (projective)."""
    b = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)                           # [B, 8, 8]
    h = torch.linalg.solve(a, torch.cat([u, v], 1))               # [B, 8]
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype, device=h.device)], 1).view(b, 3, 3)


@dataclass
class SeqCLRAugment:
    """SeqCLR Appendix B; defaults are the appendix's ranges (fractions of the image size)."""
    min_ops: int = 1
    max_ops: int = 5
    contrast: tuple = (0.5, 1.0)          # α of 127 + α(v − 127)
    blur_sigma: tuple = (0.5, 1.5)        # pixels (the pseudo-code's range)
    vertical_crop: float = 0.4            # total fraction cut from top + bottom
    horizontal_crop: float = 0.02         # total fraction cut from left + right
    sharpen_alpha: tuple = (0.0, 0.5)
    sharpen_lightness: tuple = (0.0, 0.5)
    local_warp: tuple = (0.02, 0.03)      # displacement of each grid point
    local_warp_cells: int = 4             # grid points per image height (and per H along W)
    perspective: tuple = (0.01, 0.02)     # std of the corner displacements

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops <= len(OPERATIONS):
            raise ValueError(f"need 1 <= min_ops <= max_ops <= {len(OPERATIONS)}, got "
                             f"min_ops={self.min_ops}, max_ops={self.max_ops}")

    def choose(self, batch, generator=None, device=None):
        """[B, 7] bool: the operations of each image (a uniform subset of min..max_ops)."""
        count = torch.randint(self.min_ops, self.max_ops + 1, (batch,), generator=generator,
                              device=device)
        rank = torch.rand(batch, len(OPERATIONS), generator=generator, device=device)
        return rank.argsort(1).argsort(1) < count[:, None]

    def __call__(self, images, widths=None, generator=None):
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        b, _, h, w = images.shape
        dev, dt = images.device, images.dtype
        use = dict(zip(OPERATIONS, self.choose(b, generator, dev).t()))
        u = lambda lo_hi: _uniform(*lo_hi, b, generator, dev).to(dt)  # noqa: E731

        # Output pixel -> source point, in normalized coordinates of the valid region.
        ys = torch.linspace(-1, 1, h, device=dev, dtype=dt)
        xs = torch.linspace(-1, 1, w, device=dev, dtype=dt)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], -1).expand(b, h, w, 2).clone()
        corners = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], device=dev, dtype=dt)
        corners = corners.expand(b, 4, 2)
        spread = 2 * u(self.perspective) * use["perspective"]          # normalized units
        moved = corners + spread[:, None, None] \
            * torch.randn(b, 4, 2, generator=generator, device=dev).to(dt)
        hom = _homography(corners, moved)
        pts = torch.cat([grid, torch.ones_like(grid[..., :1])], -1).view(b, -1, 3)
        pts = pts @ hom.transpose(1, 2)
        grid = (pts[..., :2] / pts[..., 2:]).view(b, h, w, 2)
        # Local warp: smooth random displacements of a coarse grid of points.
        cells_h = self.local_warp_cells
        cells_w = max(2, round(cells_h * w / h))
        angle = 2 * torch.pi * torch.rand(b, cells_h, cells_w, generator=generator, device=dev)
        radius = _uniform(*self.local_warp, b * cells_h * cells_w, generator, dev)
        shift = torch.stack([angle.cos(), angle.sin()], 1) * radius.view(b, 1, cells_h, cells_w)
        shift = F.interpolate(shift.to(dt), size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + 2 * use["local_warp"][:, None, None, None] * shift.permute(0, 2, 3, 1)
        # Crops (then resized back): [lo, hi] of the source range per axis.
        def crop(total):
            cut = u((0.0, total))
            first = cut * torch.rand(b, generator=generator, device=dev).to(dt)
            return -1 + 2 * first, 1 - 2 * (cut - first)
        top, bottom = crop(self.vertical_crop)
        left, right = crop(self.horizontal_crop)
        vertical, horizontal = use["vertical_crop"], use["horizontal_crop"]
        top, bottom = torch.where(vertical, top, -1.0), torch.where(vertical, bottom, 1.0)
        left, right = torch.where(horizontal, left, -1.0), torch.where(horizontal, right, 1.0)
        grid_x = left[:, None, None] + (grid[..., 0] + 1) / 2 * (right - left)[:, None, None]
        grid_y = top[:, None, None] + (grid[..., 1] + 1) / 2 * (bottom - top)[:, None, None]
        if widths is not None:  # valid region [0, width) -> full-image coordinates
            scale = (widths.to(dev, dt) - 1) / max(w - 1, 1)
            grid_x = (grid_x + 1) * scale[:, None, None] - 1
        out = F.grid_sample(images, torch.stack([grid_x, grid_y], -1), mode="bilinear",
                            padding_mode="border", align_corners=True)

        alpha = torch.where(use["contrast"], u(self.contrast), torch.ones(b, device=dev, dtype=dt))
        out = out * alpha[:, None, None, None]          # 127 + α(v − 127) in [-1, 1] units
        blurred = _gaussian_blur(out, u(self.blur_sigma))
        out = torch.where(use["blur"][:, None, None, None], blurred, out)
        sharp = _sharpen(out, u(self.sharpen_alpha), u(self.sharpen_lightness))
        out = torch.where(use["sharpen"][:, None, None, None], sharp, out)
        out = out.clamp(-1, 1)
        if widths is not None:  # padding stays padding
            pad = torch.arange(w, device=dev)[None, :] >= widths.to(dev)[:, None]
            out = torch.where(pad[:, None, None, :], images, out)
        return out


@dataclass
class SimCLRAugment:
    """The SimCLR set (Chen et al. 2020) for the non-sequential baseline, per image: random
    resized crop (area 8–100 %, aspect ×3/4–4/3), horizontal flip (p 0.5), brightness and
    contrast jitter (strength 0.8, p 0.8), Gaussian blur (p 0.5). It breaks sequence
    alignment on purpose: that is what SeqCLR's Table 1 compares against."""
    crop_area: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.8
    jitter_p: float = 0.8
    blur_sigma: tuple = (0.1, 2.0)
    blur_p: float = 0.5

    def __call__(self, images, widths=None, generator=None):
        if widths is not None:
            raise ValueError("SimCLRAugment works on fixed-size images (no --keep-ratio)")
        b, _, h, w = images.shape
        dev, dt = images.device, images.dtype
        u = lambda lo_hi: _uniform(*lo_hi, b, generator, dev).to(dt)  # noqa: E731
        coin = lambda p: torch.rand(b, generator=generator, device=dev) < p  # noqa: E731
        area = u(self.crop_area)
        ratio = torch.exp(u(tuple(torch.log(torch.tensor(self.crop_ratio)).tolist())))
        sx = torch.sqrt(area * ratio).clamp(max=1)       # crop size, fraction of the width
        sy = torch.sqrt(area / ratio).clamp(max=1)
        cx = (1 - sx) * (2 * torch.rand(b, generator=generator, device=dev).to(dt) - 1)
        cy = (1 - sy) * (2 * torch.rand(b, generator=generator, device=dev).to(dt) - 1)
        sign = torch.where(coin(self.flip), -1.0, 1.0).to(dt)
        theta = torch.zeros(b, 2, 3, device=dev, dtype=dt)
        theta[:, 0, 0], theta[:, 0, 2] = sx * sign, cx
        theta[:, 1, 1], theta[:, 1, 2] = sy, cy
        grid = F.affine_grid(theta, list(images.shape), align_corners=True)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
        jitter = coin(self.jitter_p)[:, None, None, None]
        brightness = u((1 - self.jitter, 1 + self.jitter))[:, None, None, None]
        contrast = u((1 - self.jitter, 1 + self.jitter))[:, None, None, None]
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((out + 1) * brightness - 1 - mean) * contrast + mean
        out = torch.where(jitter, jittered, out)
        blurred = _gaussian_blur(out, u(self.blur_sigma))
        return torch.where(coin(self.blur_p)[:, None, None, None], blurred, out).clamp(-1, 1)


@dataclass
class SimANAugment:
    """SimAN's content-patch augmentation (§3.1): style changes only, never a spatial
    transform (the recovered patch is compared pixel by pixel with the source). Per image:
    brightness / contrast jitter (p 0.8) with a per-channel colour gain, inversion
    (p 0.2), Gaussian blur (p 0.5) and additive Gaussian noise (p 0.5)."""
    jitter: float = 0.5
    jitter_p: float = 0.8
    colour: float = 0.3
    invert_p: float = 0.2
    blur_sigma: tuple = (0.5, 1.5)
    blur_p: float = 0.5
    noise_std: tuple = (0.02, 0.15)
    noise_p: float = 0.5

    def __call__(self, images, widths=None, generator=None):
        b, c = images.shape[:2]
        dev, dt = images.device, images.dtype
        u = lambda lo_hi, n=b: _uniform(*lo_hi, n, generator, dev).to(dt)  # noqa: E731
        coin = lambda p: (torch.rand(b, generator=generator, device=dev)  # noqa: E731
                          < p)[:, None, None, None]
        brightness = u((-self.jitter, self.jitter))[:, None, None, None]
        contrast = u((1 - self.jitter, 1 + self.jitter))[:, None, None, None]
        gain = u((1 - self.colour, 1 + self.colour), b * c).view(b, c, 1, 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = torch.where(coin(self.jitter_p),
                          (images - mean) * contrast * gain + mean + brightness, images)
        out = torch.where(coin(self.invert_p), -out, out)
        out = torch.where(coin(self.blur_p), _gaussian_blur(out, u(self.blur_sigma)), out)
        noise = torch.randn(images.shape, generator=generator, device=dev, dtype=dt)
        std = u(self.noise_std)[:, None, None, None]
        return torch.where(coin(self.noise_p), out + std * noise, out).clamp(-1, 1)


def make_augment(name):
    """"seqclr" (Appendix B), "simclr" (the baseline's set), "siman" (SimAN's content
    patch) or "none" (identity)."""
    if name == "seqclr":
        return SeqCLRAugment()
    if name == "simclr":
        return SimCLRAugment()
    if name == "siman":
        return SimANAugment()
    if name == "none":
        return lambda images, widths=None, generator=None: images
    raise ValueError(f"augment must be 'seqclr', 'simclr', 'siman' or 'none', got {name!r}")
