"""json_format: does the completion answer with a JSON object holding the task's key?

1.0  the authors' parser (`parse_llm_json` in CQBench/imagine_amazon_data_bench.py, as mmpc_rl.tasks re-implements
     it) recovers a JSON object whose task key (`title` / `prompt`) is a non-empty string; code fences, surrounding
     prose and a truncated closing brace are tolerated exactly as that parser tolerates them;
0.5  the parser recovers a JSON object or array of the wrong shape (other key, empty or non-string value): the
     format was right, the content was not;
0.0  nothing parses, or only a bare scalar does (a stray number in prose parses as JSON, which says nothing).

The paper has "an output JSON-format checking reward" and no grades: 0.5 and 0.0 are this project's.
"""

from __future__ import annotations

from mmpc_rl.rewards.registry import no_model, register
from mmpc_rl.tasks import completion_text

OK, WRONG_SHAPE, FAIL = 1.0, 0.5, 0.0


def score(task, completion: str) -> float:
    parsed = task.parse(completion)
    if parsed.status == "ok":
        return OK
    if parsed.status == "wrong" and isinstance(parsed.data, (dict, list)):
        return WRONG_SHAPE
    return FAIL


@register("json_format", memory=no_model)
def json_format(task, context=None):
    def reward(completions, **_) -> list[float]:
        return [score(task, completion_text(c)) for c in completions]

    return reward
