"""The SimCLR baseline of SeqCLR's Table 1 (its "non-sequential" comparison): each image's
whole representation map, flattened, is one instance — R = V ("SimCLR") or R = H ("SimCLR
contextual") — through an MLP head, contrasted with the NT-Xent loss (``seq_nce`` with one
frame per image; with every rank's negatives under torchrun). Needs fixed-size images (the
frames of every image must line up)."""
import torch
import torch.nn as nn

from ..data.augment import make_augment
from ..task import Task
from ..models import padded_to_packed
from .contrastive import contrastive_loss, diagnostics, two_view_task

__all__ = ["SimCLR", "training_task"]


class SimCLR(nn.Module):
    def __init__(self, recognizer, *, representation="V", temperature=0.1, head_hidden=256,
                 head_output=128):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.recognizer, self.representation = recognizer, representation
        self.temperature = temperature
        size = recognizer.contextual_size if representation == "H" else recognizer.visual_size
        frames = recognizer.frames_for_width(recognizer.config.image_size[1])
        self.head = nn.Sequential(nn.Linear(frames * size, head_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(head_hidden, head_output))

    def project(self, images):
        """images -> (instances [B, head_output], R frames [B, T, D], lengths [B])."""
        frames, lengths = self.recognizer.encode(images, None, self.representation)
        return self.head(frames.flatten(1)), frames, lengths

    def forward(self, view_a, view_b, widths=None, diagnose=True):
        """(The loss, ``contrastive.diagnostics`` or {} when not ``diagnose``) of two views
        [B, C, H, W] of the same images."""
        if widths is not None:
            raise ValueError("SimCLR needs fixed-size images (no --keep-ratio)")
        (z_a, frames, lengths), (z_b, _, _) = self.project(view_a), self.project(view_b)
        ones = torch.ones(z_a.shape[0], dtype=torch.long, device=z_a.device)
        loss = contrastive_loss(z_a, z_b, ones, mapping="frame", temperature=self.temperature)
        if not diagnose:
            return loss, {}
        return loss, diagnostics(padded_to_packed(frames.detach(), lengths), lengths,
                                 z_a.detach(), z_b.detach())

    def encoder_state(self):
        return self.recognizer.encoder_state(self.representation)


def training_task(config: dict, recognizer, batches, step_generator) -> Task:
    """``pretrain --method simclr``'s task: SimCLR of the config's options over
    ``recognizer``, its views drawn from ``step_generator(step)``."""
    method = SimCLR(recognizer, representation=config["representation"],
                    temperature=config["temperature"])
    return two_view_task(method, make_augment("simclr"), batches, step_generator,
                         config["device"], config["log_every"])
