"""MUSIQ (Ke et al., "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021) for ``imaging_quality``.

VBench (Vchitect/VBench@45e79ec ``vbench/imaging_quality.py``) scores every frame with pyiqa's
``MUSIQ(pretrained_model_path=pyiqa_model/musiq_spaq_ckpt-358bb6af.pth)`` (pyiqa 0.1.x
``archs/musiq_arch.py``, ``data/multiscale_trans_util.py``; num_class 1). Written here with the same
module and parameter names, so that checkpoint loads strictly without pyiqa:

* input x in [0, 1] → 2x − 1; a multi-scale patch sequence: the frame resized (bicubic, aspect kept,
  longer side 224 and 384, rounded sizes) and at its own resolution, cut into 32×32 patches
  ("same" zero padding), each scale's sequence padded with masked zeros to ⌈L/32⌉² (the original
  resolution: all its patches); per patch a hashed 10×10 spatial position (nearest-neighbour map
  of the patch grid onto the 10×10 grid), its scale index and a mask;
* a ResNet stem per patch (weight-standardised 7×7/2 conv, GroupNorm, ReLU, TF-"same" 3×3/2 max
  pool, one bottleneck block), flattened and embedded to 384-d; hashed-position and scale
  embeddings; a class token; 14 pre-norm transformer blocks (6 heads; masked pairs get −1000
  before the softmax); the class token through ``head`` → the score (0–100 for SPAQ).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.bench.backbones import LoadContext, ScoreBackbone, _need_file, musiq_preprocess, register_backbone

MUSIQ_FILE = "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "same" zero padding for a ``kernel``/``stride`` window (extra pixel right/bottom)."""
    h, w = x.shape[-2:]
    ph = (math.ceil(h / stride) - 1) * stride + kernel - h
    pw = (math.ceil(w / stride) - 1) * stride + kernel - w
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class StdConv(nn.Conv2d):
    """Conv2d with weight standardisation (per output channel: zero mean, unit std + 1e-5) and "same" padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        w = w / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(same_pad(x, self.kernel_size[0], self.stride[0]), w, self.bias, self.stride)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.gn1 = StdConv(cin, cin, 1, 1, bias=False), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2, self.gn2 = StdConv(cin, cin, 3, 1, bias=False), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3, self.gn3 = StdConv(cin, cout, 1, 1, bias=False), nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj, self.gn_proj = StdConv(cin, cout, 1, 1, bias=False), nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x))
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + identity)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (m(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for m in (self.query, self.key, self.value))
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        pair = mask[:, None, :, None] & mask[:, None, None, :]
        att = att.masked_fill(~pair, -1e3).softmax(-1)  # masked pairs: −1000, not −inf (as MUSIQ)
        return self.out((att @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, mlp: int, heads: int):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, mlp)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _Param(nn.Module):
    """Holds one embedding table under MUSIQ's parameter name."""

    def __init__(self, name: str, *shape: int):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.zeros(*shape)))


