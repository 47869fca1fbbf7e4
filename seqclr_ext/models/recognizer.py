"""The text recognizer of SeqCLR / DTRB: [TPS] -> ResNet -> map-to-sequence -> [BiLSTM]
-> CTC or attention decoder, on padded batches of variable-width images."""
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .decoders import AttentionDecoder, CTCDecoder
from .resnet import RESNET_PRESETS, ResNetFeatureExtractor, frames_for_width
from .sequence import SequenceModeling
from .tps import LOCALIZATION_PRESETS, TPSRectifier

__all__ = ["Recognizer", "RecognizerConfig", "PRESETS", "DECODER_INPUTS"]

DECODER_INPUTS = ("H", "V", "HV")

# Sizes per preset: "paper" = DTRB / SeqCLR Appendix D, "small" = same topology for CPU.
PRESETS = {
    name: dict(resnet_output_channel=RESNET_PRESETS[name].output_channel,
               resnet_layers=RESNET_PRESETS[name].layers,
               localization_channels=LOCALIZATION_PRESETS[name][0],
               localization_fc=LOCALIZATION_PRESETS[name][1],
               hidden_size=hidden, attention_hidden_size=hidden)
    for name, hidden in (("paper", 256), ("small", 64))
}


@dataclass
class RecognizerConfig:
    """Recognizer settings. Size fields left ``None`` take the ``preset``'s value."""
    num_chars: int = 95                 # charset size, without blank / [GO] / [s]
    preset: str = "paper"               # "paper" (DTRB sizes) or "small" (CPU)
    in_channels: int = 1
    tps: bool = True                    # TPS rectification stage
    num_fiducial: int = 20
    image_size: tuple = (32, 100)       # TPS output size (H, W)
    sequence_model: bool = True         # 2-layer BiLSTM stage
    num_lstm_layers: int = 2
    decoder: str = "ctc"                # "ctc" or "attention"
    # What the decoder reads: "H" (DTRB), "V" or "HV" (both, concatenated). HV is the
    # default: at init the BiLSTM's output barely depends on the image, and through it alone
    # the ResNet gets ~25x less gradient (python/RESULTS.md), so H-only training sits on
    # CTC's all-blank plateau for thousands of steps.
    decoder_input: str = "HV"
    representation: str = "H"           # what encode() returns by default: R = "H" or "V"
    max_length: int = 25                # attention: longest word decoded
    resnet_output_channel: int | None = None
    resnet_layers: tuple | None = None
    hidden_size: int | None = None      # BiLSTM hidden (= output) size
    attention_hidden_size: int | None = None
    ctc_weight: float = 0.0             # attention: weight of the auxiliary CTC loss
    localization_channels: tuple | None = None
    localization_fc: int | None = None

    def resolved(self):
        """A copy with every size filled in from the preset, validated."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        values = asdict(self)
        for key, value in PRESETS[self.preset].items():
            if values[key] is None:
                values[key] = value
        for key in ("image_size", "resnet_layers", "localization_channels"):
            values[key] = tuple(int(v) for v in values[key])
        cfg = RecognizerConfig(**values)
        if cfg.decoder not in ("ctc", "attention"):
            raise ValueError(f"decoder must be 'ctc' or 'attention', got {cfg.decoder!r}")
        if cfg.decoder_input not in DECODER_INPUTS:
            raise ValueError(f"decoder_input must be one of {DECODER_INPUTS}, "
                             f"got {cfg.decoder_input!r}")
        if cfg.representation not in ("H", "V"):
            raise ValueError(f"representation must be 'H' or 'V', got {cfg.representation!r}")
        if not 0 <= cfg.ctc_weight < 1:
            raise ValueError(f"ctc_weight must lie in [0, 1), got {cfg.ctc_weight}")
        if cfg.num_chars < 1:
            raise ValueError(f"num_chars must be >= 1, got {cfg.num_chars}")
        return cfg


class Recognizer(nn.Module):
    """Recognizer(config) or Recognizer(**config_fields).

    Inputs everywhere: images [B, C, H, W] (H = 32; padded to a common W) and optional
    widths [B] (valid columns per image, default W). Frames per image follow
    ``frames_for_width`` of the valid width, or of the TPS output width when TPS is on.
    Without a BiLSTM stage, H is V.
    """

    def __init__(self, config=None, **overrides):
        super().__init__()
        if config is None:
            config = RecognizerConfig(**overrides)
        elif overrides:
            config = RecognizerConfig(**{**asdict(config), **overrides})
        cfg = self.config = config.resolved()
        self.transformation = None
        if cfg.tps:
            self.transformation = TPSRectifier(cfg.num_fiducial, cfg.in_channels, cfg.image_size,
                                               cfg.localization_channels, cfg.localization_fc)
        self.feature_extractor = ResNetFeatureExtractor(cfg.in_channels, cfg.resnet_output_channel,
                                                        cfg.resnet_layers)
        self.map_to_sequence = nn.AdaptiveAvgPool2d((1, None))   # height -> 1
        self.visual_size = cfg.resnet_output_channel
        self.sequence_model = None
        self.contextual_size = self.visual_size
        if cfg.sequence_model:
            self.sequence_model = SequenceModeling(self.visual_size, cfg.hidden_size,
                                                   cfg.num_lstm_layers)
            self.contextual_size = cfg.hidden_size
        dec_in = {"H": self.contextual_size, "V": self.visual_size,
                  "HV": self.contextual_size + self.visual_size}[cfg.decoder_input]
        if cfg.decoder == "ctc":
            self.decoder = CTCDecoder(dec_in, cfg.num_chars)
        else:
            self.decoder = AttentionDecoder(dec_in, cfg.num_chars, cfg.attention_hidden_size,
                                            cfg.max_length, cfg.ctc_weight)

    # ---------------------------------------------------------------- encoder
    def _widths(self, images, widths):
        if widths is None:
            return None
        widths = torch.as_tensor(widths, dtype=torch.long, device=images.device)
        if widths.shape != (images.shape[0],):
            raise ValueError(f"widths must be [{images.shape[0]}], got shape {tuple(widths.shape)}")
        return widths

    def features(self, images, widths=None, contextual=True):
        """-> dict(V=[B, T, visual], H=[B, T, contextual], lengths=[B] int64). Padded frames
        are 0. H is V when there is no BiLSTM stage; contextual=False skips the BiLSTM and
        leaves H out."""
        widths = self._widths(images, widths)
        if self.transformation is not None:
            images = self.transformation(images, widths)
            widths = None           # rectified images all have the TPS output width
        maps, lengths = self.feature_extractor(images, widths)
        visual = self.map_to_sequence(maps).squeeze(2).transpose(1, 2)   # [B, T, C]
        ragged = lengths is not None
        if not ragged:
            lengths = torch.full((images.shape[0],), visual.shape[1], dtype=torch.long,
                                 device=visual.device)
        feats = {"V": visual, "lengths": lengths}
        if contextual:
            feats["H"] = visual
            if self.sequence_model is not None:
                # Equal lengths need no packing (which exported graphs cannot express).
                feats["H"] = self.sequence_model(visual, lengths if ragged else None)
        return feats

    def encode(self, images, widths=None, representation=None):
        """Base encoder f(·): -> (frames [B, T, D] padded with 0, lengths [B] int64).
        representation "V" (visual features, R = V) or "H" (contextual, R = H); default
        from the config. Turn to packed rows with ``padded_to_packed`` for seq_nce."""
        rep = self.config.representation if representation is None else representation
        if rep not in ("V", "H"):
            raise ValueError(f"representation must be 'V' or 'H', got {rep!r}")
        feats = self.features(images, widths, contextual=rep == "H")
        return feats[rep], feats["lengths"]

    def encoder_modules(self, representation=None):
        """The modules of the base encoder for R (TPS, ResNet and, for R = H, the BiLSTM):
        freeze these for the decoder-evaluation protocol."""
        rep = self.config.representation if representation is None else representation
        mods = [m for m in (self.transformation, self.feature_extractor) if m is not None]
        if rep == "H" and self.sequence_model is not None:
            mods.append(self.sequence_model)
        return mods

    def encoder_state(self, representation=None):
        """The state_dict entries of encoder_modules(representation): what pre-training
        hands to the decoder-evaluation and fine-tuning protocols."""
        encoder = self.encoder_modules(representation)
        prefixes = tuple(name + "." for name, module in self.named_children()
                         if any(module is m for m in encoder))
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def frames_for_width(self, width):
        """Frames an image of valid ``width`` yields (TPS: those of the TPS output width)."""
        if self.transformation is not None:
            return frames_for_width(self.config.image_size[1])
        return frames_for_width(width)

    # ---------------------------------------------------------------- decoder
    def _decoder_frames(self, feats):
        mode = self.config.decoder_input
        if mode == "HV":
            return torch.cat([feats["H"], feats["V"]], dim=2)
        return feats[mode]

    def forward(self, images, widths=None, targets=None, target_lengths=None, max_length=None,
                stop_early=True):
        """Training (targets given: charset indices [B, L] padded + target_lengths [B]) or
        inference (no targets). Returns a dict:
        - "logits": CTC [B, T, chars+1] per frame; attention [B, S, chars+2] per step
          (teacher-forced with targets, greedy otherwise; ``stop_early=False`` runs all
          max_length + 1 greedy steps, a graph without data-dependent control flow);
        - "lengths": frames per image [B];
        - "loss": CTC loss / attention cross-entropy, mixed with an auxiliary CTC loss when
          ``ctc_weight`` > 0 (only with targets).
        """
        feats = self.features(images, widths)
        frames, lengths = self._decoder_frames(feats), feats["lengths"]
        out = {"lengths": lengths}
        if self.config.decoder == "ctc":
            out["logits"] = self.decoder(frames)
            if targets is not None:
                out["loss"] = self.decoder.loss(out["logits"], lengths, targets, target_lengths)
            return out
        if targets is not None:
            dec_in, dec_out = self.decoder.encode_targets(targets.to(frames.device),
                                                          target_lengths.to(frames.device))
            out["logits"] = self.decoder(frames, lengths, decoder_inputs=dec_in)
            out["loss"] = self.decoder.joint_loss(self.decoder.loss(out["logits"], dec_out),
                                                  frames, lengths, targets, target_lengths)
        else:
            out["logits"] = self.decoder(frames, lengths, max_length=max_length,
                                         stop_early=stop_early)
        return out

    def decode(self, output):
        """Greedy decoding of a forward() output -> list of charset-index lists.
        (Attention: pass an inference output, i.e. forward without targets.)"""
        if self.config.decoder == "ctc":
            return self.decoder.greedy_decode(output["logits"], output["lengths"])
        return self.decoder.greedy_decode(output["logits"])

    @torch.no_grad()
    def predict(self, images, widths=None, max_length=None):
        """Greedy predictions (charset indices) for a batch; does not change train/eval mode."""
        return self.decode(self.forward(images, widths, max_length=max_length))
