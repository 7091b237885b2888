"""Train the shipped synth scorers on simulated-annotator data of the synthetic world.

    python -m mmalign.zoo.train_scorers --scorer synth-hps --generator synth-sdxl --n-generated 1500
    python -m mmalign.zoo.train_scorers --scorer synth-hps --init assets/models/synth-hps --out assets/models/synth-hps-shapes \
        --n-train 600 --shape-groups 1500 --steps 600 --lr 3e-4
    python -m mmalign.zoo.train_scorers --scorer synth-clap --n-train 400 --n-eval 100 --steps 600 --batch-size 32 \
        --generator synth-audio --n-generated 400 --generator-steps 8 --captions 2000

Each writes the folder its card loads (``assets/models/synth-hps/``, ``assets/models/synth-clap/``) with
``train_report.json``, the held-out evaluation, next to the weights.

Data: prompts of the train split; for each, ``k`` candidates rendered by ``mmalign.synth.render``
and *corrupted* so faithfulness and quality vary — half are renders of a near-miss prompt (one
color / shape / relation / count / tempo / register / timbre word swapped, or another prompt), and
each gets Gaussian noise and (images) blur with random strength. As HPD v2 collects images *from
the generators* its scorer will judge, ``--generator`` adds groups of ``k`` samples of a shipped
generator (``synth-sdxl`` for synth-hps) on other train prompts: their differences (a wrong count,
a swapped relation, a smeared shape) are the ones alignment has to see. Every pair within a
prompt's group is labelled by simulated annotators (``mmalign.synth.annotators.Annotator``), ties
included. Pairs of one prompt never say which prompt an item shows, and a scorer trained from scratch
on them alone may ignore the text (the first synth-clap did); ``--captions N`` adds CLAP's contrastive
loss on N corrupted renders captioned with their prompts (:class:`mmalign.scoring.train.CaptionSet`).
Pairs that differ in many words at once can be told apart by the easiest one: synth-hps picks the right
shape of a rendered object no better than chance (28% of 150 renders of one-object prompts, chance 33%).
``--shape-groups N`` adds N hard-negative groups: one single-object prompt rendered in each of the three
shapes (same color, each corrupted as above), all pairs labelled by the annotators, so a pair differs in its
shape alone (the minimal contrast of attribute-binding hard negatives, as NegCLIP's swapped-attribute
captions, Yuksekgonul et al. 2023, ICLR, "When and why vision-language models behave like bags-of-words").
``--init FOLDER`` fine-tunes a trained synth-hps (its folder) instead of a random initialization.

Evaluation on *held-out prompts*: the scorer's pooled pairwise accuracy against annotator 1's
labels, next to the **annotator ceiling** = agreement of an independent annotator 2 with annotator 1
on the same pairs (both over non-tied pairs); likewise the HPD v2 inversion metric against
annotator 1's rankings with annotator 2's rankings as the ceiling. With ``--generator``, the same
pooled accuracy and ceiling are reported separately on held-out groups of generated samples.

Architectures (tiny on purpose, documented in the cards):
* synth-hps — open_clip ``CLIP``: ViT 32 px, patch 4 (64 tokens), width 64, 3 layers, 2 heads; text
  transformer width 64, 2 layers, context 16, over the synth grammar's words (``WordTokenizer``);
  embed dim 64 (≈0.3 M parameters: sized so 1,500 steps fit ~10 minutes of one shared CPU core).
* synth-clap — transformers ``ClapModel``: HTSAT audio tower (spec 64, 16 mel bins at 16 kHz, hop
  160, 1 s), RoBERTa text tower (width 64, 2 layers) over the same word tokenizer; projection 64.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from mmalign.checkpoint import atomic_folder
from mmalign.errors import ConfigError
from mmalign.fileio import atomic_write_json
from mmalign.media import AudioBatch, ImageBatch
from mmalign.paths import asset_path
from mmalign.scoring.tokenizer import WordTokenizer
from mmalign.zoo.stages import seeded

HPS_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 64, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 0, "width": 64, "heads": 2, "layers": 2},
}
HPS_ARCH = "synth-hps-vit"


# -- models -------------------------------------------------------------------------------------------
@seeded
def build_synth_hps(tokenizer: WordTokenizer, seed: int = 0):
    """A random-init synth-hps scorer (open_clip CLIP registered under ``synth-hps-vit``)."""
    import open_clip

    from mmalign.scoring.clip import ClipScorer, register_open_clip_config
    from mmalign.scoring.preprocess import ImagePreprocess

    cfg = json.loads(json.dumps(HPS_CONFIG))
    cfg["text_cfg"]["vocab_size"] = tokenizer.vocab_size
    cfg["text_cfg"]["context_length"] = tokenizer.context_length
    name = f"{HPS_ARCH}-v{tokenizer.vocab_size}"
    register_open_clip_config(name, cfg)
    model = open_clip.create_model(name, pretrained=None)
    scorer = ClipScorer(model, tokenizer, ImagePreprocess("letterbox", 32), formula="cosine", name="synth-hps", bt_scale=20.0)
    return scorer, cfg


def clap_configs(tokenizer: WordTokenizer) -> tuple[dict, dict]:
    """(ClapConfig kwargs, ClapFeatureExtractor kwargs) of synth-clap."""
    audio = dict(spec_size=64, num_mel_bins=16, patch_size=4, patch_stride=(4, 4), window_size=4, depths=[1, 1],
                 num_attention_heads=[2, 4], patch_embeds_hidden_size=32, hidden_size=64, projection_dim=64, enable_fusion=False)
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                max_position_embeddings=tokenizer.context_length + 4, pad_token_id=0, bos_token_id=tokenizer.sot_id,
                eos_token_id=tokenizer.eot_id, projection_dim=64)
    fe = dict(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1, fft_window_size=400,
              frequency_min=50, frequency_max=8000, truncation="rand_trunc", padding="repeatpad")
    return dict(text_config=text, audio_config=audio, projection_dim=64), fe


@seeded
def build_synth_clap(tokenizer: WordTokenizer, seed: int = 0):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from mmalign.scoring.clap import ClapScorer, MelFrontend

    cfg, fe_kw = clap_configs(tokenizer)
    model = ClapModel(ClapConfig(**cfg))
    fe = ClapFeatureExtractor(**fe_kw)
    return ClapScorer(model, tokenizer.hf, MelFrontend.from_extractor(fe), name="synth-clap"), fe


# -- data ---------------------------------------------------------------------------------------------
def near_miss(prompt: str, modality: str, rng: random.Random) -> str:
    """A prompt that differs from ``prompt`` in one word (or a random other prompt)."""
    from mmalign.synth.prompts import COLORS, REGISTERS, SHAPES, TEMPOS, TIMBRES, all_prompts, parse_prompt

    swaps = [list(COLORS), list(SHAPES), [s + "s" for s in SHAPES], list(TEMPOS), list(REGISTERS), list(TIMBRES),
             ["left", "right", "up", "down"], ["above", "below"], ["a", "two"]]
    words = prompt.split()
    for _ in range(20):
        i = rng.randrange(len(words))
        group = next((g for g in swaps if words[i] in g), None)
        if group is None:
            continue
        new = words.copy()
        new[i] = rng.choice([w for w in group if w != words[i]])
        text = " ".join(new)
        try:
            parse_prompt(text, modality)
            return text
        except Exception:
            continue
    return rng.choice([p for p in all_prompts(modality) if p != prompt])


def corrupted_renders(drawn: list[str], modality: str, seed: int, rng: random.Random, prompts: list[str]):
    """Renders of ``drawn`` with Gaussian noise and (images) blur of random strength, labelled ``prompts``."""
    import torchvision.transforms.functional as TF

    from mmalign.synth.render import render

    gen = torch.Generator().manual_seed(seed)
    media = render(drawn, seed=seed, modality=modality)
    x = media.data.clone()
    for i in range(len(x)):
        sigma = rng.choice([0.0, 0.0, 0.03, 0.08, 0.15, 0.3] if modality == "image" else [0.0, 0.0, 0.05, 0.15, 0.3])
        if modality == "image" and rng.random() < 0.3:
            x[i] = TF.gaussian_blur(x[i], kernel_size=5, sigma=rng.uniform(0.6, 1.5))
        if sigma:
            x[i] = x[i] + sigma * torch.randn(x[i].shape, generator=gen)
    x = x.clamp(0, 1) if modality == "image" else x.clamp(-1, 1)
    return ImageBatch(x, prompts=prompts) if modality == "image" else AudioBatch(x, sample_rate=media.sample_rate, prompts=prompts)


def make_groups(modality: str, n_prompts: int, k: int, seed: int, split: str):
    """``n_prompts`` groups of ``k`` corrupted candidates: (flat media [n·k], prompts [n])."""
    from mmalign.synth.prompts import sample_prompts

    rng = random.Random(seed)
    prompts = sample_prompts(modality, n_prompts, seed=seed, split=split)
    drawn = [near_miss(p, modality, rng) if (j > 0 and rng.random() < 0.5) else p for p in prompts for j in range(k)]
    return corrupted_renders(drawn, modality, seed, rng, [p for p in prompts for _ in range(k)]), prompts


def shape_groups(n_prompts: int, seed: int, split: str):
    """``n_prompts`` single-object image prompts, each rendered (and corrupted) once in every shape, same color:
    (flat media [n·3], prompts [n]); within a group only the shape differs."""
    from mmalign.synth.prompts import SHAPES, parse_prompt, sample_prompts

    draws = sample_prompts("image", 4 * n_prompts, seed=seed, split=split)
    prompts = [p for p in draws if parse_prompt(p, "image").kind == "single"][:n_prompts]
    if len(prompts) < n_prompts:
        raise ConfigError(f"shape groups: only {len(prompts)} single-object prompts among {len(draws)} draws; ask for fewer")
    drawn = [f"a {parse_prompt(p, 'image').objects[0][0]} {shape}" for p in prompts for shape in SHAPES]
    return corrupted_renders(drawn, "image", seed, random.Random(seed), [p for p in prompts for _ in SHAPES]), prompts


def caption_set(modality: str, n: int, seed: int):
    """``n`` corrupted renders of train-split prompts, each captioned with the prompt it shows (the contrastive term)."""
    from mmalign.scoring.train import CaptionSet
    from mmalign.synth.prompts import sample_prompts

    prompts = sample_prompts(modality, n, seed=seed, split="train")
    return CaptionSet(corrupted_renders(prompts, modality, seed, random.Random(seed), prompts), prompts)


def generated_groups(generator: str, n_prompts: int, k: int, seed: int, split: str, modality: str = "image",
                     steps: int | None = None):
    """``n_prompts`` groups of ``k`` samples of a shipped generator (``steps`` sampling steps; None: its default):
    (flat media [n·k], prompts [n])."""
    from mmalign.generators import load_generator
    from mmalign.synth.prompts import sample_prompts

    prompts = sample_prompts(modality, n_prompts, seed=seed, split=split)
    media = load_generator(generator).sample(prompts, n=k, seed=seed, batch_size=64, progress=False,
                                             **({} if steps is None else {"steps": steps}))
    return media, prompts


def group_pairs(media, prompts: list[str], k: int, annotators):
    """All within-group pairs, labelled by each annotator → (PairSet of annotator 0, [labels per annotator])."""
    from mmalign.scoring.train import PairSet

    ia, ib = [], []
    for g in range(len(prompts)):
        for x in range(k):
            for y in range(x + 1, k):
                ia.append(g * k + x)
                ib.append(g * k + y)
    a, b = media[ia], media[ib]
    pp = [prompts[i // k] for i in ia]
    labels = [ann.choose(a, b, pp) for ann in annotators]
    return PairSet(a, b, pp, labels[0]), labels


# -- saving -------------------------------------------------------------------------------------------

def load_init(scorer, folder: Path) -> None:
    """Start from the weights of a trained synth-hps folder (``open_clip_model.safetensors``, same architecture)."""
    from safetensors.torch import load_file

    file = folder / "open_clip_model.safetensors"
    if not file.is_file():
        raise ConfigError(f"--init {folder}: no open_clip_model.safetensors there; give a synth-hps folder such as assets/models/synth-hps")
    try:
        scorer.model.load_state_dict(load_file(str(file)))
    except RuntimeError as exc:
        raise ConfigError(f"--init {folder}: not the synth-hps architecture ({exc})") from exc


def save_synth_hps(scorer, cfg: dict, out: Path) -> None:
    """The open_clip folder ``load_scorer("synth-hps")`` reads, written through a temporary folder and a rename."""
    from mmalign.scoring.train import save_open_clip_folder

    atomic_folder(out, lambda tmp: save_open_clip_folder(scorer, cfg, tmp))


def save_synth_clap(scorer, fe, tokenizer: WordTokenizer, out: Path) -> None:
    """The ``ClapModel`` folder (weights, feature extractor, word tokenizer) ``load_scorer("synth-clap")`` reads,
    written through a temporary folder and a rename."""

    def write(tmp: Path) -> None:
        scorer.model.save_pretrained(str(tmp))
        fe.save_pretrained(str(tmp))
        tokenizer.save(tmp / "tokenizer.json")

    atomic_folder(out, write)


# -- main ---------------------------------------------------------------------------------------------
@seeded
def run(scorer_name: str, out: Path, seed: int = 0, n_train: int = 600, n_eval: int = 150, k: int = 4, steps: int = 1500,
        batch_size: int = 64, lr: float = 5e-4, label_annotators: int = 1, generator: str | None = None,
        n_generated: int = 600, k_generated: int | None = None, n_captions: int = 0, caption_weight: float = 1.0,
        generator_steps: int | None = None, init: Path | None = None, n_shape: int = 0, log=print) -> dict:
    from mmalign.scoring.metrics import hpdv2_accuracy, inversion_score
    from mmalign.scoring.train import PairSet, evaluate_pairs, train_scorer
    from mmalign.synth.annotators import Annotator, agreement
    from mmalign.synth.prompts import VOCABULARY

    modality = "image" if scorer_name == "synth-hps" else "audio"
    if modality != "image" and (n_shape or init is not None):
        raise ConfigError("--shape-groups (image renders) and --init (a trained synth-hps folder) are for --scorer synth-hps; "
                          "synth-clap trains from a random initialization on its own data")
    tok = WordTokenizer(VOCABULARY, context_length=16)
    if scorer_name == "synth-hps":  # first: a bad --init fails before the data is built
        scorer, cfg = build_synth_hps(tok, seed)
        if init is not None:
            load_init(scorer, Path(init))
    else:
        scorer, fe = build_synth_clap(tok, seed)
    t0 = time.time()
    train_media, train_prompts = make_groups(modality, n_train, k, seed, "train")
    # training labels: the mean vote of ``label_annotators`` independent annotators (HPD v2 also pools
    # several raters per comparison); evaluation always uses single-annotator labels
    label_panel = [Annotator(seed=seed + 1 + i) for i in range(label_annotators)]
    train_pairs, votes = group_pairs(train_media, train_prompts, k, label_panel)
    train_pairs.labels = torch.stack(votes).mean(0)
    if n_shape:
        s_media, s_prompts = shape_groups(n_shape, seed + 4, "train")
        s_pairs, s_votes = group_pairs(s_media, s_prompts, len(s_media) // len(s_prompts), label_panel)
        s_pairs.labels = torch.stack(s_votes).mean(0)
        train_pairs = PairSet.cat([train_pairs, s_pairs])
    ann1, ann2 = Annotator(seed=seed + 101), Annotator(seed=seed + 202)
    gen_eval = None
    if generator:
        kg = k_generated or k
        g_media, g_prompts = generated_groups(generator, n_generated, kg, seed + 2, "train", modality, generator_steps)
        g_pairs, g_votes = group_pairs(g_media, g_prompts, kg, label_panel)
        g_pairs.labels = torch.stack(g_votes).mean(0)
        train_pairs = PairSet.cat([train_pairs, g_pairs])
        ge_media, ge_prompts = generated_groups(generator, n_eval, k, seed + 1002, "heldout", modality, generator_steps)
        gen_eval, (gl1, gl2) = group_pairs(ge_media, ge_prompts, k, [ann1, ann2])
        gen_eval.labels = gl1
    eval_media, eval_prompts = make_groups(modality, n_eval, k, seed + 1000, "heldout")
    eval_pairs, (l1, l2) = group_pairs(eval_media, eval_prompts, k, [ann1, ann2])
    groups = [eval_media[g * k:(g + 1) * k] for g in range(n_eval)]
    rank1 = [_ranks(ann1.rank(g, p)) for g, p in zip(groups, eval_prompts)]
    rank2 = [_ranks(ann2.rank(g, p)) for g, p in zip(groups, eval_prompts)]
    truth = Annotator(seed=0, noise=0.0, tie_margin=0.0)
    log(f"data: {len(train_pairs)} train pairs, {len(eval_pairs)} held-out pairs ({time.time() - t0:.0f}s)")

    def eval_fn() -> dict:
        m = evaluate_pairs(scorer, eval_pairs.__class__(eval_pairs.a, eval_pairs.b, eval_pairs.prompts, l1))
        if gen_eval is not None:
            m["generated_pooled_accuracy"] = evaluate_pairs(scorer, gen_eval)["pooled_accuracy"]
        return m

    captions = caption_set(modality, n_captions, seed + 3) if n_captions else None
    train_scorer(scorer, train_pairs, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, log=log,
                 log_every=max(1, steps // 10), eval_fn=eval_fn, captions=captions, caption_weight=caption_weight)
    scorer.model.eval()
    final = eval_fn()
    acc = final["pooled_accuracy"]
    ceiling = agreement(l1, l2)
    preds = [scorer.score(g, p, progress=False).tolist() for g, p in zip(groups, eval_prompts)]
    inv = hpdv2_accuracy(preds, rank1)
    inv_ceiling = sum(inversion_score([-r for r in r2], r1) for r1, r2 in zip(rank1, rank2)) / len(rank1)
    u = truth.true_utility(eval_media, eval_media.prompts)
    s = scorer.score(eval_media, eval_media.prompts, progress=False)
    oracle_acc = _agree_with_truth(s, u, k)
    report = {
        "scorer": scorer_name, "seed": seed, "train_pairs": len(train_pairs), "heldout_pairs": len(eval_pairs),
        "steps": steps, "label_annotators": label_annotators, "captions": n_captions, "caption_weight": caption_weight if n_captions else 0.0,
        "init": None if init is None else str(init), "shape_groups": n_shape, "pooled_accuracy": acc, "annotator_ceiling": ceiling, "ratio_to_ceiling": acc / ceiling,
        "hpdv2_inversion": inv, "hpdv2_inversion_ceiling": inv_ceiling,
        "accuracy_vs_true_utility": oracle_acc, "seconds": round(time.time() - t0, 1),
    }
    if gen_eval is not None:
        gu = truth.true_utility(gen_eval.a, gen_eval.prompts) - truth.true_utility(gen_eval.b, gen_eval.prompts)
        gs = scorer.score(gen_eval.a, gen_eval.prompts, progress=False) - scorer.score(gen_eval.b, gen_eval.prompts, progress=False)
        keep = gu.abs() > 1e-6
        report["generated"] = {
            "generator": generator, "generator_steps": generator_steps, "train_groups": n_generated, "heldout_pairs": len(gen_eval),
            "pooled_accuracy": final["generated_pooled_accuracy"], "annotator_ceiling": agreement(gl1, gl2),
            "accuracy_vs_true_utility": float(((gs * gu)[keep] > 0).float().mean()),
        }
        report["generated"]["ratio_to_ceiling"] = report["generated"]["pooled_accuracy"] / report["generated"]["annotator_ceiling"]
    log(json.dumps(report))
    if scorer_name == "synth-hps":
        save_synth_hps(scorer, cfg, out)
    else:
        save_synth_clap(scorer, fe, tok, out)
    atomic_write_json(out / "train_report.json", report)
    return report


def _ranks(order: list[int]) -> list[float]:
    r = [0.0] * len(order)
    for pos, i in enumerate(order):
        r[i] = float(pos)
    return r


def _agree_with_truth(scores: torch.Tensor, utility: torch.Tensor, k: int) -> float:
    good = tot = 0
    for g in range(len(scores) // k):
        for x in range(g * k, (g + 1) * k):
            for y in range(x + 1, (g + 1) * k):
                du = float(utility[x] - utility[y])
                if abs(du) < 1e-6:
                    continue
                tot += 1
                good += (float(scores[x] - scores[y]) * du) > 0
    return good / max(tot, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scorer", choices=["synth-hps", "synth-clap"], required=True)
    ap.add_argument("--out", type=Path, default=None, help="scorer folder (default: assets/models/<scorer>, the one its card loads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=1500, help="train prompts of rendered, corrupted groups")
    ap.add_argument("--n-eval", type=int, default=150)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--label-annotators", type=int, default=3, help="annotators whose mean vote labels each training pair")
    ap.add_argument("--generator", default=None, help="also train on groups sampled from this generator (HPD v2 style)")
    ap.add_argument("--n-generated", type=int, default=600, help="train prompts sampled from --generator")
    ap.add_argument("--k-generated", type=int, default=4, help="samples per prompt from --generator (all pairs are labelled)")
    ap.add_argument("--generator-steps", type=int, default=None, help="sampling steps of --generator (default: its own)")
    ap.add_argument("--captions", type=int, default=0, help="captioned renders of train prompts for the contrastive term (0: none)")
    ap.add_argument("--caption-weight", type=float, default=1.0, help="weight of the contrastive term next to the preference loss")
    ap.add_argument("--shape-groups", type=int, default=0, help="hard-negative groups: one object in each shape, nothing else changed (synth-hps)")
    ap.add_argument("--init", type=Path, default=None, help="fine-tune this trained synth-hps folder instead of a random initialization")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or asset_path("models", args.scorer)
    run(args.scorer, out, args.seed, args.n_train, args.n_eval, 4, args.steps, args.batch_size, args.lr,
        args.label_annotators, args.generator, args.n_generated, args.k_generated, args.captions, args.caption_weight,
        args.generator_steps, args.init, args.shape_groups, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
