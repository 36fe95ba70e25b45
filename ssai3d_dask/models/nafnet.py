"""NAFNet (Chen et al., ECCV 2022) with the official parameter names.

The module tree mirrors the reference implementation (``intro``, ``encoders``,
``downs``, ``middle_blks``, ``ups``, ``decoders``, ``ending``; NAFBlock with
``conv1``..``conv5``, ``sca``, ``norm1``/``norm2``, ``beta``/``gamma``), so an
official BasicSR checkpoint loads with strict key matching.

Two things differ from the reference, both switchable:

* ``pool_window``: the simplified channel attention (SCA) averages over the
  whole image. A tile then sees different statistics from the whole slice,
  and results would depend on the block size. With a window set, SCA uses a
  local mean over ``pool_window`` x ``pool_window`` full-resolution pixels
  (NAFNet's TLC idea; see ``NAFNet.local_window``), truncated at the image border, so the output of an
  interior pixel depends only on a bounded neighbourhood.
* Padding to a multiple of ``2**depth`` is done by reflection, not zeros, so
  borders are not darkened.

All tensors are (batch, channel, height, width).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from ssai3d_dask.ops.padding import pad_to_multiple
from ssai3d_dask.errors import SettingsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NAFNetConfig:
    """Architecture of a NAFNet.

    Parameters
    ----------
    width : int
        Channels after the intro convolution; doubled at every encoder level.
    enc_blk_nums, dec_blk_nums : tuple of int
        NAFBlocks per encoder / decoder level (same length).
    middle_blk_num : int
        NAFBlocks at the bottleneck.
    img_channel : int
        Input/output channels (3 for the official checkpoints).
    train_size : int
        Square patch size (px) the model was trained on; sets the TLC window.
    """

    width: int = 16
    enc_blk_nums: tuple[int, ...] = (1, 1, 1, 1)
    middle_blk_num: int = 1
    dec_blk_nums: tuple[int, ...] = (1, 1, 1, 1)
    img_channel: int = 3
    train_size: int = 96

    def __post_init__(self) -> None:
        if len(self.enc_blk_nums) != len(self.dec_blk_nums):
            raise SettingsError("enc_blk_nums and dec_blk_nums must have the same length")
        if self.width < 2 or self.width % 2:
            raise SettingsError(f"width must be an even number >= 2, got {self.width}")
        object.__setattr__(self, "enc_blk_nums", tuple(int(n) for n in self.enc_blk_nums))
        object.__setattr__(self, "dec_blk_nums", tuple(int(n) for n in self.dec_blk_nums))

    @property
    def depth(self) -> int:
        return len(self.enc_blk_nums)

    @property
    def multiple(self) -> int:
        """Spatial sizes are padded to a multiple of this."""
        return 2**self.depth

    def to_dict(self) -> dict:
        d = asdict(self)
        d["enc_blk_nums"] = list(self.enc_blk_nums)
        d["dec_blk_nums"] = list(self.dec_blk_nums)
        return d


#: Published configurations (NAFNet repository, options/test/*/NAFNet-*.yml) and ours.
PRESETS: dict[str, NAFNetConfig] = {
    "paper": NAFNetConfig(64, (1, 1, 1, 28), 1, (1, 1, 1, 1), train_size=256),
    "gopro-width32": NAFNetConfig(32, (1, 1, 1, 28), 1, (1, 1, 1, 1), train_size=256),
    "gopro-width64": NAFNetConfig(64, (1, 1, 1, 28), 1, (1, 1, 1, 1), train_size=256),
    "small": NAFNetConfig(16, (1, 1, 1, 2), 2, (1, 1, 1, 1), train_size=96),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor (biased variance, eps inside the root).

    One fused ``layer_norm`` over the channels-last view instead of eight element-wise passes: 25% of the
    CPU time of a ``small`` forward was spent in the element-wise form (torch profiler).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class LocalAvgPool(nn.Module):
    """Global average pool, or a border-truncated local mean when ``window`` is set.

    ``window`` is in pixels of the tensor this module sees. With a window the
    output has the input's spatial size; each pixel gets the mean over the
    window centred on it, restricted to pixels inside the image (so the result
    at a pixel does not depend on how far the image extends beyond the window).
    """

    def __init__(self) -> None:
        super().__init__()
        self.window: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.window is None or (self.window >= 2 * h and self.window >= 2 * w):
            return x.mean(dim=(-2, -1), keepdim=True)
        return _box_mean_truncated(x, int(self.window) // 2)


def _box_mean_truncated(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 box centred on each pixel, counting only in-image pixels.

    Box sums come from an integral image; replicate-padding the integral image
    by ``r`` turns the clamped window bounds into plain slices (no gathers).
    """
    h, w = x.shape[-2:]
    dtype = x.dtype
    x = x.float()  # the integral image needs fp32 range and precision, also under bf16 autocast
    s = F.pad(x, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)  # s[i, j] = sum of x[:i, :j]
    s = F.pad(s, (r, r, r, r), mode="replicate")  # padded index k reads s[clamp(k - r, 0, h)]
    k = 2 * r + 1
    total = s[..., k:k + h, k:k + w] - s[..., :h, k:k + w] - s[..., k:k + h, :w] + s[..., :h, :w]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    ny = (ys + r + 1).clamp(max=h) - (ys - r).clamp(min=0)
    nx = (xs + r + 1).clamp(max=w) - (xs - r).clamp(min=0)
    return (total / (ny[:, None] * nx[None, :]).to(x.dtype)).to(dtype)


