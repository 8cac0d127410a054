"""Evaluation: CQBench (`mmpc-rl eval cqbench`), its generation, scorers and reports.

Its model lists may name `tiny://` models, so importing this package registers them with the loader (mmpc_rl.tiny)."""

import mmpc_rl.tiny  # noqa: F401 - registers tiny:// with mmpc_rl.models
