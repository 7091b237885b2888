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


# -- model folders saved by the reference libraries' own classes, and cards that load them ---------------
def byte_chars() -> list[str]:
    """GPT-2's ``bytes_to_unicode``: the printable character that stands for each byte in byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer():
    """A real transformers ``CLIPTokenizer`` over a byte-level vocabulary (every byte, alone and word-final,
    plus the merges of "red") — CLIP's BPE layout without its 49,408-token vocabulary."""
    from transformers import CLIPTokenizer

    chars = byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["re", "red</w>", "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[("r", "e"), ("re", "d</w>")])


def save_tiny_hf_clip(folder, size: int = 32, seed: int = 0):
    """A tiny transformers ``CLIPModel`` and its ``CLIPProcessor`` (short side ``size``, centre crop) saved in ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=size, patch_size=8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPProcessor(image_processor=processor, tokenizer=tok).save_pretrained(folder)
    return folder


def save_tiny_open_clip(folder, size: int = 32, seed: int = 0):
    """A tiny open_clip model (``TINY_CFG`` at ``size`` px, registered as ``TINY_VIT-size``) saved as a
    ``local-dir:`` folder (centre-crop preprocess config), as ``create_model_and_transforms`` reads it."""
    import json
    from pathlib import Path

    import open_clip
    from safetensors.torch import save_file

    from mmalign.scoring.clip import register_open_clip_config

    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "image_size": size, "patch_size": 8}}
    name = register_open_clip_config(f"{TINY_VIT}-{size}", cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    preprocess = {"size": size, "resize_mode": "shortest", "interpolation": "bicubic"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}))
    return folder


def write_card(path, *, family: str, model: str, checkpoint, kind: str = "center_crop", size: int = 32,
               formula: str = "cosine", tokenizer: str = "open_clip", extra: str = "", head=None, head_input: int = 16) -> str:
    """A scorer card at ``path`` for a local checkpoint folder (``checkpoint``; None: random weights);
    ``extra``: more architecture keys, e.g. ``processor: …``; ``head``: LAION aesthetic head weights."""
    ckpt = "{source: none}" if checkpoint is None else f"{{source: local, path: '{checkpoint}'}}"
    if head is not None:
        extra += f"{', ' if extra else ''}head: laion_aesthetic_mlp, config: {{head_input: {head_input}}}"
    path.write_text(f"""name: {path.stem}
description: test
architecture: {{family: {family}, model: {model}, tokenizer: '{tokenizer}'{', ' + extra if extra else ''}}}
checkpoint: {ckpt}
{'' if head is None else f"head_checkpoint: {{source: local, path: '{head}'}}"}
preprocessing: {{kind: {kind}, size: {size}}}
score: {{formula: {formula}, bt_scale: 1.0}}
modalities: [image, video]
license: test
paper: test
""")
    return str(path)


def save_tiny_hf_clap(folder, seed: int = 0):
    """A tiny transformers ``ClapModel`` (synth-clap's audio tower: 16 mel bins at 16 kHz, 1 s) and its
    ``ClapProcessor`` (``ClapFeatureExtractor`` + a real byte-level ``RobertaTokenizer``) saved in ``folder``."""
    import json
    from pathlib import Path

    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    from mmalign.zoo.train_scorers import clap_configs
    from mmalign.scoring.tokenizer import WordTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *byte_chars(), "Ġa", "Ġm", "Ġme", "<mask>"])}
    (folder / "v.json").write_text(json.dumps(vocab))
    (folder / "m.txt").write_text("#version: 0.2\nĠ a\nĠ m\nĠm e\n")
    tok = RobertaTokenizer(str(folder / "v.json"), str(folder / "m.txt"))
    model_kwargs, fe_kwargs = clap_configs(WordTokenizer(["x"]))
    model_kwargs["text_config"].update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, max_position_embeddings=40)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ClapModel(ClapConfig(**model_kwargs))
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(**fe_kwargs), tokenizer=tok).save_pretrained(folder)
    return folder
