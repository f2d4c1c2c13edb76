"""The default: the tiny world on a laptop CPU, trained from scratch.

The dataclass defaults in nanosafe/config.py *are* the tiny setup and configs/rungs.py is its rung
table, so this file changes nothing; the presets for real models (configs/qwen2_5_*.py) read as a
diff from the same defaults and rung table. Copy it to start your own config:
`overrides = {"key": value}` for every stage, `stages = {"m3b": {...}}` for one rung.
"""
overrides: dict = {}
