"""Recognizer models (SeqCLR Appendix A; deep-text-recognition-benchmark's
TPS-ResNet-BiLSTM-CTC/Attn): TPS rectification, ResNet feature extractor, BiLSTM sequence
modelling, CTC and attention decoders, and the assembled ``Recognizer``; SimAN's patch
decoder and discriminator."""
from .heads import HEADS, ProjectionHead
from .decoders import ATTN_EOS, ATTN_GO, CTC_BLANK, AttentionCell, AttentionDecoder, CTCDecoder
from .recognizer import DECODER_INPUTS, PRESETS, Recognizer, RecognizerConfig
from .resnet import (MIN_WIDTH, RESNET_PRESETS, BasicBlock, ResNetFeatureExtractor,
                     frames_for_width)
from .siman import PatchDecoder, PatchDiscriminator
from .sequence import (BidirectionalLSTM, SequenceModeling, length_mask, lengths_to_offsets,
                       packed_to_padded, padded_to_packed)
from .tps import LOCALIZATION_PRESETS, TPSLocalization, TPSRectifier, resize_valid

__all__ = [
    "Recognizer", "RecognizerConfig", "PRESETS", "DECODER_INPUTS", "ProjectionHead", "HEADS",
    "TPSLocalization", "TPSRectifier", "resize_valid", "LOCALIZATION_PRESETS",
    "ResNetFeatureExtractor", "BasicBlock", "frames_for_width", "MIN_WIDTH", "RESNET_PRESETS",
    "BidirectionalLSTM", "SequenceModeling", "padded_to_packed", "packed_to_padded",
    "lengths_to_offsets", "length_mask",
    "PatchDecoder", "PatchDiscriminator",
    "CTCDecoder", "AttentionDecoder", "AttentionCell", "CTC_BLANK", "ATTN_GO", "ATTN_EOS",
]
