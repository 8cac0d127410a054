"""The two H100 anchors the planner is held to, with the settings they were measured under.

`python -m mmpc_rl.bench.plan_anchors` prints planned vs measured peak for each.
"""

from __future__ import annotations

from mmpc_rl.plan.memory import PlanInputs, plan
from mmpc_rl.plan.shapes import image_tokens, model_shape

QWEN7B = "Qwen/Qwen2.5-VL-7B-Instruct"
LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# measured on one H100 80GB by a plain-TRL script (gpu_anchor.py, kept with the project's shared tools, not in this
# repository; its settings are in anchor_inputs below): torch.cuda.max_memory_allocated() / 2**30
MEASURED_GIB = {"bf16": 22.9, "qlora": 11.5}


def anchor_inputs(shape=None, qlora: bool = False) -> PlanInputs:
    """gpu_anchor.py `grpo` / `qlora`: plain TRL 1.16, random weights at the 7B shape, G=16 in one micro-batch, 128
    new tokens forced (min_new_tokens, so no completion padding), one 448 px image, LoRA r=16 alpha 32 dropout 0.05
    on the 7 language linears, checkpointing on, beta 0.04. Its prompt is 374 tokens with the anchor's own tokenizer:
    256 image + 118 text (counted by running its processor). QLoRA: NF4 double-quant through TRL's
    quantization_config (no prepare_model_for_kbit_training), adapters cast to bf16 by TRL."""
    shape = shape or model_shape(QWEN7B)
    return PlanInputs(shape=shape, prompt_text_tokens=118, image_tokens=image_tokens(shape, 448, 448),
                      completion_tokens=128, num_generations=16, micro_batch=16, grad_accum=1,
                      gradient_checkpointing=True, lora_r=16, lora_dropout=0.05, lora_targets=LORA_REGEX,
                      qlora=qlora, kbit_upcast=False, beta=0.04, padded=False)


def main() -> None:
    shape = model_shape(QWEN7B)
    for name, measured in MEASURED_GIB.items():
        planned = plan(anchor_inputs(shape, qlora=name == "qlora")).peak_gb
        print(f"{name}: planned {planned:.2f} GiB, measured {measured} GiB ({(planned - measured) / measured:+.1%})")


if __name__ == "__main__":
    main()
