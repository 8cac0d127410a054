"""mmpc-rl: GRPO fine-tuning of vision-language models to complete missing product modalities."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft/trl when installed) warns on every CPU start that an optional kernel package is
# missing; it changes nothing for us and buries the first line a user should read.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
