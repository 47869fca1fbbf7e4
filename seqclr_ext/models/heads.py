"""Projection heads of SeqCLR (§3, "Projection head"): g(·) on variable-length sequences.

``none`` keeps the representation, ``mlp`` is a two-layer MLP applied to every frame
independently (the head that fits frame-to-instance), ``bilstm`` a BiLSTM over the frames
(the head that fits all- and window-to-instance, Table 4).
"""
import torch.nn as nn

from .sequence import BidirectionalLSTM

__all__ = ["ProjectionHead", "HEADS"]

HEADS = ("none", "mlp", "bilstm")


class ProjectionHead(nn.Module):
    """forward(frames [B, T, D], lengths [B]) -> [B, T, output_size]; padded frames stay 0."""

    def __init__(self, kind, input_size, hidden_size=256, output_size=None):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
        self.kind = kind
        self.output_size = input_size if kind == "none" else (output_size or input_size)
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU(inplace=True),
                                     nn.Linear(hidden_size, self.output_size))
        elif kind == "bilstm":
            self.net = BidirectionalLSTM(input_size, hidden_size, self.output_size)

    def forward(self, frames, lengths):
        if self.kind == "none":
            return frames
        if self.kind == "bilstm":
            return self.net(frames, lengths)
        mask = (frames.new_ones(frames.shape[:2]).cumsum(1) <= lengths[:, None].to(frames.device))
        return self.net(frames) * mask[..., None].to(frames.dtype)
