"""Loading a LoRA adapter's weights so that a misfit is an error. PEFT only warns when an adapter's tensor names do
not match the model (missing keys) and says nothing of tensors it has no place for (unexpected keys): the adapter
then runs as the base model, or half of it, and every number looks plausible."""

from __future__ import annotations

import os
from pathlib import Path

from mmpc_rl.errors import ModelLoadError


def _names(keys: list[str], n: int = 2) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _misfit(folder, error: RuntimeError) -> ModelLoadError:
    first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)[:200])
    return ModelLoadError(f"adapter {Path(folder)} does not fit the model: {first}")


def attach_adapter(model, folder: str | os.PathLike, is_trainable: bool = False):
    """`PeftModel.from_pretrained(model, folder)`, every tensor of the adapter in place (load_adapter_weights)."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
    except RuntimeError as e:  # a shape that differs
        raise _misfit(folder, e) from None
    load_adapter_weights(peft_model, folder)  # the same weights again, with PEFT's report of what did not fit
    return peft_model


def load_adapter_weights(model, folder: str | os.PathLike, adapter_name: str = "default") -> None:
    """Load `folder`'s adapter weights into `model`'s adapter `adapter_name` (a PeftModel that has it) with PEFT's
    own key mapping; ModelLoadError in one line when a weight of the adapter has no place in the model, an adapter
    weight of the model is not in the file, or a shape differs."""
    from peft import set_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.utils import load_peft_weights

    what = f"adapter {Path(folder)}"
    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"),
                                           adapter_name=adapter_name)
    except RuntimeError as e:  # torch's load_state_dict: size mismatch
        raise _misfit(folder, e) from None
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(model.peft_config[adapter_name].peft_type, "")
    missing = [k for k in result.missing_keys if prefix in k and adapter_name in k]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = ([f"{len(unexpected)} of its tensors have no place in the model ({_names(unexpected)})"]
                 if unexpected else [])
        parts += [f"{len(missing)} adapter weights of the model are not in it ({_names(missing)})"] if missing else []
        raise ModelLoadError(f"{what} does not fit the model: {'; '.join(parts)} (another base model, or other "
                             "lora.target_modules?)")
