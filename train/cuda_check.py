"""No silent CPU training: a recipe whose policy has >= 1 B parameters refuses to start without a usable CUDA device,
before anything is loaded or written, unless it says `model.device=cpu` (or `trainer.use_cpu=true`).

Without this, a GPU box whose driver is too old for the installed torch (torch.cuda.is_available() is False) would
train a 7B policy on the CPU in float32 after one printed line: hours per step. The parameters are counted on the
meta device by the planner's shape reader (mmpc_rl.plan.shapes), so nothing is downloaded; why CUDA is unusable is
torch's own reason, the error `torch.cuda.init()` raises."""

from __future__ import annotations

from pathlib import Path

from mmpc_rl.config import Recipe
from mmpc_rl.errors import ConfigError, MMPCError
from mmpc_rl.plan.shapes import model_shape

GPU_POLICY_PARAMS = 1_000_000_000  # from here on, CPU training is opt-in
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")  # there when the NVIDIA kernel driver is loaded


def wants_cpu(recipe: Recipe) -> bool:
    return recipe.model.device == "cpu" or bool(recipe.trainer.get("use_cpu"))


def policy_params(recipe: Recipe) -> int | None:
    """The policy's parameter count from its config (meta device); None when its config cannot be read here."""
    try:
        return model_shape(str(recipe.model.name_or_path), recipe.model.revision).total_params
    except MMPCError:
        return None


def cuda_found() -> str:
    """What torch sees, in words: a CPU-only build, no device, or a driver it cannot use (with torch's reason)."""
    import torch

    if torch.version.cuda is None:
        return f"no CUDA: torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
        reason = "torch sees no device"
    except Exception as e:  # noqa: BLE001 - whatever torch raises is the reason to report
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
    if NVIDIA_DRIVER.is_file():
        driver = (NVIDIA_DRIVER.read_text().splitlines() or ["an NVIDIA driver"])[0].strip()
        return f"CUDA present but unusable: {reason} ({driver}; torch {torch.__version__} is built for CUDA " \
               f"{torch.version.cuda})"
    return f"no CUDA device (torch {torch.__version__}: {reason})"


def refuse_cpu_training(recipe: Recipe) -> None:
    """Raise a one-line ConfigError when a >= 1 B policy would train on the CPU without being asked to."""
    if wants_cpu(recipe):
        return
    import torch

    if torch.cuda.is_available():
        return
    params = policy_params(recipe)
    if params is None or params < GPU_POLICY_PARAMS:
        return
    raise ConfigError(f"recipe {recipe.name} trains a {params / 1e9:.1f} B-parameter policy "
                      f"({recipe.model.name_or_path}) and {cuda_found()}; on the CPU in float32 a step takes hours: "
                      "add model.device=cpu to train there anyway")
