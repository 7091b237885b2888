"""Tiny random-weight models of the real classes, shared by the scoring tests."""

from __future__ import annotations

import torch

TINY_VIT = "mmalign-test-vit"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(seed: int = 0):
    import open_clip

    from mmalign.scoring.clip import register_open_clip_config

    register_open_clip_config(TINY_VIT, TINY_CFG)
    torch.manual_seed(seed)
    return open_clip.create_model(TINY_VIT, pretrained=None).eval()


def tiny_hps(seed: int = 0, **kw):
    import open_clip

    from mmalign.scoring.clip import ClipScorer
    from mmalign.scoring.preprocess import ImagePreprocess

    model = tiny_open_clip(seed)
    return ClipScorer(model, open_clip.get_tokenizer(TINY_VIT), ImagePreprocess("letterbox", 224), formula="cosine", **kw)


def tiny_clap(words: list[str], seed: int = 0):
    """A tiny CLAP scorer over a word tokenizer (16 mel bins at 16 kHz, 1 s) and its feature extractor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from mmalign.scoring.clap import ClapScorer, MelFrontend
    from mmalign.scoring.tokenizer import WordTokenizer

    tok = WordTokenizer(words)
    audio = dict(spec_size=64, num_mel_bins=16, patch_size=4, patch_stride=(4, 4), window_size=4, depths=[1, 1],
                 num_attention_heads=[2, 4], patch_embeds_hidden_size=32, hidden_size=64, projection_dim=16, enable_fusion=False)
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=tok.context_length + 4, pad_token_id=0, bos_token_id=tok.sot_id,
                eos_token_id=tok.eot_id, projection_dim=16)
    fe = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=400,
                              frequency_min=50, frequency_max=8000, truncation="rand_trunc", padding="repeatpad")
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16))
    return ClapScorer(model, tok.hf, MelFrontend.from_extractor(fe)), fe
