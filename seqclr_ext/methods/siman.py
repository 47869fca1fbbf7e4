"""SimAN (Luo et al., CVPR 2022, §3, Algorithm 1): recover an augmented image patch from
its neighbouring patch's styles. Encoder = the recognizer's ResNet trunk; the SimAN module
(``ops.siman_normalize``) gives every content position the local style statistics of the
style positions it resembles; a light decoder renders the patch; an LSGAN discriminator
judges it. Generator loss L_adv + λ·L2, discriminator and generator updated alternately."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .. import ops
from ..data.augment import make_augment
from ..models import Recognizer
from ..models.siman import PatchDecoder, PatchDiscriminator
from ..task import Task

__all__ = ["SimAN", "crop_patches", "save_patch_grid", "training_task"]


def _stretch(images, widths, out_width):
    """Each image's valid columns [0, widths[i]) resized to ``out_width`` columns (bilinear,
    like F.interpolate with align_corners=False), all images in one grid_sample."""
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    cols = torch.arange(out_width, device=dev, dtype=dt)
    src = ((cols + 0.5) * widths[:, None].to(dt) / out_width - 0.5)                  # [b, out]
    src = torch.minimum(src.clamp(min=0), (widths[:, None] - 1).to(dt))
    rows = (2 * torch.arange(h, device=dev, dtype=dt) + 1) / h - 1                   # row centres
    grid = torch.stack(torch.broadcast_tensors((2 * src[:, None, :] + 1) / w - 1,
                                               rows[None, :, None]), dim=-1)         # [b, h, out, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def crop_patches(images, widths=None, generator=None):
    """Two neighbouring H×H patches of every image (§3.1): -> (style, content, narrow).

    images [B, C, H, W] (right-padded), widths [B] valid columns (None: all W). A random
    window of 2H columns inside the valid width is split in two halves; which half is the
    style and which the content is a fair coin. The documented rule for an image narrower
    than 2H: its valid part is first stretched horizontally to 2H (``narrow`` counts them)."""
    b, c, h, w = images.shape
    dev = images.device
    widths = (torch.full((b,), w, device=dev) if widths is None else widths.to(dev)).long()
    narrow = widths < 2 * h
    if narrow.any():
        images = F.pad(images, (0, max(0, 2 * h - w)))
        images[narrow, :, :, :2 * h] = _stretch(images[narrow], widths[narrow], 2 * h)
        widths = torch.where(narrow, 2 * h, widths)
    u = torch.rand(b, generator=generator, device=dev)
    start = (u * (widths - 2 * h + 1).to(u.dtype)).long()
    cols = start[:, None] + torch.arange(2 * h, device=dev)
    pair = images.gather(3, cols[:, None, None, :].expand(b, c, h, 2 * h))
    swap = (torch.rand(b, generator=generator, device=dev) < 0.5)[:, None, None, None]
    left, right = pair[..., :h], pair[..., h:]
    return torch.where(swap, right, left), torch.where(swap, left, right), int(narrow.sum())


class SimAN(nn.Module):
    """``recover(augmented, style)`` -> the recovered patch; ``step(...)`` does one
    iteration of Algorithm 1 with the given optimizers. ``encoder_state()`` is the trunk's
    (the recognizer's ``feature_extractor``) weights for the probe / fine-tuning protocols;
    the last two convs of the ResNet, which SimAN does not use, keep their initial values.
    """

    representation = "V"

    def __init__(self, recognizer: Recognizer, *, kernel_size=3, l2_weight=10.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.recognizer = recognizer
        channels = recognizer.feature_extractor.output_channel
        in_channels = recognizer.config.in_channels
        self.decoder = PatchDecoder(channels, in_channels)
        self.discriminator = PatchDiscriminator(in_channels, max(8, channels // 8))
        self.kernel_size, self.l2_weight = kernel_size, l2_weight

    def encode(self, patches):
        return self.recognizer.feature_extractor.trunk(patches)[0]

    def recover(self, augmented, style):
        content = ops.siman_normalize(self.encode(augmented), self.encode(style),
                                      kernel_size=self.kernel_size)
        return self.decoder(content, augmented.shape[-2:])

    def generator_parameters(self):
        return [*self.recognizer.feature_extractor.parameters(), *self.decoder.parameters()]

    def step(self, style, content, augmented, gen_optimizer, disc_optimizer):
        """Algorithm 1, lines 6–10: recover, update D on real style patches vs recovered
        ones (eq. 3), then update encoder + decoder on L_adv (eq. 4) + λ·L2 (eq. 2, the mean
        squared error). Returns (generator loss, scalars to log, recovered patches)."""
        recovered = self.recover(augmented, style)
        d_loss = ((self.discriminator(style) - 1) ** 2).mean() \
            + (self.discriminator(recovered.detach()) ** 2).mean()
        disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        disc_optimizer.step()
        adv = ((self.discriminator(recovered) - 1) ** 2).mean()
        l2 = F.mse_loss(recovered, content)
        g_loss = adv + self.l2_weight * l2
        gen_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        gen_optimizer.step()
        return g_loss.detach(), {"l2": l2.item(), "adv": adv.item(),
                                 "disc": d_loss.item()}, recovered.detach()

    def encoder_state(self):
        return {k: v for k, v in self.recognizer.state_dict().items()
                if k.startswith("feature_extractor.")}


def save_patch_grid(path: Path, columns: list[torch.Tensor], rows: int = 8) -> None:
    """A PNG of the first ``rows`` samples, one column per tensor [B, C, h, w] in [-1, 1]."""
    cells = [c[:rows].detach().float().cpu().clamp(-1, 1) for c in columns]
    grid = torch.cat([torch.cat(list(c), dim=-1) for c in zip(*cells)], dim=-2)   # [C, H, W]
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else np.ascontiguousarray(pixels)
                    ).save(path)


def training_task(config: dict, recognizer: Recognizer, batches, step_generator) -> Task:
    """``pretrain --method siman``'s task: Algorithm 1 with its own two Adams (lr decaying
    linearly to --final-lr) and PNG grids in RUN_DIR/samples/. Its alternating generator /
    discriminator updates do not fit the Trainer's loss (one optimizer, gradient clipping),
    so the task brings its own ``train_step``."""
    method = SimAN(recognizer, kernel_size=config["siman_kernel"],
                   l2_weight=config["l2_weight"])
    adam = lambda params: torch.optim.Adam(params, lr=config["lr"],  # noqa: E731
                                           betas=tuple(config["adam_betas"]))
    optimizers = {"generator": adam(method.generator_parameters()),
                  "discriminator": adam(method.discriminator.parameters())}
    end = config["final_lr"] / config["lr"]
    decay = lambda step: 1 - (1 - end) * min(step, config["iterations"]) / config["iterations"]  # noqa: E731,E501
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, decay) for k, o in optimizers.items()}
    augment = make_augment("siman")
    device, every = config["device"], config["sample_every"]
    samples = Path(config["run_dir"], "samples")

    def train_step(item):
        step, batch = item
        generator = step_generator(step)
        batch = batch.to(device)
        style, content, narrow = crop_patches(batch.images, batch.widths, generator)
        augmented = augment(content, None, generator)
        loss, scalars, recovered = method.step(style, content, augmented,
                                               optimizers["generator"],
                                               optimizers["discriminator"])
        if every and (step + 1) % every == 0:
            save_patch_grid(samples / f"step_{step + 1:07d}.png",
                            [content, style, augmented, recovered])
        return loss, {**scalars, "narrow_images": narrow}

    return Task(method, batches, None, best_metric="none", optimizers=optimizers,
                schedulers=schedulers, train_step=train_step, checkpoint_kind="siman")
