"""Text decoders of the recognizer (SeqCLR Appendix A.2 / A.1, DTRB's CTC and Attn).

Class-index conventions (the raw indices the heads use):
- CTC: 0 = blank, character c (0-based charset index) = c + 1; num_classes = chars + 1.
- Attention: 0 = [GO] (also the padding / ignored target), 1 = [s] (end of word),
  character c = c + 2; num_classes = chars + 2.
``targets`` given to the losses are *charset* indices, padded [B, L] with per-image
``target_lengths``; the decoders shift them. Greedy decoding returns charset indices.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .sequence import length_mask

__all__ = ["CTCDecoder", "AttentionCell", "AttentionDecoder", "CTC_BLANK", "ATTN_GO",
           "ATTN_EOS"]

CTC_BLANK = 0
ATTN_GO = 0
ATTN_EOS = 1


def _lengths(lengths, batch, steps, device):
    if lengths is None:
        return torch.full((batch,), steps, dtype=torch.long, device=device)
    return lengths.to(device=device, dtype=torch.long)


class CTCDecoder(nn.Module):
    """Per-frame Linear(input -> chars + 1) with CTC loss and greedy (best-path) decoding."""

    offset = 1  # raw class = charset index + offset
    class_parameters = ("fc.weight", "fc.bias")  # the parameters indexed by class

    def __init__(self, input_size, num_chars):
        super().__init__()
        self.num_classes = num_chars + 1
        self.fc = nn.Linear(input_size, self.num_classes)

    def forward(self, frames):
        """frames [B, T, D] -> logits [B, T, num_classes]."""
        return self.fc(frames)

    @staticmethod
    def log_probs(logits):
        return F.log_softmax(logits.float(), dim=-1)

    def loss(self, logits, lengths, targets, target_lengths):
        """Mean CTC loss (nn.CTCLoss 'mean' reduction, zero_infinity) of charset targets."""
        b, t, _ = logits.shape
        lengths = _lengths(lengths, b, t, logits.device)
        targets = targets.to(logits.device).long() + self.offset
        target_lengths = target_lengths.to(logits.device).long()
        log_probs = self.log_probs(logits).transpose(0, 1)  # [T, B, C]
        return F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=CTC_BLANK,
                          reduction="mean", zero_infinity=True)

    def greedy_decode(self, logits, lengths=None):
        """Best path: arg-max per valid frame, merge repeats, drop blanks -> charset indices."""
        b, t, _ = logits.shape
        lengths = _lengths(lengths, b, t, logits.device)
        best = logits.argmax(-1)
        keep = best != CTC_BLANK
        keep[:, 1:] &= best[:, 1:] != best[:, :-1]
        keep &= length_mask(lengths, t)
        best, keep = best.cpu(), keep.cpu()
        return [(best[i][keep[i]] - self.offset).tolist() for i in range(b)]


class AttentionCell(nn.Module):
    """One step of DTRB's Bahdanau attention (SeqCLR eqs. 4-7).

    e_t = aᵀ tanh(W s + V f_t + b), α = softmax over the image's valid frames,
    g = Σ α_t f_t, (x, s) = LSTMCell([g, onehot(y_prev)], s).
    """

    def __init__(self, input_size, hidden_size, num_classes):
        super().__init__()
        self.i2h = nn.Linear(input_size, hidden_size, bias=False)   # V
        self.h2h = nn.Linear(hidden_size, hidden_size)              # W, b
        self.score = nn.Linear(hidden_size, 1, bias=False)          # a
        self.rnn = nn.LSTMCell(input_size + num_classes, hidden_size)
        self.num_classes = num_classes

    def forward(self, state, frames, char_onehots, frames_proj=None, valid=None):
        """state (h, c) [B, hidden]; frames [B, T, D]; char_onehots [B, num_classes];
        frames_proj: precomputed i2h(frames); valid: [B, T] bool mask of valid frames.
        Returns the new state and α [B, T]."""
        if frames_proj is None:
            frames_proj = self.i2h(frames)
        e = self.score(torch.tanh(frames_proj + self.h2h(state[0]).unsqueeze(1))).squeeze(2)
        if valid is not None:
            e = e.masked_fill(~valid, float("-inf"))
        alpha = F.softmax(e, dim=1)
        context = torch.bmm(alpha.unsqueeze(1), frames).squeeze(1)
        state = self.rnn(torch.cat([context, char_onehots], dim=1), state)
        return state, alpha


class AttentionDecoder(nn.Module):
    """DTRB's Attn prediction: AttentionCell + Linear generator (eq. 8), [GO]/[s] tokens.

    Training: teacher forcing over [GO] c_1 .. c_n, predicting c_1 .. c_n [s]; loss is the
    token-level cross-entropy (NLL) ignoring the padding. Inference: greedy decoding from
    [GO] for up to max_length + 1 steps (stops when every word has emitted [s]).
    """

    offset = 2
    # Indexed by class: the generator's outputs and the LSTM cell's one-hot input columns.
    class_parameters = ("generator.weight", "generator.bias", "attention_cell.rnn.weight_ih")

    def __init__(self, input_size, num_chars, hidden_size=256, max_length=25,
                 ctc_weight=0.0):
        super().__init__()
        self.num_classes = num_chars + 2
        self.hidden_size = hidden_size
        self.max_length = max_length
        self.attention_cell = AttentionCell(input_size, hidden_size, self.num_classes)
        self.generator = nn.Linear(hidden_size, self.num_classes)
        # Joint CTC-attention training (Kim, Hori & Watanabe, ICASSP 2017): a CTC layer on
        # the same frames, trained beside the attention, gives the encoder an alignment
        # signal from the first step; alone, the attention sits on a plateau of character
        # frequencies for ~1,500 steps (python/RESULTS.md). Inference uses the attention only.
        self.ctc_weight = ctc_weight
        self.ctc = CTCDecoder(input_size, num_chars) if ctc_weight > 0 else None
        if self.ctc is not None:
            self.class_parameters = (*type(self).class_parameters,
                                     *(f"ctc.{name}" for name in CTCDecoder.class_parameters))

    def encode_targets(self, targets, target_lengths):
        """Charset targets [B, L] + lengths -> (decoder inputs, decoder targets), [B, L' + 1]
        with L' = max target length: inputs [GO] c_1..c_n (then [GO] padding), targets
        c_1..c_n [s] (then 0 = ignored)."""
        target_lengths = target_lengths.to(targets.device).long()
        steps = int(target_lengths.max()) + 1 if target_lengths.numel() else 1
        b = targets.shape[0]
        chars = targets[:, :steps - 1].long() + self.offset
        valid = length_mask(target_lengths, steps - 1)
        chars = chars.masked_fill(~valid, ATTN_GO)
        dec_out = torch.cat([chars, chars.new_zeros(b, 1)], dim=1)
        dec_out[torch.arange(b, device=targets.device), target_lengths] = ATTN_EOS
        dec_in = torch.cat([chars.new_full((b, 1), ATTN_GO), chars], dim=1)
        return dec_in, dec_out

    def _init_state(self, frames):
        z = frames.new_zeros(frames.shape[0], self.hidden_size)
        return z, z

    def forward(self, frames, lengths=None, decoder_inputs=None, max_length=None,
                stop_early=True):
        """frames [B, T, D], lengths [B]. With decoder_inputs [B, S] (raw indices, from
        encode_targets): teacher-forced logits [B, S, num_classes]. Without: greedy logits
        [B, S', num_classes] with S' <= (max_length or self.max_length) + 1, or S' equal to
        it when not ``stop_early`` (stopping once every word has emitted [s])."""
        b, t, _ = frames.shape
        valid = None if lengths is None else length_mask(lengths.to(frames.device), t)
        proj = self.attention_cell.i2h(frames)
        state = self._init_state(frames)
        outputs = []
        if decoder_inputs is not None:
            onehots = F.one_hot(decoder_inputs.long(), self.num_classes).to(frames.dtype)
            for i in range(decoder_inputs.shape[1]):
                state, _ = self.attention_cell(state, frames, onehots[:, i], proj, valid)
                outputs.append(state[0])
            return self.generator(torch.stack(outputs, dim=1))
        steps = (self.max_length if max_length is None else max_length) + 1
        token = torch.full((b,), ATTN_GO, dtype=torch.long, device=frames.device)
        finished = torch.zeros(b, dtype=torch.bool, device=frames.device)
        for _ in range(steps):
            onehot = F.one_hot(token, self.num_classes).to(frames.dtype)
            state, _ = self.attention_cell(state, frames, onehot, proj, valid)
            logits = self.generator(state[0])
            outputs.append(logits)
            token = logits.argmax(-1)
            finished |= token == ATTN_EOS
            if stop_early and bool(finished.all()):
                break
        return torch.stack(outputs, dim=1)

    def loss(self, logits, decoder_targets):
        """Mean token cross-entropy over the non-padding targets."""
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               decoder_targets.reshape(-1).long(), ignore_index=ATTN_GO)

    def joint_loss(self, loss, frames, lengths, targets, target_lengths):
        """(1 − λ)·``loss`` (the attention's) + λ·CTC loss of the aux layer on ``frames``."""
        if self.ctc is None:
            return loss
        ctc = self.ctc.loss(self.ctc(frames), lengths, targets, target_lengths)
        return (1 - self.ctc_weight) * loss + self.ctc_weight * ctc

    def greedy_decode(self, logits):
        """Logits [B, S, C] -> charset indices up to the first [s] (specials dropped)."""
        best = logits.argmax(-1).cpu()
        words = []
        for row in best.tolist():
            word = []
            for k in row:
                if k == ATTN_EOS:
                    break
                if k >= self.offset:
                    word.append(k - self.offset)
            words.append(word)
        return words
