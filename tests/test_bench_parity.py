"""Same random backbone weights ⇒ our subject/background consistency equal a direct reimplementation
of VBench's code path (Vchitect/VBench@45e79ec ``vbench/utils.py`` transforms,
``subject_consistency.py``, ``background_consistency.py``) to 1e-5, on 4 tiny videos."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from mmalign.bench.backbones import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_backbone_from_model,
    dino_backbone_from_model,
)
from mmalign.bench.report import aggregate
from mmalign.bench.runner import run_benchmark
from mmalign.bench.suites import Entry, Suite
from mmalign.media import VideoBatch, save_media

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_dino() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                             dynamic_img_size=True).eval()


def tiny_clip() -> torch.nn.Module:
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32, image_size=224)
    text = CLIPTextCfg(context_length=16, vocab_size=64, width=16, heads=1, layers=1)
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


def decode_pyav(path: str) -> torch.Tensor:
    """Independent decode (RGB uint8 [T,3,H,W]), as VBench's load_video gives before the float cast."""
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def reference_consistency(videos: list[torch.Tensor], encode, transform, per_frame: bool) -> float:
    """VBench subject_consistency.py / background_consistency.py, 1-GPU aggregation."""
    sim, cnt = 0.0, 0
    for frames in videos:
        images = transform(frames.float())  # load_video returns float32 0-255
        if not per_frame:
            with torch.no_grad():
                all_feats = F.normalize(encode(images), dim=-1, p=2)
        former = first = None
        for i in range(len(images)):
            with torch.no_grad():
                feat = F.normalize(encode(images[i].unsqueeze(0)), dim=-1, p=2) if per_frame else all_feats[i : i + 1]
            if i == 0:
                first = feat
            else:
                pre = max(0.0, F.cosine_similarity(former, feat).item())
                fir = max(0.0, F.cosine_similarity(first, feat).item())
                sim += (pre + fir) / 2
                cnt += 1
            former = feat
    return sim / cnt


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    g = torch.Generator().manual_seed(0)
    specs = [(32, 32), (64, 64), (48, 32), (256, 320)]  # (H, W): square, non-square, larger than 224
    names = []
    for k, (h, w) in enumerate(specs):
        base = torch.rand(1, 3, h // 8, w // 8, generator=g)
        frames = []
        for t in range(5):
            shifted = torch.roll(base, shifts=t, dims=-1)
            noise = torch.rand(1, 3, h, w, generator=g)  # per-frame content so features really differ
            frames.append(0.4 * F.interpolate(shifted, size=(h, w), mode="bilinear", align_corners=False)[0] + 0.6 * noise[0])
        vid = VideoBatch(torch.stack(frames)[None].clamp(0, 1), fps=8.0)
        names.append(f"video {k}-0")
        save_media(vid, folder, [names[-1]])
    return folder, names


def test_subject_and_background_consistency_match_reference(four_videos, tmp_path):
    folder, names = four_videos
    dino, clip = tiny_dino(), tiny_clip()
    suite = Suite(name="parity", modality="video", entries=[Entry(n[:-2], ("subject_consistency", "background_consistency"))
                                                            for n in names],
                  dimensions=["subject_consistency", "background_consistency"], samples_per_prompt=1,
                  backbones={"dino": ["t-dino"], "clip": ["t-clip"]})
    pre = {"t-dino": dino_backbone_from_model(dino, name="t-dino", batch_size=3),
           "t-clip": clip_backbone_from_model(clip, name="t-clip", batch_size=3)}
    run = run_benchmark(suite, folder, tmp_path / "out", progress=False, preloaded=pre, device="cpu")
    ours = aggregate(run)
    assert len(run.records) == 4 and not run.skipped

    videos = [decode_pyav(str(folder / f"{n}.mp4")) for n in names]
    dino_tr = T.Compose([T.Resize(224, antialias=False), T.Lambda(lambda x: x / 255.0), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    clip_tr = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False), T.CenterCrop(224),
                         T.Lambda(lambda x: x / 255.0), T.Normalize(CLIP_MEAN, CLIP_STD)])

    def dino_hub_like(x: torch.Tensor) -> torch.Tensor:  # the hub model's stride-16 conv floors H and W
        return dino(x[..., : x.shape[-2] // 16 * 16, : x.shape[-1] // 16 * 16])

    ref_subject = reference_consistency(videos, dino_hub_like, dino_tr, per_frame=True)  # DINO: one frame per pass
    ref_background = reference_consistency(videos, clip.encode_image, clip_tr, per_frame=False)  # CLIP: one batch
    assert ours["subject_consistency"] == pytest.approx(ref_subject, abs=1e-5)
    assert ours["background_consistency"] == pytest.approx(ref_background, abs=1e-5)
    # frames really differ under the tiny random models: 1 - score is far above the tolerance
    assert 1 - ref_subject > 20e-5 and 1 - ref_background > 20e-5
