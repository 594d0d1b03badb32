"""Channel labels: a union-find over elementary channel ids.

Every dimension of every tensor in the traced graph carries a numpy array with one id per
index along that dimension, or -1 where the index has no channel identity (batch, spatial,
sequence positions, constants). Ops unify the ids of dimensions that must shrink together;
a dimension that meets a -1 dimension of the same extent (a model input, an output, a
statistic over channels, a slice by position) becomes *blocked*: it can never be removed.
"""

from __future__ import annotations

import numpy as np

UNLABELED = -1


class LabelSpace:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.blocked: dict[int, str] = {}

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    @staticmethod
    def none(n: int) -> np.ndarray:
        return np.full(int(n), UNLABELED, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def roots(self, labels: np.ndarray) -> np.ndarray:
        return np.array([self.find(int(x)) if x >= 0 else UNLABELED for x in labels], dtype=np.int64)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        reason = self.blocked.pop(rb, None)
        if reason is not None and ra not in self.blocked:
            self.blocked[ra] = reason

    def block(self, labels: np.ndarray, reason: str) -> None:
        for x in np.unique(labels):
            if x >= 0:
                r = self.find(int(x))
                self.blocked.setdefault(r, reason)

    def is_blocked(self, x: int) -> bool:
        return self.find(x) in self.blocked

    def unify(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Tie index i of `a` to index i of `b`. A labelled index tied to -1 becomes blocked."""
        if a is b:
            return
        if len(a) != len(b):
            raise ValueError(f"cannot unify dimensions of extent {len(a)} and {len(b)}")
        la, lb = a >= 0, b >= 0
        both = la & lb
        for x, y in zip(a[both].tolist(), b[both].tolist()):
            if x != y:
                self.union(x, y)
        self.block(a[la & ~lb], reason)
        self.block(b[lb & ~la], reason)

    def merge_all(self, labels: np.ndarray, reason: str) -> int:
        """Tie every index of `labels` into one class; return its id (or -1 if all unlabeled)."""
        lab = labels[labels >= 0]
        if len(lab) == 0:
            return UNLABELED
        if len(lab) < len(labels):
            self.block(lab, reason)
        first = int(lab[0])
        for x in lab[1:].tolist():
            self.union(first, x)
        return first
