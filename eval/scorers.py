"""The heavy models behind BERTScore, LPIPS and CLIP, each loaded once from a hub id or a local path (offline).

Nothing here downloads: a hub id works only when it is already in the local Hugging Face cache. Every loader fails
with a one-line ModelLoadError that says which local file or folder to pass instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from mmpc_rl.errors import ConfigError, ModelLoadError

# bert_score's own table: roberta-large scores from its 17th layer (the `evaluate` default the authors used)
KNOWN_BERTSCORE_LAYERS = {"roberta-large": 17, "microsoft/deberta-xlarge-mnli": 40, "bert-base-uncased": 9}


def load_bertscore(name_or_path: str, num_layers: int | None = None, batch_size: int = 64, device: str | None = None):
    """A `bert_score.BERTScorer`: idf off, no baseline rescaling, the paper's setup. A local folder needs
    `num_layers` unless it is a copy of a model bert_score knows (e.g. roberta-large: 17)."""
    from bert_score import BERTScorer

    base = Path(name_or_path).name if os.path.isdir(name_or_path) else name_or_path
    layers = num_layers or KNOWN_BERTSCORE_LAYERS.get(base)
    if layers is None:
        raise ConfigError(f"bertscore_layers is required for {name_or_path!r} (roberta-large uses 17)")
    try:
        return BERTScorer(model_type=str(name_or_path), num_layers=int(layers), idf=False, batch_size=batch_size,
                          rescale_with_baseline=False, device=device or "cpu")
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load the BERTScore encoder {name_or_path!r} ({str(e).splitlines()[0][:160]}); there is no "
            "network here: pass bertscore=/path/to/roberta-large (a local copy) or leave bertscore unset"
        ) from None


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


def build_lpips_net(backbone: str | os.PathLike | None = None):
    """`lpips.LPIPS(net="alex")` with its shipped linear heads; the AlexNet trunk comes from `backbone` (torchvision
    `alexnet` state dict: .pth or .safetensors), or stays random when None (tests only: values are meaningless)."""
    import lpips
    import torch

    with warnings.catch_warnings():  # torchvision deprecation noise from inside lpips
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if backbone is None:
        return net
    path = Path(backbone)
    if not path.is_file():
        raise ModelLoadError(f"LPIPS backbone {str(path)!r} is not a file: pass torchvision's alexnet weights "
                             "(alexnet-owt-7be5be79.pth) as lpips=/path/to/file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    loaded = 0
    for k in range(1, net.net.N_slices + 1):
        for idx, module in getattr(net.net, f"slice{k}").named_children():
            for pname, param in module.named_parameters(recurse=False):
                key = f"features.{idx}.{pname}"
                if key not in state or state[key].shape != param.shape:
                    raise ModelLoadError(f"{path} is not a torchvision AlexNet state dict (no {key!r} of shape "
                                         f"{tuple(param.shape)})")
                param.data.copy_(state[key])
                loaded += 1
    return net


def load_lpips(backbone: str | os.PathLike | None = None, channel_order: str = "bgr") -> LpipsMetric:
    """`backbone`: torchvision AlexNet weights, or "random" for smoke runs (said aloud: the values mean nothing)."""
    if str(backbone) == "random":
        print("mmpc-rl: lpips=random: AlexNet trunk with random weights; LPIPS values are not comparable")
        backbone = None
    return LpipsMetric(build_lpips_net(backbone), channel_order)


def load_clip(name_or_path: str):
    """A CLIP image embedder (PIL list -> n x d L2-normalised tensor) from the project's CLIP module."""
    from mmpc_rl.clip import load_embedder

    return load_embedder(name_or_path)


def build_scorers(tasks, *, bertscore: str | None = None, bertscore_layers: int | None = None,
                  lpips: str | None = None, lpips_channel_order: str = "bgr", clip: str | None = None,
                  renderer=None, resize: str = "cv2"):
    """The heavy models a CQBench run needs for `tasks` ("i2t"/"t2i"), for the CLI and the training callback alike:
    BERTScore for titles; LPIPS, CLIP and the renderer for images. A metric whose model is not given is left out."""
    from mmpc_rl.eval.runner import Scorers
    from mmpc_rl.models import resolve_model_path

    sc = Scorers(resize=resize)
    if "i2t" in tasks and bertscore:
        sc.bertscore = load_bertscore(resolve_model_path(bertscore, kind="BERTScore encoder"), bertscore_layers)
    if "t2i" in tasks:
        sc.lpips = load_lpips(lpips, lpips_channel_order) if lpips else None
        sc.clip = load_clip(clip) if clip else None
        sc.renderer = renderer
    return sc
