"""Sequence modelling (DTRB's BidirectionalLSTM stack) over padded, variable-length
batches, and conversions between the padded and the packed frame layouts.

Layouts:
- padded: frames [B, T, D] + lengths [B] (frames t >= lengths[i] are padding, kept at 0);
- packed rows: [sum_i T_i, D] + lengths, image i's frames are rows offsets[i]:offsets[i+1]
  with offsets = lengths_to_offsets(lengths) — the layout seqclr_ext.ops.seq_nce consumes.
"""
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["BidirectionalLSTM", "SequenceModeling", "lengths_to_offsets", "length_mask",
           "padded_to_packed", "packed_to_padded"]


def lengths_to_offsets(lengths):
    """[B] lengths -> [B + 1] int64 offsets (0, T_0, T_0 + T_1, ...)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])


def length_mask(lengths, max_length):
    """[B, max_length] bool, True at valid frames."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def padded_to_packed(frames, lengths):
    """frames [B, T, D] + lengths [B] -> packed rows [sum T_i, D] (image-major, frame order)."""
    if frames.dim() != 3:
        raise ValueError(f"frames must be [B, T, D], got shape {tuple(frames.shape)}")
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=frames.device)
    if lengths.shape != (frames.shape[0],):
        raise ValueError(f"lengths must be [{frames.shape[0]}], got shape {tuple(lengths.shape)}")
    if bool((lengths > frames.shape[1]).any()) or bool((lengths < 0).any()):
        raise ValueError(f"lengths must lie in [0, {frames.shape[1]}], got {lengths.tolist()}")
    return frames[length_mask(lengths, frames.shape[1])]


def packed_to_padded(rows, lengths, max_length=None, padding_value=0.0):
    """packed rows [sum T_i, D] + lengths [B] -> frames [B, max_length or max T_i, D]."""
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=rows.device)
    if int(lengths.sum()) != rows.shape[0]:
        raise ValueError(f"lengths sum to {int(lengths.sum())} but rows has {rows.shape[0]} rows")
    t = int(lengths.max()) if max_length is None else int(max_length)
    mask = length_mask(lengths, t)
    out = rows.new_full((lengths.shape[0], t, *rows.shape[1:]), padding_value)
    out[mask] = rows
    return out


class BidirectionalLSTM(nn.Module):
    """Bidirectional LSTM followed by a per-frame Linear(2·hidden -> output) (DTRB).

    forward(frames [B, T, D], lengths [B] or None) -> [B, T, output_size]; with lengths the
    LSTM runs on a packed sequence (padding never reaches valid frames, the backward
    direction starts at each image's last valid frame) and padded frames come out as 0.
    """

    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_size, output_size)

    def forward(self, frames, lengths=None):
        if lengths is None:
            recurrent, _ = self.rnn(frames)
            return self.linear(recurrent)
        total = frames.shape[1]
        packed = pack_padded_sequence(frames, lengths.detach().to("cpu", torch.long),
                                      batch_first=True, enforce_sorted=False)
        recurrent, _ = self.rnn(packed)
        recurrent, _ = pad_packed_sequence(recurrent, batch_first=True, total_length=total)
        out = self.linear(recurrent)
        return out * length_mask(lengths.to(out.device), total)[..., None].to(out.dtype)


class SequenceModeling(nn.Module):
    """Stack of ``num_layers`` BidirectionalLSTMs (DTRB: 2 layers, 256 hidden units)."""

    def __init__(self, input_size, hidden_size=256, num_layers=2):
        super().__init__()
        self.output_size = hidden_size
        self.layers = nn.ModuleList(
            [BidirectionalLSTM(input_size if i == 0 else hidden_size, hidden_size, hidden_size)
             for i in range(num_layers)])

    def forward(self, frames, lengths=None):
        for layer in self.layers:
            frames = layer(frames, lengths)
        return frames
