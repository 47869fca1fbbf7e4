"""ResNet feature extractor of deep-text-recognition-benchmark (the "ResNet-29" of FAN /
DTRB), written for padded batches of variable-width images.

Input [B, C_in, 32, W] -> [B, C_out, 1, W // 4 + 1]. With per-image valid ``widths`` every
activation is zeroed to the right of the image's valid region at that resolution, so the
valid output columns of an image equal those it gets when batched alone at its own width
(in eval mode; in training mode batch-norm statistics include the zeroed padding).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["BasicBlock", "ResNetFeatureExtractor", "RESNET_PRESETS", "frames_for_width",
           "MIN_WIDTH", "MIN_HEIGHT"]

MIN_WIDTH = 4  # narrowest input: the two (2, 2) max-pools need at least 4 columns
# Lowest input: the three max-pools and conv4_1 halve the height (32 -> 2), conv4_2's
# 2 x 2 kernel needs 2 rows left.
MIN_HEIGHT = 32


def frames_for_width(width):
    """Frames T of the feature map for an input of ``width`` columns: W // 4 + 1 (100 -> 26).

    Accepts an int or an integer tensor (element-wise). The count follows from the layers:
    max-pool (2,2) twice -> W // 4; max-pool k2 s(2,1) pad (0,1) -> +1; conv k2 s(2,1)
    pad (0,1) -> +1; conv k2 s1 pad 0 -> -1.
    """
    if isinstance(width, torch.Tensor):
        if bool((width < MIN_WIDTH).any()):
            raise ValueError(f"widths must be >= {MIN_WIDTH}, got min {int(width.min())}")
        return torch.div(width, 4, rounding_mode="floor") + 1
    width = int(width)
    if width < MIN_WIDTH:
        raise ValueError(f"width must be >= {MIN_WIDTH}, got {width}")
    return width // 4 + 1


@dataclass(frozen=True)
class ResNetPreset:
    output_channel: int       # channels of the last stages; blocks use [/4, /2, 1x, 1x]
    layers: tuple             # BasicBlocks per stage


RESNET_PRESETS = {
    "paper": ResNetPreset(output_channel=512, layers=(1, 2, 5, 3)),   # DTRB / SeqCLR
    "small": ResNetPreset(output_channel=128, layers=(1, 1, 2, 1)),   # CPU tests / demos
}


def _out_width(widths, kernel, stride, padding):
    """Valid width after a layer (same formula as the layer's own output size)."""
    if widths is None:
        return None
    return torch.div(widths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def _mask(x, widths):
    """Zero the columns at or beyond each image's valid width."""
    if widths is None:
        return x
    keep = torch.arange(x.shape[-1], device=x.device)[None, :] < widths[:, None]
    return x * keep[:, None, None, :].to(x.dtype)


def _conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=1, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x, widths=None):
        residual = x if self.shortcut is None else self.shortcut(x)
        out = _mask(self.relu(self.bn1(self.conv1(x))), widths)
        out = self.bn2(self.conv2(out)) + residual
        return _mask(self.relu(out), widths)


class _Stage(nn.Module):
    def __init__(self, in_channels, channels, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(
            [BasicBlock(in_channels if i == 0 else channels, channels) for i in range(blocks)])

    def forward(self, x, widths=None):
        for block in self.blocks:
            x = block(x, widths)
        return x


class ResNetFeatureExtractor(nn.Module):
    """DTRB's ResNet_FeatureExtractor: [B, C_in, 32, W] -> [B, output_channel, 1, W//4 + 1].

    Stem conv 3x3 (output_channel/16) and conv 3x3 (output_channel/8); four stages of
    BasicBlocks with ``layers`` blocks and [/4, /2, 1x, 1x] output_channel channels, each
    followed by a 3x3 conv-BN-ReLU (stage 4: two k2 convs); max-pools (2,2), (2,2) and
    k2 s(2,1) pad (0,1) before stages 1-3.
    """

    def __init__(self, in_channels=1, output_channel=512, layers=(1, 2, 5, 3)):
        super().__init__()
        if output_channel % 16:
            raise ValueError(f"output_channel must be a multiple of 16, got {output_channel}")
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 stage depths, got {layers}")
        oc = output_channel
        ch = [oc // 4, oc // 2, oc, oc]
        self.output_channel = oc
        self.relu = nn.ReLU(inplace=True)

        self.conv0_1 = _conv3x3(in_channels, oc // 16)
        self.bn0_1 = nn.BatchNorm2d(oc // 16)
        self.conv0_2 = _conv3x3(oc // 16, oc // 8)
        self.bn0_2 = nn.BatchNorm2d(oc // 8)

        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.layer1 = _Stage(oc // 8, ch[0], layers[0])
        self.conv1 = _conv3x3(ch[0], ch[0])
        self.bn1 = nn.BatchNorm2d(ch[0])

        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.layer2 = _Stage(ch[0], ch[1], layers[1])
        self.conv2 = _conv3x3(ch[1], ch[1])
        self.bn2 = nn.BatchNorm2d(ch[1])

        self.maxpool3 = nn.MaxPool2d(kernel_size=2, stride=(2, 1), padding=(0, 1))
        self.layer3 = _Stage(ch[1], ch[2], layers[2])
        self.conv3 = _conv3x3(ch[2], ch[2])
        self.bn3 = nn.BatchNorm2d(ch[2])

        self.layer4 = _Stage(ch[2], ch[3], layers[3])
        self.conv4_1 = nn.Conv2d(ch[3], ch[3], kernel_size=2, stride=(2, 1), padding=(0, 1),
                                 bias=False)
        self.bn4_1 = nn.BatchNorm2d(ch[3])
        self.conv4_2 = nn.Conv2d(ch[3], ch[3], kernel_size=2, stride=1, padding=0, bias=False)
        self.bn4_2 = nn.BatchNorm2d(ch[3])

    @classmethod
    def from_preset(cls, preset="paper", in_channels=1):
        p = RESNET_PRESETS[preset]
        return cls(in_channels, p.output_channel, p.layers)

    def forward(self, x, widths=None):
        """x [B, C_in, H, W]; widths: optional [B] int64 valid widths (<= W).

        Returns (features [B, C, H', T], frame widths [B] or None). Features are zero beyond
        each image's valid frames."""
        x, w = self.trunk(x, widths)
        x, w = self.conv4_1(x), _out_width(w, 2, 1, 1)
        x = _mask(self.relu(self.bn4_1(x)), w)
        x, w = self.conv4_2(x), _out_width(w, 2, 1, 0)
        x = _mask(self.relu(self.bn4_2(x)), w)
        return x, w

    def trunk(self, x, widths=None):
        """Every stage but the last two convs (which collapse the height to 1): -> (maps
        [B, C, H/8, W/4 + 1], widths). SimAN pre-trains this part: its 2-D maps keep the
        spatial layout that the style statistics need."""
        if x.shape[-1] < MIN_WIDTH:
            raise ValueError(f"input width must be >= {MIN_WIDTH}, got {x.shape[-1]}")
        w = widths
        x = _mask(x, w)
        x = _mask(self.relu(self.bn0_1(self.conv0_1(x))), w)
        x = _mask(self.relu(self.bn0_2(self.conv0_2(x))), w)

        # Inputs of the max-pools are post-ReLU (>= 0), so zeroed padding columns act like
        # the pools' own -inf padding.
        x, w = self.maxpool1(x), _out_width(w, 2, 2, 0)
        x = _mask(x, w)
        x = self.layer1(x, w)
        x = _mask(self.relu(self.bn1(self.conv1(x))), w)

        x, w = self.maxpool2(x), _out_width(w, 2, 2, 0)
        x = _mask(x, w)
        x = self.layer2(x, w)
        x = _mask(self.relu(self.bn2(self.conv2(x))), w)

        x, w = self.maxpool3(x), _out_width(w, 2, 1, 1)
        x = _mask(x, w)
        x = self.layer3(x, w)
        x = _mask(self.relu(self.bn3(self.conv3(x))), w)

        return self.layer4(x, w), w
