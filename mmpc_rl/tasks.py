"""The two completion tasks. One task object serves the GRPO dataset, the rewards and CQBench: it owns the prompt,
the JSON key the model must answer with, and the parser that turns a completion into that answer. Prompts are
named (mmpc_rl.prompts); `get_task(name, prompt)` picks one.

The parser follows the authors' (`parse_llm_json` in CQBench/imagine_amazon_data_bench.py): LangChain's
`JsonOutputParser` (a fenced ```json block or the whole text, parsed leniently so truncated JSON is closed) and then a
regex `{...}` fallback. A completion that still does not parse is scored as the literal string "error" in CQBench,
as the authors' title "error" is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.prompts import DEFAULT_PROMPT, prompt_text

PARSE_FAILURE_TEXT = "error"  # the authors' code scores this literal string when a completion does not parse


@dataclass(frozen=True)
class Parsed:
    """`status`: "ok" (a JSON object with the task's key and a non-empty string), "wrong" (valid JSON of the wrong
    shape: another key, an empty value, a list...), "fail" (no JSON could be recovered)."""

    status: Literal["ok", "wrong", "fail"]
    value: str | None
    data: Any = None


_FENCE = re.compile(r"```(?:json)?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_BRACES = re.compile(r"\{.*\}", re.DOTALL)


def close_partial_json(text: str) -> str:
    """Close unterminated strings, objects and arrays, as LangChain's parse_partial_json does for truncated output."""
    stack, out, in_string, escaped = [], [], False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif ch == "\n":
                ch = "\\n"
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                return text  # mismatched: leave it to json.loads to reject
            stack.pop()
        out.append(ch)
    if in_string:
        out.append("\\" if escaped else "")
        out.append('"')
    return "".join(out) + "".join(reversed(stack))


_MISSING = object()


def _loads_lenient(text: str) -> Any:
    text = text.strip().strip("`").strip()
    if not text:
        return _MISSING
    for candidate in (text, close_partial_json(text)):
        try:
            return json.loads(candidate, strict=False)
        except ValueError:
            pass
    # LangChain then retries after dropping trailing characters one by one; a trailing comma or colon is the usual
    # culprit, so drop up to a few characters from the end.
    for cut in range(1, min(len(text), 8)):
        try:
            return json.loads(close_partial_json(text[:-cut]), strict=False)
        except ValueError:
            continue
    return _MISSING


def parse_json(text: str) -> Any:
    """The first JSON value recovered from a completion, or `_MISSING`."""
    if not isinstance(text, str):
        return _MISSING
    value = _loads_lenient(text)
    if value is _MISSING:
        fence = _FENCE.search(text)
        if fence:
            value = _loads_lenient(fence.group(1))
    if value is _MISSING:
        braces = _BRACES.search(text)
        if braces:
            value = _loads_lenient(braces.group(0))
    return value


@dataclass(frozen=True)
class Task:
    name: str
    key: str  # the JSON key the model must answer with
    prompt: str
    uses_image_input: bool  # i2t: the policy sees the product image
    max_new_tokens: int  # the authors' inference budget (imagine_amazon_data_bench.py: 128 titles, 256 prompts)
    prompt_name: str = DEFAULT_PROMPT  # mmpc_rl.prompts: recorded with every CQBench result

    def parse(self, completion: str) -> Parsed:
        data = parse_json(completion)
        if data is _MISSING:
            return Parsed("fail", None)
        value = data.get(self.key) if isinstance(data, dict) else None
        if isinstance(value, str) and value.strip():
            return Parsed("ok", value.strip(), data)
        return Parsed("wrong", None, data)

    def answer_for_eval(self, completion: str) -> tuple[str, str]:
        """(text scored by CQBench, parse status): the parsed value, or "error" as the authors' code did."""
        parsed = self.parse(completion)
        return (parsed.value if parsed.status == "ok" else PARSE_FAILURE_TEXT), parsed.status

    def messages(self, item: dict) -> list[dict]:
        """The conversational prompt for one catalog item. For i2t the image is a placeholder that TRL (training) or
        the CQBench generator fills with the item's image."""
        if self.uses_image_input:
            return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        text = item.get("text") or item["title"]
        return [{"role": "user", "content": [{"type": "text", "text": self.prompt.format(description=text)}]}]

    def reference(self, item: dict) -> Any:
        """What the completion is compared with: the title (i2t) or the real image path (t2i)."""
        return item["image"] if not self.uses_image_input else item["title"]


TASKS: dict[str, Task] = {
    "i2t": Task("i2t", key="title", prompt=prompt_text("i2t"), uses_image_input=True, max_new_tokens=128),
    "t2i": Task("t2i", key="prompt", prompt=prompt_text("t2i"), uses_image_input=False, max_new_tokens=256),
}


def get_task(name: str, prompt: str = DEFAULT_PROMPT, model: str | None = None) -> Task:
    """The task with the named prompt (mmpc_rl.prompts: `paper`, the authors' wording, `paper-rec` or `detailed`),
    worded for `model`'s family where the authors worded it per family (None: Qwen2.5-VL's wording)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}" + did_you_mean(name, TASKS))
    return replace(TASKS[name], prompt=prompt_text(name, prompt, model), prompt_name=prompt)


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]; plain ones as str."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
        if isinstance(content, list):  # structured content blocks
            return "".join(c.get("text", "") for c in content if isinstance(c, dict))
        return str(content or "")
    return ""
