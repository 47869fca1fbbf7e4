"""SimAN's networks (Luo et al., CVPR 2022, §3): the image decoder that recovers a patch
from SimAN-normalized trunk features, and the LSGAN discriminator. The encoder is the
recognizer's ResNet trunk (``ResNetFeatureExtractor.trunk``)."""
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchDecoder", "PatchDiscriminator"]


class PatchDecoder(nn.Module):
    """Trunk maps [B, C, h, w] -> a patch [B, out_channels, H, W] in [-1, 1].

    Light and symmetric to the trunk's three downsamplings: three (resize ×2, 3×3 conv,
    ReLU) blocks that halve the channels, resizing to exactly H/4, H/2, H (the trunk's
    widths are not powers of two), then a 3×3 conv and tanh. No normalization layers: the
    style statistics that SimAN put into the features must reach the pixels."""

    def __init__(self, in_channels: int, out_channels: int = 1):
        super().__init__()
        chans = [in_channels, in_channels // 2, in_channels // 4, in_channels // 8]
        self.blocks = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, x, size):
        h, w = size
        for i, conv in enumerate(self.blocks):
            scale = 2 ** (len(self.blocks) - 1 - i)
            x = F.relu(conv(F.interpolate(x, size=(h // scale, w // scale), mode="nearest")))
        return self.out(x).tanh()


class PatchDiscriminator(nn.Module):
    """LSGAN discriminator on patches: four 4×4 stride-2 convs (LeakyReLU 0.2) and a 3×3
    conv to one real/fake score per location; [B, C, H, W] -> [B, 1, H/16, W/16]."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        layers, c = [], in_channels
        for i in range(4):
            layers += [nn.Conv2d(c, width * 2 ** i, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            c = width * 2 ** i
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
