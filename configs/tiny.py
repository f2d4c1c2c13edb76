"""The default: the tiny world on a laptop CPU, trained from scratch.

The dataclass defaults in nanosafe/config.py *are* the tiny setup, so this file is empty; the
presets for real models (configs/qwen2_5_*.py) read as a diff from them.
"""
overrides: dict = {}