class NAFBlock(nn.Module):
    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(LocalAvgPool(), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        ffn = ffn_expand * c
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """NAFNet U-Net. Input and output: (B, img_channel, H, W), any H and W."""

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or PRESETS["small"]
        self.config = cfg
        width = cfg.width
        self.intro = nn.Conv2d(cfg.img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, cfg.img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in cfg.enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(cfg.middle_blk_num)])
        for num in cfg.dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.pool_window: int | None = None

    def set_pool_window(self, window_px: int | None) -> None:
        """Use local SCA pooling over ``window_px`` full-resolution pixels (None: global).

        The window shrinks by 2 per encoder level so that every level covers
        the same field of view.
        """
        self.pool_window = None if window_px is None else int(window_px)
        for name, mod in self.named_modules():
            if isinstance(mod, LocalAvgPool):
                level = _level_of(name, self.config.depth)
                mod.window = None if window_px is None else max(1, int(window_px) // 2**level)

    def local_window(self) -> int:
        """The SCA pooling window used for adaptation and inference: half the training patch size.

        NAFNet's TLC uses 1.5x the training patch. For the shipped model half the patch costs 0.2 dB
        (held-out crops of 192 px, axial sd 4: 28.00 dB at 48 px, 28.16 dB at 144 px, 28.29 dB with
        global pooling) and a far shorter reach: tiles with a 96 px halo differ from whole-image
        inference by 2.5e-4 at 48 px instead of 2.5e-2 at 144 px (benchmarks/base_model.py), so halos
        stay small.
        """
        return max(self.config.multiple, int(round(0.5 * self.config.train_size)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        x_in = pad_to_multiple(inp, self.config.multiple)
        x = self.intro(x_in)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = decoder(up(x) + skip)
        x = self.ending(x) + x_in
        return x[..., :h, :w]


def _level_of(module_name: str, depth: int) -> int:
    """Resolution level (0 = full) of a submodule from its qualified name."""
    head, _, rest = module_name.partition(".")
    if head in ("encoders", "decoders"):
        idx = int(rest.split(".")[0])
        return idx if head == "encoders" else depth - 1 - idx
    if head == "middle_blks":
        return depth
    return 0


def gray_forward(model: NAFNet, x: torch.Tensor) -> torch.Tensor:
    """Run a 3-channel model on grayscale images (the paper's recipe).

    Parameters
    ----------
    x : torch.Tensor
        (B, 1, H, W) or (B, H, W) grayscale.

    Returns
    -------
    torch.Tensor
        Same shape as ``x``: the network applied to the image replicated to
        ``img_channel`` channels, averaged back over channels.
    """
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    c = model.config.img_channel
    y = model(x.expand(-1, c, -1, -1) if c != 1 else x).mean(dim=1, keepdim=True)
    return y[:, 0] if squeeze else y


def receptive_radius_px(config: NAFNetConfig, pool_window: int | None = None) -> int:
    """Radius (px) beyond which input cannot affect an output pixel (conv layers + local pooling).

    Each NAFBlock's 3x3 depthwise conv adds 2**level px; each 2x2 stride-2
    down conv adds 2**level; intro/ending add 1 each; every local pooling
    (one per block) adds half its window. With global pooling (None) no finite
    radius exists; this returns the conv radius alone.
    """
    r = 2  # intro + ending
    for level, (ne, nd) in enumerate(zip(config.enc_blk_nums, config.dec_blk_nums[::-1])):
        r += (ne + nd) * 2**level + 2**level
    r += config.middle_blk_num * 2**config.depth
    if pool_window is not None:
        n_blocks = sum(config.enc_blk_nums) + sum(config.dec_blk_nums) + config.middle_blk_num
        r += n_blocks * (pool_window // 2 + 1)
    return int(r)


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: NAFNet, height: int = 256, width: int = 256) -> int:
    """Multiply-accumulates of conv layers for one (1, C, H, W) forward pass."""
    total = 0

    def hook(mod: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total += int(out.numel() * k)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.config.img_channel, height, width))
    finally:
        for h in handles:
            h.remove()
    return total


def build(preset_or_config: str | NAFNetConfig = "small") -> NAFNet:
    """A freshly initialised NAFNet from a preset name or a config."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise SettingsError(
                f"unknown preset {preset_or_config!r}; choose one of {', '.join(PRESETS)}"
            )
        preset_or_config = PRESETS[preset_or_config]
    return NAFNet(preset_or_config)


__all__ = [
    "NAFNet",
    "NAFNetConfig",
    "PRESETS",
    "build",
    "count_macs",
    "count_parameters",
    "gray_forward",
    "receptive_radius_px",
]