class Encoder(nn.Module):
    def __init__(self, dim: int, mlp: int, heads: int, layers: int, scales: int, grid: int):
        super().__init__()
        self.posembed_input = _Param("position_emb", 1, grid * grid, dim)
        self.scaleembed_input = _Param("scale_emb", scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": Block(dim, mlp, heads) for i in range(layers)})

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.posembed_input.position_emb[0][spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        for blk in self.transformer.values():
            x = blk(x, mask)
        return self.encoder_norm(x)


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """Index into the grid×grid table of each patch of a count_h×count_w grid (nearest-neighbour hash)."""
    g = torch.arange(grid).float()[None, None]
    hw = F.interpolate(g, count_w, mode="nearest")[0, 0]  # [count_w]
    hh = F.interpolate(g, count_h, mode="nearest")[0, 0]  # [count_h]
    return (hh[:, None] * grid + hw[None, :]).reshape(-1).long()


def multiscale_patches(x: torch.Tensor, patch: int = 32, grid: int = 10, sides: tuple[int, ...] = (224, 384)):
    """Patches ``[N, L, 3·patch²]``, hashed positions, scale ids and masks ``[N, L]`` of images ``[N, 3, H, W]``:
    each resized scale padded to ⌈side/patch⌉² positions, then the original resolution (all patches)."""
    n, _, h, w = x.shape
    parts = []
    scales = [(s, round(h * s / max(h, w)), round(w * s / max(h, w))) for s in sorted(sides)]
    for sid, (side, rh, rw) in enumerate(scales + [(None, h, w)]):
        img = x if side is None else F.interpolate(x, (rh, rw), mode="bicubic", align_corners=False)
        p = F.unfold(same_pad(img, patch, patch), patch, stride=patch).transpose(1, 2)  # [N, L, 3·patch²]
        ch, cw = math.ceil(rh / patch), math.ceil(rw / patch)
        pos = hashed_positions(grid, ch, cw).expand(n, -1)
        sc = torch.full_like(pos, sid)
        mask = torch.ones(n, p.shape[1], dtype=torch.bool)
        if side is not None:  # pad (zeros, masked) or cut to max_seq_len = ⌈side/patch⌉²
            m = math.ceil(side / patch) ** 2
            pad = max(0, m - p.shape[1])
            p = F.pad(p, (0, 0, 0, pad))[:, :m]
            pos, sc, mask = (F.pad(t, (0, pad))[:, :m] for t in (pos, sc, mask))
        parts.append((p, pos, sc, mask))
    return tuple(torch.cat(t, 1) for t in zip(*parts))


class MUSIQ(nn.Module):
    """MUSIQ with pyiqa's defaults (patch 32, 384-d, 14 layers, 6 heads, MLP 1152, 3 scales, 10×10 hash grid)."""

    def __init__(self, num_class: int = 1, patch: int = 32, dim: int = 384, mlp: int = 1152, heads: int = 6,
                 layers: int = 14, grid: int = 10, sides: tuple[int, ...] = (224, 384)):
        super().__init__()
        self.patch, self.grid, self.sides = patch, grid, sides
        self.conv_root = StdConv(3, 64, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, 64, eps=1e-6)
        self.block1 = Bottleneck(64, 256)
        self.embedding = nn.Linear(256 * (patch // 4) ** 2, dim)
        self.transformer_encoder = Encoder(dim, mlp, heads, layers, len(sides) + 1, grid)
        self.head = nn.Linear(dim, num_class) if num_class == 1 else nn.Sequential(nn.Linear(dim, num_class), nn.Softmax(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` in [0, 1] → scores ``[N]`` (the mean opinion score of the head's output)."""
        patches, pos, scale, mask = multiscale_patches((x - 0.5) * 2, self.patch, self.grid, self.sides)
        n, seq = patches.shape[:2]
        y = patches.reshape(n * seq, 3, self.patch, self.patch)
        y = F.relu(self.gn_root(self.conv_root(y)))
        y = F.max_pool2d(same_pad(y, 3, 2), 3, 2)
        y = self.block1(y).permute(0, 2, 3, 1).reshape(n, seq, -1)
        y = self.transformer_encoder(self.embedding(y), pos.to(y.device), scale.to(y.device), mask.to(y.device))
        q = self.head(y[:, 0])  # [N, C]
        return (q * torch.arange(1, q.shape[-1] + 1, device=q.device)).sum(-1)  # dist_to_mos (C = 1: the score)


def musiq_backbone_from_model(model: MUSIQ, name: str = "musiq-spaq", **kw) -> ScoreBackbone:
    """One frame per call, VBench's ``longer`` preprocessing (longer side ≤ 512), score on 0–100."""
    model.eval()
    device = kw.pop("device", torch.device("cpu"))

    def score(frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([model(musiq_preprocess(f)[None].to(device))[0].float().cpu() for f in frames])

    return ScoreBackbone(name, score_fn=score, **kw)


@register_backbone("musiq-spaq")
def _musiq(ctx: LoadContext) -> ScoreBackbone:
    path = _need_file(ctx, MUSIQ_FILE, "MUSIQ-SPAQ (imaging_quality)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("params", state)
    model = MUSIQ()
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    return musiq_backbone_from_model(model.to(ctx.device), device=ctx.device, batch_size=1, origin="vbench")
