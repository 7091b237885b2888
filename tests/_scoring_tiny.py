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
    from mmalign.zoo.train_scorers import clap_configs  # the shipped synth-clap architecture: already tiny

    tok = WordTokenizer(words)
    model_kwargs, fe_kwargs = clap_configs(tok)
    fe = ClapFeatureExtractor(**fe_kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ClapModel(ClapConfig(**model_kwargs))
    return ClapScorer(model, tok.hf, MelFrontend.from_extractor(fe)), fe
