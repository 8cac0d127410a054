"""mmpc-rl: GRPO fine-tuning of vision-language models to complete missing product modalities."""

__version__ = "0.1.0"
