"""SeqCLR (Aberdam et al., CVPR 2021, §3): two augmented views of each image -> base
encoder f (R = V or H) -> projection head g -> instance mapping m -> contrastive loss, the
last two fused in ``seq_nce`` (with every rank's negatives under torchrun)."""
import torch.nn as nn

from ..data.augment import make_augment
from ..models import Recognizer, padded_to_packed
from ..models.heads import ProjectionHead
from ..ops.seq_nce import pool_instances
from ..task import Task
from .contrastive import contrastive_loss, diagnostics, two_view_task

__all__ = ["SeqCLR", "MAPPINGS", "training_task"]

MAPPINGS = ("all", "window", "frame")


class SeqCLR(nn.Module):
    """``forward(view_a, view_b, widths, diagnose=True)`` -> (the loss,
    ``contrastive.diagnostics`` or {} when not ``diagnose``); images [B, C, H, W] of the two
    views (same widths).

    The recognizer's decoder is not used; ``encoder_state()`` returns the weights that the
    decoder-evaluation and fine-tuning protocols load."""

    def __init__(self, recognizer: Recognizer, *, representation="H", head="bilstm",
                 mapping="window", num_windows=5, temperature=0.1, head_hidden=256):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.recognizer = recognizer
        self.representation = representation
        size = (recognizer.contextual_size if representation == "H"
                else recognizer.visual_size)
        self.head = ProjectionHead(head, size, head_hidden)
        self.mapping, self.num_windows, self.temperature = mapping, num_windows, temperature

    def project(self, images, widths=None):
        """images -> (packed projected frames [sum T_i, F'], lengths [B], packed R frames)."""
        frames, lengths = self.recognizer.encode(images, widths, self.representation)
        return (padded_to_packed(self.head(frames, lengths), lengths), lengths,
                padded_to_packed(frames, lengths))

    def forward(self, view_a, view_b, widths=None, diagnose=True):
        frames_a, lengths, representation = self.project(view_a, widths)
        frames_b, _, _ = self.project(view_b, widths)
        loss = contrastive_loss(frames_a, frames_b, lengths, mapping=self.mapping,
                                num_windows=self.num_windows, temperature=self.temperature)
        if not diagnose:
            return loss, {}
        instances = [pool_instances(f.detach(), lengths, self.mapping, self.num_windows)
                     for f in (frames_a, frames_b)]
        return loss, diagnostics(representation.detach(), lengths, *instances)

    def encoder_state(self):
        return self.recognizer.encoder_state(self.representation)


def training_task(config: dict, recognizer: Recognizer, batches, step_generator) -> Task:
    """``pretrain --method seqclr``'s task: SeqCLR of the config's options over
    ``recognizer``, its views drawn from ``step_generator(step)``."""
    method = SeqCLR(recognizer, representation=config["representation"],
                    head=config["head"], mapping=config["mapping"],
                    num_windows=config["num_windows"], temperature=config["temperature"])
    return two_view_task(method, make_augment("seqclr"), batches, step_generator,
                         config["device"], config["log_every"])
