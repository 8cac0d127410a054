"""The instructions the policy is given, by name. The prompt changes every CQBench number, so each result records
the name of the prompt that produced it.

`paper` (the default): the authors' wording, verbatim from their released inference script (GAIR-Lab/MMPCBench,
CQBench/imagine_amazon_data_bench.py: `infer_product_title` and `infer_image_prompt`), quirks kept, in the wording
that script gives the model's family (its `get_model_type`: a name containing qwen, gemma, internvl or llava; any
other name gets the Qwen branch). Qwen2.5-VL's title prompt has "The output must not be empty, blank, or newline —
directly give the answer." (no space before "The title") and ends in "Output:"; Gemma-3's (and InternVL's, LLaVA's)
has neither. The image-prompt wording is the same for every family. The paper itself prints no prompt.

`paper-rec`: the wording of the authors' RecBench generation script (Recbench/imagine_amazon_data_rec.py), which
gives every family, Qwen included, the shorter title prompt.

`detailed`: this project's earlier prompts, which ask for more than the authors did (the brand if visible, the
product type and key attributes; a white studio background for renders). They are not the paper's: results made
with them are not comparable with the paper's tables.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpc_rl.errors import ConfigError, did_you_mean

DEFAULT_PROMPT = "paper"

_EXAMPLE_TITLE = "HydroFlow 24oz Stainless Steel Insulated Water Bottle with Leak-Proof Design"
PAPER_I2T = (
    "You are an Amazon product title generation assistant. "
    "Given only the product image, generate a suitable Amazon product title. "
    "Generate a JSON object with only the key: 'title'. "
    "Make sure the output is a valid JSON object that can be parsed. "
    "IMPORTANT: Please output in English only. The output must not be empty, blank, or newline — directly give the "
    "answer."
    "The title should be descriptive, professional, and suitable for an Amazon listing. "
    "For example, if the image shows a stainless steel water bottle, you might output:\n"
    "{\n"
    f'  "title": "{_EXAMPLE_TITLE}"\n'
    "}\n"
    "Output:"
)
# str.format template: {description} is the product text, doubled braces are literal
PAPER_T2I = (
    "You are a professional product photographer and prompt engineer. "
    "Given a product description, generate a detailed prompt for creating a product cover image. "
    "The prompt should be suitable for a diffusion model to generate a high-quality product photo. "
    "Generate a JSON object with only the key: 'prompt'. "
    "Make sure the output is a valid JSON object that can be parsed. "
    "IMPORTANT: Please output in English only. "
    "The prompt should be descriptive and professional for commercial product photography. "
    "CRITICAL: The prompt must be within 77 tokens maximum. "
    "Keep it concise but descriptive.\n\n"
    "Product description: {description}\n\n"
    "Example output format:\n"
    "{{\n"
    '  "prompt": "professional product photography of a luxury watch on marble surface, soft lighting, high-end '
    'commercial style"\n'
    "}}"
)
DETAILED_I2T = (
    "You are an Amazon product title generation assistant. Given only the product image, generate a suitable Amazon "
    "product title. Generate a JSON object with only the key: 'title'. The title must be in English only, descriptive "
    "and professional, naming the brand if visible, the product type and its key attributes. Respond with the JSON "
    f'object only, e.g. {{"title": "{_EXAMPLE_TITLE}"}}'
)
DETAILED_T2I = (
    "You are an expert prompt writer for a text-to-image diffusion model that creates Amazon product cover images. "
    "Product description: {description}\n"
    "Write one image-generation prompt of at most 77 tokens that makes the model render this product as its main "
    "catalog photo: the product itself, its shape, colour, material and key details, on a clean white background, "
    "studio lighting, professional e-commerce photography. Generate a JSON object with only the key: 'prompt'. "
    'Respond with the JSON object only, e.g. {{"prompt": "a matte black stainless steel water bottle, studio photo"}}'
)

# The title prompt the authors gave Gemma-3, InternVL and LLaVA in CQBench, and every family in their RecBench script.
PAPER_I2T_SHORT = PAPER_I2T.replace(
    "The output must not be empty, blank, or newline — directly give the answer.", "").removesuffix("\nOutput:")

FAMILIES = ("qwen", "gemma", "internvl", "llava")  # the authors' get_model_type, in its order
# name -> task -> text, or family -> text where the authors' scripts word it per family
PROMPTS: dict[str, dict[str, str | dict[str, str]]] = {
    "paper": {"i2t": {"qwen": PAPER_I2T, "gemma": PAPER_I2T_SHORT, "internvl": PAPER_I2T_SHORT,
                      "llava": PAPER_I2T_SHORT},
              "t2i": PAPER_T2I},
    "paper-rec": {"i2t": PAPER_I2T_SHORT, "t2i": PAPER_T2I},
    "detailed": {"i2t": DETAILED_I2T, "t2i": DETAILED_T2I},
}
DESCRIPTIONS = {
    "paper": "the authors' wording for each model's family (MMPCBench release, CQBench/imagine_amazon_data_bench.py)",
    "paper-rec": "the authors' RecBench-generation wording (MMPCBench release, Recbench/imagine_amazon_data_rec.py)",
    "detailed": "mmpc-rl's detailed prompt (not the paper's)",
}


def model_family(model: str | None) -> str:
    """The authors' family of a model id or folder: the first of FAMILIES its name contains (a local folder's
    config.json `model_type` when the name says none), else "qwen", the branch their script falls back to."""
    names = [str(model or "").lower()]
    config = Path(str(model or "")).expanduser() / "config.json"
    if model and config.is_file():
        try:
            names.append(str(json.loads(config.read_text()).get("model_type", "")).lower())
        except (OSError, ValueError):
            pass
    for name in names:
        for family in FAMILIES:
            if family in name:
                return family
    return "qwen"


def prompt_text(task: str, name: str = DEFAULT_PROMPT, model: str | None = None) -> str:
    """The prompt `name` for `task`, in `model`'s family's wording where the authors worded it per family (None:
    Qwen's)."""
    if name not in PROMPTS:
        raise ConfigError(f"unknown prompt {name!r}" + did_you_mean(str(name), PROMPTS))
    text = PROMPTS[name][task]
    return text[model_family(model)] if isinstance(text, dict) else text


def all_prompt_texts() -> list[str]:
    """The tiny tokenizer's prompt corpus (mmpc_rl.tiny.qwen). Fixed: a tiny model cached by an earlier build stays
    the one a fresh build makes."""
    return [PAPER_I2T, PAPER_T2I, DETAILED_I2T, DETAILED_T2I]


def caption(name: str | None) -> str:
    """The line under a CQBench table that says which prompt produced it."""
    if not name:
        return "Prompt: not recorded (results from before prompts were recorded)."
    return f"Prompt: `{name}`, {DESCRIPTIONS.get(name, 'a custom prompt')}."
