"""The metric models a CQBench run needs (BERTScore, LPIPS, CLIP, the renderer), loaded through mmpc_rl.models.

Loading, caching and the one-line errors live in mmpc_rl.models; this module keeps the LPIPS metric wrapper and
picks the models a run's tasks need.
"""

from __future__ import annotations

import os

import numpy as np

from mmpc_rl.clip import ClipEmbedder
from mmpc_rl.errors import ConfigError
from mmpc_rl.eval.runner import Scorers
from mmpc_rl.models import load_bertscore, load_lpips_net


class LpipsMetric:
    """LPIPS v0.1 AlexNet on two [0,1] RGB float HxWx3 arrays. `channel_order="bgr"` (default) feeds the network
    BGR as the authors' OpenCV pipeline did; "rgb" is what LPIPS was trained on."""

    def __init__(self, net, channel_order: str = "bgr"):
        if channel_order not in ("bgr", "rgb"):
            raise ConfigError(f"lpips channel order {channel_order!r}; valid choices: bgr, rgb")
        self.net, self.channel_order = net.eval(), channel_order

    def __call__(self, ref01: np.ndarray, gen01: np.ndarray) -> float:
        import torch

        def tensor(x: np.ndarray):
            if self.channel_order == "bgr":
                x = x[:, :, ::-1]
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
            return t * 2 - 1

        with torch.no_grad():
            # the authors passed (generated, real); LPIPS is symmetric up to float rounding
            return float(self.net(tensor(gen01), tensor(ref01)).flatten()[0])


def load_lpips(backbone: str | os.PathLike | None = None, channel_order: str = "bgr") -> LpipsMetric:
    """`backbone`: torchvision AlexNet weights, or "random" for smoke runs (said aloud: the values mean nothing)."""
    if str(backbone) == "random":
        print("mmpc-rl: lpips=random: AlexNet trunk with random weights; LPIPS values are not comparable")
        backbone = None
    return LpipsMetric(load_lpips_net(backbone), channel_order)


def build_scorers(tasks, *, bertscore: str | None = None, bertscore_layers: int | None = None,
                  lpips: str | None = None, lpips_channel_order: str = "bgr", clip: str | None = None,
                  renderer=None, resize: str = "cv2"):
    """The heavy models a CQBench run needs for `tasks` ("i2t"/"t2i"), for the CLI and the training callback alike:
    BERTScore for titles; LPIPS, CLIP and the renderer for images. A metric whose model is not given is left out."""
    sc = Scorers(resize=resize)
    if "i2t" in tasks and bertscore:
        sc.bertscore = load_bertscore(bertscore, bertscore_layers)
    if "t2i" in tasks:
        sc.lpips = load_lpips(lpips, lpips_channel_order) if lpips else None
        sc.clip = ClipEmbedder.from_pretrained(clip) if clip else None
        sc.renderer = renderer
    return sc
