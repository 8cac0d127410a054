"""Training: GRPO runs (`mmpc-rl train`, train/grpo.py), their recipe checks, callbacks and the memory-plan command.

Recipes may name `tiny://` models, so importing this package registers them with the loader (mmpc_rl.tiny)."""

import mmpc_rl.tiny  # noqa: F401 - registers tiny:// with mmpc_rl.models
