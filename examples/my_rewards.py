"""Reward functions for the README's worked example (examples/my_task.py names them).

A reward function is fn(sample, response) -> score in [0, 1], or (score, metrics) with a dict
whose numbers are logged (DESIGN §5). `sample` is the JSONL record (prompt, answer, label, meta,
...); `response` is the whole generated text, think block included: verifiers.parse_response
checks the format and splits it, verifiers.answer_text takes the part after </think>.
"""
import re

import verifiers

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_match(sample, response):
    """1 if the last number of the final answer is the reference answer; 0 for a broken format
    (as the built-in judges do: a reward that reads malformed text gets gamed)."""
    parsed = verifiers.parse_response(response)
    numbers = NUMBER.findall(parsed.answer) if parsed.ok else []
    return float(bool(numbers) and numbers[-1] == sample["answer"]), {"has_number": float(bool(numbers))}


def concise(sample, response, budget=40):
    """A length penalty as a score: 1 up to `budget` words, falling linearly to 0 at twice that."""
    words = len(response.split())
    return min(1.0, max(0.0, 2.0 - words / budget)), {"words": words}
