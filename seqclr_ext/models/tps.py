"""TPS rectification (SeqCLR Appendix A.1; DTRB's TPS_SpatialTransformerNetwork).

TPSLocalization regresses K fiducial points C′ from the image; TPSRectifier warps the image
with them through ``tps_grid_sample`` (DESIGN.md §2) to a fixed output size.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from seqclr_ext.ops import tps_grid_sample
    from seqclr_ext.ops.tps_grid_sample import tps_base_points
    _IMPORT_ERROR = None
except ImportError as exc:  # the compiled ops are not loadable (see seqclr_ext.ops)
    tps_base_points = tps_grid_sample = None
    _IMPORT_ERROR = exc

__all__ = ["TPSLocalization", "TPSRectifier", "LOCALIZATION_PRESETS", "resize_valid"]

LOCALIZATION_PRESETS = {
    # conv channels of the four conv-BN-ReLU layers, width of the hidden FC layer
    "paper": ((64, 128, 256, 512), 256),
    "small": ((16, 32, 64, 128), 64),
}


def _require_ops():
    if _IMPORT_ERROR is not None:
        raise ImportError("TPS needs seqclr_ext.ops (tps_grid_sample): " + str(_IMPORT_ERROR)) \
            from _IMPORT_ERROR


class TPSLocalization(nn.Module):
    """DTRB's LocalizationNetwork: four 3x3 conv-BN-ReLU layers (max-pool 2 after the first
    three, global average pool after the last), FC-ReLU, FC -> K points (x, y).

    The last FC starts with zero weights and the base points C as bias, so the initial
    output is exactly C for every image (identity warp)."""

    def __init__(self, num_fiducial=20, in_channels=1, channels=(64, 128, 256, 512),
                 fc_size=256):
        super().__init__()
        _require_ops()
        if num_fiducial < 4 or num_fiducial % 2:
            raise ValueError(f"num_fiducial must be even and >= 4, got {num_fiducial}")
        self.num_fiducial = num_fiducial
        layers, cin = [], in_channels
        for i, cout in enumerate(channels):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2) if i < len(channels) - 1 else nn.AdaptiveAvgPool2d(1))
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.fc1 = nn.Sequential(nn.Linear(cin, fc_size), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(fc_size, 2 * num_fiducial)
        self.reset_fiducials()

    def reset_fiducials(self):
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(tps_base_points(self.num_fiducial, dtype=torch.float64)
                                .reshape(-1).to(self.fc2.bias.dtype))

    def forward(self, image):
        """image [B, C, H, W] (H, W >= 8) -> C′ [B, K, 2]."""
        features = self.conv(image).flatten(1)
        return self.fc2(self.fc1(features)).view(-1, self.num_fiducial, 2)


def resize_valid(images, widths, size):
    """Bilinearly resample each image's valid columns [0, widths[i]) to ``size`` (H, W)
    (align_corners=True: the first / last valid pixels map to the first / last output
    pixels). Padding columns are never read (up to rounding of the sampling positions)."""
    b, _, h, w = images.shape
    if widths is None:
        scale = images.new_ones(b)
    else:
        scale = (widths.to(images.device, images.dtype) - 1) / max(w - 1, 1)
    theta = images.new_zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 0, 2] = scale - 1
    theta[:, 1, 1] = 1
    grid = F.affine_grid(theta, (b, images.shape[1], *size), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


class TPSRectifier(nn.Module):
    """Localization + TPS warp to ``output_size`` (default 32x100).

    forward(images [B, C, H, W], widths=None) -> rectified [B, C, H_out, W_out]. With
    per-image valid ``widths`` (padded batches), or when the input is not already of
    ``output_size``, each image's valid region is first resized to ``output_size`` (DTRB's
    pre-resize) so that the localization never sees padding; the TPS then samples that.
    """

    def __init__(self, num_fiducial=20, in_channels=1, output_size=(32, 100),
                 channels=(64, 128, 256, 512), fc_size=256):
        super().__init__()
        self.output_size = tuple(int(s) for s in output_size)
        self.localization = TPSLocalization(num_fiducial, in_channels, channels, fc_size)

    def forward(self, images, widths=None):
        if widths is not None or tuple(images.shape[-2:]) != self.output_size:
            images = resize_valid(images, widths, self.output_size)
        # Under autocast the points come out of a Linear in bf16 and the image may not:
        # the op takes both in one dtype, the image's.
        control_points = self.localization(images).to(images.dtype)
        return tps_grid_sample(images, control_points, self.output_size)
