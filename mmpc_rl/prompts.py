"""The instructions the policy is given, by name. The prompt changes every CQBench number, so each result records
the name of the prompt that produced it.

`paper` (the default): the authors' wording for Qwen2.5-VL, verbatim from their released inference script
(GAIR-Lab/MMPCBench, CQBench/imagine_amazon_data_bench.py: `infer_product_title` and `infer_image_prompt`),
quirks kept (the missing space before "The title", the trailing "Output:" of the title prompt). The paper itself
prints no prompt; this is what produced its numbers.

`detailed`: this project's earlier prompts, which ask for more than the authors did (the brand if visible, the
product type and key attributes; a white studio background for renders). They are not the paper's: results made
with them are not comparable with the paper's tables.
"""

from __future__ import annotations

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

PROMPTS: dict[str, dict[str, str]] = {
    "paper": {"i2t": PAPER_I2T, "t2i": PAPER_T2I},
    "detailed": {"i2t": DETAILED_I2T, "t2i": DETAILED_T2I},
}
DESCRIPTIONS = {
    "paper": "the authors' wording (MMPCBench release)",
    "detailed": "mmpc-rl's detailed prompt (not the paper's)",
}


def prompt_text(task: str, name: str = DEFAULT_PROMPT) -> str:
    if name not in PROMPTS:
        raise ConfigError(f"unknown prompt {name!r}" + did_you_mean(str(name), PROMPTS))
    return PROMPTS[name][task]


def all_prompt_texts() -> list[str]:
    return [text for by_task in PROMPTS.values() for text in by_task.values()]


def caption(name: str | None) -> str:
    """The line under a CQBench table that says which prompt produced it."""
    if not name:
        return "Prompt: not recorded (results from before prompts were recorded)."
    return f"Prompt: `{name}`, {DESCRIPTIONS.get(name, 'a custom prompt')}."
