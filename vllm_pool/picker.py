"""Which replica takes a call: prefix affinity (consistent hashing with bounded load),
else the router's power-of-two-choices policy on the load score. Pure: replicas in, an
order out."""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence

from imesh.v1 import chat_pb2
from router.policies.power_of_two import PowerOfTwo
from vllm_pool.replica import PoolReplica

# Points per replica on the hash ring: enough that keys spread evenly over a few replicas.
VIRTUAL_NODES = 64


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing over replica ids: adding or removing a replica moves only the
    keys next to its points. Rebuilt when membership changes (cheap: ids x 64 hashes)."""

    def __init__(self, ids: Sequence[str]) -> None:
        points = sorted((_hash(f"{rid}#{i}"), rid) for rid in ids for i in range(VIRTUAL_NODES))
        self._hashes = [h for h, _ in points]
        self._ids = [rid for _, rid in points]

    def walk(self, key: str) -> list[str]:
        """Every replica id once, clockwise from the key's point."""
        if not self._ids:
            return []
        start = bisect.bisect(self._hashes, _hash(key))
        seen: dict[str, None] = {}
        n = len(self._ids)
        for k in range(n):
            seen.setdefault(self._ids[(start + k) % n], None)
        return list(seen)


class ReplicaPicker:
    """Orders candidate replicas for one call: the first is tried first, the rest (by
    score) are where the call goes if the first fails before its first token.

    With a key, the first is the first replica clockwise on the ring whose load is under
    the bound `ceil(load_bound * (total + 1) / n)` (consistent hashing with bounded
    loads): repeats of a key land where its prefix is cached, until that replica is
    busier than its share. Without a key, or when every replica is over the bound, two
    random candidates are compared by score (power of two choices), which avoids
    herding every router onto the one replica that looked idlest at the last heartbeat.
    """

    def __init__(self, *, load_bound: float = 1.25, rng: random.Random | None = None) -> None:
        self._load_bound = load_bound
        self._power_of_two = PowerOfTwo(rng, load=_score)
        self._ring_ids: tuple[str, ...] = ()
        self._ring = HashRing(())

    def rank(self, candidates: Sequence[PoolReplica], key: str | None) -> list[PoolReplica]:
        if len(candidates) <= 1:
            return list(candidates)
        first = self._by_affinity(candidates, key) if key else None
        if first is None:
            return self._power_of_two.rank(candidates, _NO_REQUEST)
        rest = sorted((r for r in candidates if r is not first), key=_score)
        return [first, *rest]

    def _by_affinity(self, candidates: Sequence[PoolReplica], key: str) -> PoolReplica | None:
        by_id = {r.id: r for r in candidates}
        ids = tuple(sorted(by_id))
        if ids != self._ring_ids:
            self._ring_ids, self._ring = ids, HashRing(ids)
        total = sum(r.requests for r in candidates)
        bound = math.ceil(self._load_bound * (total + 1) / len(candidates))
        for rid in self._ring.walk(key):
            if by_id[rid].requests < bound:
                return by_id[rid]
        return None


# Power of two reads nothing of the request.
_NO_REQUEST = chat_pb2.ChatInput()


def _score(replica: PoolReplica) -> float:
    return replica.score
