"""AMT-S frame interpolation (Li et al., "AMT: All-Pairs Multi-Field Transforms for Efficient Frame
Interpolation", CVPR 2023) for ``motion_smoothness``, with VBench's checkpoint ``amt_model/amt-s.pth``.

Written from Vchitect/VBench@45e79ec ``vbench/third_party/amt`` (``networks/AMT-S.py`` with
``cfgs/AMT-S.yaml``: corr radius 3, 4 correlation levels, 3 flow fields, channels 20/32/44/56, skip 20).
Module and parameter names are AMT's, so ``torch.load(...)["state_dict"]`` loads strictly:

* ``feat_encoder`` — RAFT's small encoder (bottleneck blocks, instance norm) → 84-d features at 1/8;
* ``encoder`` — an IFRNet pyramid (4 levels of stride-2 conv + PReLU) per frame;
* ``decoder4`` … ``decoder1`` — coarse-to-fine bidirectional flows to the middle time ``embt`` and a
  context feature, each level warping the pyramid features with the current flows;
* ``update4/3/2`` — a correlation lookup in the bidirectional all-pairs volume at the flows scaled to
  t=0→1 and 1→0 (linear motion), and a conv "GRU" that refines flows and features;
* ``decoder1`` emits 3 flow pairs, occlusion masks and residuals; ``comb_block`` merges the 3 warped
  candidates into the frame.

``motion_smoothness.py`` runs it on each pair of kept (even) frames with ``embt = 0.5``, frames /255,
replicate-padded to a multiple of 16 (scale 1, which is what VBench's CLI path always uses) and
converts the prediction back with clip(x·255) cast to uint8 (truncation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.bench.backbones import InterpBackbone, LoadContext, _need_file, register_backbone
from mmalign.errors import InputError

AMT_FILE = "amt_model/amt-s.pth"


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: sample ``img`` at pixel + flow (bilinear, border padding, pixel-centre grid)."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w, dtype=img.dtype, device=img.device).view(1, 1, w).expand(b, h, w)
    ys = torch.linspace(-1.0, 1.0, h, dtype=img.dtype, device=img.device).view(1, h, 1).expand(b, h, w)
    grid = torch.stack([xs + flow[:, 0] / ((w - 1.0) / 2.0), ys + flow[:, 1] / ((h - 1.0) / 2.0)], -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def coords_grid(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(b, 1, 1, 1)  # [B, 2 (x, y), h, w]


def convrelu(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad), nn.PReLU(cout))


class Bottleneck(nn.Module):
    """RAFT's bottleneck residual block with instance norm (1×1 → 3×3 (stride) → 1×1)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout // 4, 1)
        self.conv2 = nn.Conv2d(cout // 4, cout // 4, 3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(cout // 4, cout, 1)
        self.norm1, self.norm2, self.norm3 = nn.InstanceNorm2d(cout // 4), nn.InstanceNorm2d(cout // 4), nn.InstanceNorm2d(cout)
        self.downsample = None if stride == 1 else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.InstanceNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class SmallEncoder(nn.Module):
    """RAFT-small feature encoder (instance norm): ``[B, 3, H, W]`` → ``[B, out, H/8, W/8]``."""

    def __init__(self, out: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        dims, strides, cin = (32, 64, 96), (1, 2, 2), 32
        for i, (d, s) in enumerate(zip(dims, strides), 1):
            self.add_module(f"layer{i}", nn.Sequential(Bottleneck(cin, d, s), Bottleneck(d, d, 1)))
            cin = d
        self.conv2 = nn.Conv2d(96, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class ResBlock(nn.Module):
    """IFRNet residual block: the last ``side`` channels get their own convolutions in between."""

    def __init__(self, ch: int, side: int):
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = convrelu(ch, ch), convrelu(side, side)
        self.conv3, self.conv4 = convrelu(ch, ch), convrelu(side, side)
        self.conv5 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.prelu = nn.PReLU(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv3(torch.cat([out[:, : -self.side], self.conv2(out[:, -self.side:])], 1))
        out = self.conv5(torch.cat([out[:, : -self.side], self.conv4(out[:, -self.side:])], 1))
        return self.prelu(x + out)


class Pyramid(nn.Module):
    """IFRNet encoder: ``pyramid{i}`` = stride-2 convrelu + convrelu, one level per channel count."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.n = len(channels)
        cin = 3
        for i, ch in enumerate(channels, 1):
            self.add_module(f"pyramid{i}", nn.Sequential(convrelu(cin, ch, 3, 2, 1), convrelu(ch, ch)))
            cin = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(1, self.n + 1):
            x = getattr(self, f"pyramid{i}")(x)
            out.append(x)
        return out


class Decoder(nn.Module):
    """One coarse-to-fine level: ``convblock`` = convrelu, ResBlock, ConvTranspose ×2.

    The first level (``first=True``) reads the two coarsest features and the time; later levels read
    the context feature, both features warped by the current flows, and the flows, and add their
    output to the 2× upsampled flows."""

    def __init__(self, cin: int, cout: int, skip: int, first: bool = False):
        super().__init__()
        self.first = first
        width = cin * 2 if first else cin * 3
        self.convblock = nn.Sequential(convrelu(width + (1 if first else 4), width), ResBlock(width, skip),
                                       nn.ConvTranspose2d(width, cout, 4, 2, 1))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.first:
            f0, f1, embt = inputs
            return self.convblock(torch.cat([f0, f1, embt.repeat(1, 1, *f0.shape[2:])], 1))
        ft, f0, f1, flow0, flow1 = inputs
        return self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))


class UpdateBlock(nn.Module):
    """AMT's small update block: correlation + flow encodings → conv "GRU" → (Δfeature, Δflows),
    at 1/8 resolution (the context feature is resized by 1/``scale`` and the deltas back by ``scale``)."""

    def __init__(self, cdim: int, scale: int | None, hidden: int = 76, flow_dim: int = 20, corr_dim: int = 64,
                 fc_dim: int = 68, levels: int = 4, radius: int = 3):
        super().__init__()
        self.scale = scale
        planes = levels * (2 * radius + 1) ** 2
        self.convc1 = nn.Conv2d(2 * planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, flow_dim * 2, 7, padding=3)
        self.convf2 = nn.Conv2d(flow_dim * 2, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def head(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(hidden, cout, 3, padding=1))

        self.gru = head(fc_dim + 4 + cdim, hidden)
        self.feat_head = head(hidden, cdim)
        self.flow_head = head(hidden, 4)

    def forward(self, net: torch.Tensor, flow: torch.Tensor, corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lrelu = nn.functional.leaky_relu
        if self.scale is not None:
            net = resize(net, 1 / self.scale)
        cor = lrelu(self.convc1(corr), 0.1)
        flo = lrelu(self.convf2(lrelu(self.convf1(flow), 0.1)), 0.1)
        inp = torch.cat([lrelu(self.conv(torch.cat([cor, flo], 1)), 0.1), flow, net], 1)
        out = self.gru(inp)
        d_net, d_flow = self.feat_head(out), self.flow_head(out)
        if self.scale is not None:
            d_net = resize(d_net, self.scale)
            d_flow = self.scale * resize(d_flow, self.scale)
        return d_net, d_flow


class BidirCorr:
    """All-pairs correlation of two feature maps (/√C) and its transpose, each as a 4-level avg-pool
    pyramid; :meth:`lookup` samples a (2r+1)² window around given coordinates at every level."""

    def __init__(self, f0: torch.Tensor, f1: torch.Tensor, levels: int = 4, radius: int = 3):
        b, c, h, w = f0.shape
        corr = torch.matmul(f0.flatten(2).transpose(1, 2), f1.flatten(2)) / torch.sqrt(torch.tensor(float(c)))  # [B, hw, hw]
        self.radius, self.shape = radius, (b, h, w)
        self.pyr = [corr.reshape(b * h * w, 1, h, w)]
        self.pyr_t = [corr.transpose(1, 2).reshape(b * h * w, 1, h, w)]
        for _ in range(levels - 1):
            self.pyr.append(F.avg_pool2d(self.pyr[-1], 2, 2))
            self.pyr_t.append(F.avg_pool2d(self.pyr_t[-1], 2, 2))

    @staticmethod
    def _sample(vol: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        h, w = vol.shape[-2:]
        grid = torch.stack([2 * coords[..., 0] / (w - 1) - 1, 2 * coords[..., 1] / (h - 1) - 1], -1)
        return F.grid_sample(vol, grid, align_corners=True)

    def lookup(self, c0: torch.Tensor, c1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, (b, h, w) = self.radius, self.shape
        d = torch.linspace(-r, r, 2 * r + 1, device=c0.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        delta = torch.stack([dy, dx], -1).view(1, 2 * r + 1, 2 * r + 1, 2)  # AMT adds (dy, dx) to (x, y)
        outs = ([], [])
        for i, (vol, vol_t) in enumerate(zip(self.pyr, self.pyr_t)):
            for out, v, c in ((outs[0], vol, c0), (outs[1], vol_t, c1)):
                centre = c.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2) / 2**i
                out.append(self._sample(v, centre + delta).view(b, h, w, -1))
        return tuple(torch.cat(o, -1).permute(0, 3, 1, 2).contiguous().float() for o in outs)


class AMTS(nn.Module):
    """AMT-S: ``forward(img0, img1, embt)`` → the frame at time ``embt`` (images ``[B, 3, H, W]`` in [0, 1],
    H and W multiples of 16; scale factor 1)."""

    def __init__(self, channels: tuple[int, ...] = (20, 32, 44, 56), skip: int = 20, num_flows: int = 3,
                 radius: int = 3, levels: int = 4):
        super().__init__()
        self.radius, self.levels, self.num_flows = radius, levels, num_flows
        self.feat_encoder = SmallEncoder(84)
        self.encoder = Pyramid(channels)
        self.decoder4 = Decoder(channels[3], channels[2] + 4, skip, first=True)
        self.decoder3 = Decoder(channels[2], channels[1] + 4, skip)
        self.decoder2 = Decoder(channels[1], channels[0] + 4, skip)
        self.decoder1 = Decoder(channels[0], 8 * num_flows, skip)
        self.update4 = UpdateBlock(channels[2], None, levels=levels, radius=radius)
        self.update3 = UpdateBlock(channels[1], 2, levels=levels, radius=radius)
        self.update2 = UpdateBlock(channels[0], 4, levels=levels, radius=radius)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    @staticmethod
    def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flow0, flow1 = out[:, :4].chunk(2, 1)
        return flow0, flow1, out[:, 4:]

    def _refine(self, update: UpdateBlock, corr: BidirCorr, coord: torch.Tensor, flow0: torch.Tensor, flow1: torch.Tensor,
                ft: torch.Tensor, embt: torch.Tensor, down: int):
        """Correlation at the flows scaled to 0→1 / 1→0 (linear motion), then a residual update."""
        f0, f1 = (flow0, flow1) if down == 1 else (resize(flow0, 1 / down) / down, resize(flow1, 1 / down) / down)
        c0, c1 = corr.lookup(coord + f1 / embt, coord + f0 / (1.0 - embt))
        d_ft, d_flow = update(ft, torch.cat([f0, f1], 1), torch.cat([c0, c1], 1))
        d0, d1 = d_flow.chunk(2, 1)
        return flow0 + d0, flow1 + d1, ft + d_ft

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> torch.Tensor:
        mean = torch.cat([img0, img1], 2).mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape
        coord = coords_grid(b, h // 8, w // 8, img0.device)
        fmap0, fmap1 = self.feat_encoder(torch.cat([img0, img1])).chunk(2)
        corr = BidirCorr(fmap0, fmap1, self.levels, self.radius)
        p0, p1 = self.encoder(img0), self.encoder(img1)

        flow0, flow1, ft = self._split(self.decoder4(p0[3], p1[3], embt))
        flow0, flow1, ft = self._refine(self.update4, corr, coord, flow0, flow1, ft, embt, 1)
        for dec, upd, lvl, down in ((self.decoder3, self.update3, 2, 2), (self.decoder2, self.update2, 1, 4)):
            n0, n1, ft = self._split(dec(ft, p0[lvl], p1[lvl], flow0, flow1))
            flow0, flow1 = n0 + 2.0 * resize(flow0, 2.0), n1 + 2.0 * resize(flow1, 2.0)
            flow0, flow1, ft = self._refine(upd, corr, coord, flow0, flow1, ft, embt, down)

        n = self.num_flows
        out = self.decoder1(ft, p0[0], p1[0], flow0, flow1)
        d0, d1, mask, res = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        flow0 = d0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1)  # [B, 2n, H, W]
        flow1 = d1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1)
        # merge the n warped candidates: mask·warp(img0) + (1−mask)·warp(img1) + mean + residual
        rep = lambda x: x.repeat_interleave(n, 0)  # noqa: E731  [B·n, ...], candidate-minor
        w0 = warp(rep(img0), flow0.reshape(b * n, 2, h, w))
        w1 = warp(rep(img1), flow1.reshape(b * n, 2, h, w))
        m = torch.sigmoid(mask).reshape(b * n, 1, h, w)
        cand = (m * w0 + (1 - m) * w1 + rep(mean) + res.reshape(b * n, 3, h, w)).reshape(b, n, 3, h, w)
        return (cand.mean(1) + self.comb_block(cand.reshape(b, n * 3, h, w))).clamp(0, 1)


def pad16(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """AMT ``InputPadder(divisor=16)``: replicate-pad H and W evenly to a multiple of 16."""
    h, w = x.shape[-2:]
    ph, pw = (16 - h % 16) % 16, (16 - w % 16) % 16
    pad = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
    return F.pad(x, pad, mode="replicate"), pad


def amt_backbone_from_model(model: AMTS, name: str = "amt-s", **kw) -> InterpBackbone:
    """Midpoints of uint8 frame pairs as ``motion_smoothness.py`` computes them (embt 0.5, /255,
    padded to ×16, unpadded, clip(x·255) → uint8 truncating)."""
    model.eval()
    device = kw.pop("device", torch.device("cpu"))
    dtype = kw.pop("dtype", torch.float32)
    batch = kw.pop("batch_size", 4)

    def interp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        if a.shape[0] and min(pad16(a[:1].float())[0].shape[-2:]) < 128:
            raise InputError(f"{name}: AMT-S's 4-level correlation pyramid needs frames of at least 128x128 px "
                             f"(this video is {a.shape[-2]}x{a.shape[-1]}); too small for motion_smoothness")
        for i in range(0, a.shape[0], batch):
            x0, pad = pad16(a[i : i + batch].float() / 255.0)
            x1, _ = pad16(b[i : i + batch].float() / 255.0)
            embt = torch.full((x0.shape[0], 1, 1, 1), 0.5)
            with torch.no_grad():
                y = model(x0.to(device, dtype), x1.to(device, dtype), embt.to(device, dtype)).float().cpu()
            y = y[..., pad[2] : y.shape[-2] - pad[3], pad[0] : y.shape[-1] - pad[1]]
            out.append((y * 255.0).clamp(0, 255).to(torch.uint8))  # truncation, as tensor2img's astype(uint8)
        return torch.cat(out) if out else torch.zeros(0, 3, *a.shape[-2:], dtype=torch.uint8)

    return InterpBackbone(name, interp_fn=interp, **kw)


@register_backbone("amt-s")
def _amt(ctx: LoadContext) -> InterpBackbone:
    path = _need_file(ctx, AMT_FILE, "AMT-S (motion_smoothness)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = AMTS()
    model.load_state_dict(ckpt["state_dict"] if "state_dict" in ckpt else ckpt, strict=True)
    # fp32 whatever ctx.dtype: the prediction is truncated to uint8, so rounding shows directly (VBench runs fp32)
    return amt_backbone_from_model(model.to(ctx.device), device=ctx.device, origin="vbench")
