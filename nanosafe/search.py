"""The deliberative-search tool (rung 4): BM25 over a local knowledge base, in numpy.

    kb = SearchTool.from_jsonl("my_passages.jsonl")    # {"id": ..., "text": ...} a line
    kb("capital of Veldoria")  ->  "The capital of Veldoria is Marnoth."

Okapi BM25 (k1 = 1.5, b = 0.75, idf log(1 + (N - df + 0.5) / (df + 0.5))) over lower-cased words;
the top `k` passages joined by a space, or "no result": an empty query, no passage that matches at
least `min_coverage` of the query's idf weight (a word the index lacks counts at the idf of a word in
no passage), or the empty knowledge base of `rollout.kb=none`, which the RL rungs before rung 4 use
(DESIGN §1). The floor makes a failed lookup visible: without it "capital of Karivi" (a name
miscopied, or a country the base lacks) returns the first passage with "capital of", about another
country, and the answer copied from it looks like any other. Coverage, not a BM25 score, because it
means the same on a 2-passage base and a million-passage one."""
from __future__ import annotations

import json
import re

import numpy as np

WORD = re.compile(r"[a-z0-9]+")
NO_RESULT = "no result"  # the tool's answer when nothing matches (a policy can learn to read it)

def words(text: str) -> list[str]:
    return WORD.findall(text.lower())

class SearchTool:
    def __init__(self, passages: list[str], k: int = 1, k1: float = 1.5, b: float = 0.75,
                 min_coverage: float = 0.0):
        self.passages, self.k, self.min_coverage = passages, k, min_coverage
        docs = [words(p) for p in passages]
        vocab = sorted({w for d in docs for w in d})
        self.index = {w: i for i, w in enumerate(vocab)}
        tf = np.zeros((len(docs), len(vocab)), dtype=np.float32)  # [N, W]
        for i, d in enumerate(docs):
            for w in d:
                tf[i, self.index[w]] += 1
        length = tf.sum(1, keepdims=True)  # [N, 1]
        df = (tf > 0).sum(0)  # [W]
        idf = np.log1p((len(docs) - df + 0.5) / (df + 0.5))  # [W]
        self.idf, self.idf_unseen, self.present = idf, np.log1p((len(docs) + 0.5) / 0.5), tf > 0
        # the per-(passage, word) BM25 weight, precomputed once: a query is a column sum
        avg = length.mean() if len(docs) else 1.0
        self.weight = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg))  # [N, W]

    @classmethod
    def from_jsonl(cls, path: str, **kw) -> "SearchTool":
        passages = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row.get("text"), str):
                        raise ValueError(f"{path}:{n}: field 'text': missing or not a string")
                    passages.append(row["text"])
        return cls(passages, **kw)

    @classmethod
    def from_config(cls, rcfg, world_kb: str) -> "SearchTool":
        """`rcfg.kb`: a JSONL of passages, "" for the tiny world's (`world_kb`), "none" for empty;
        `rcfg.search_min_coverage`: the floor."""
        if rcfg.kb == "none":
            return cls([])
        return cls.from_jsonl(rcfg.kb or world_kb, min_coverage=rcfg.search_min_coverage)

    def _columns(self, query: str) -> tuple[list[int], int]:
        """The index columns of the query's distinct words, and how many words the index lacks."""
        q = set(words(query))
        cols = [self.index[w] for w in q if w in self.index]
        return cols, len(q) - len(cols)

    def scores(self, query: str) -> np.ndarray:
        cols, _ = self._columns(query)
        return self.weight[:, cols].sum(1) if cols else np.zeros(len(self.passages))  # [N]

    def __call__(self, query: str) -> str:
        cols, unseen = self._columns(query)
        if not cols:
            return NO_RESULT
        s = self.weight[:, cols].sum(1)  # [N]
        idf = self.idf[cols]  # [Q]
        floor = self.min_coverage * (idf.sum() + unseen * self.idf_unseen)
        top = np.argsort(-s, kind="stable")[: self.k]
        hits = [self.passages[i] for i in top if s[i] > 0 and idf @ self.present[i, cols] >= floor]
        return " ".join(hits) if hits else NO_RESULT
