"""What a stream subscribed to, shared between the streams that subscribe alike, and the order
types are pushed in: the parts of the ADS protocol that state of the world and delta share."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable, Iterator
from typing import Protocol

from gitmesh.xds import resources
from gitmesh.xds.snapshot import Snapshot

WILDCARD = "*"


class OnNack(Protocol):
    def __call__(self, type_url: str, version: str, message: str) -> None: ...


def push_order(type_urls: Iterable[str]) -> list[str]:
    return sorted(type_urls, key=lambda url: (resources.push_rank(url), url))


Names = frozenset[str]  # the resource names a stream subscribed to

# hash of the set -> the one shared set of those names while any stream holds it
_subscriptions: weakref.WeakValueDictionary[int, Names] = weakref.WeakValueDictionary()


def subscription(names: Iterable[str]) -> Names:
    """A thousand proxies subscribing to the same thousand clusters hold one set of interned names,
    not a thousand (a set that size is 32 KiB)."""
    wanted = frozenset(sys.intern(name) for name in names)
    shared = _subscriptions.get(hash(wanted))
    if shared is not None and shared == wanted:
        return shared
    _subscriptions[hash(wanted)] = wanted  # a different set with the same hash is simply not shared
    return wanted


# Names a stream subscribes to that are no resource of its snapshot: a proxy asks for what its
# clusters and listeners name, which the same snapshot holds, and a few ahead of a change at most.
MAX_UNKNOWN_NAMES = 100


def capped(names: Iterable[str], snapshot: Snapshot | None, type_url: str) -> Iterator[str]:
    """``names`` that are resources of ``snapshot``, and the first MAX_UNKNOWN_NAMES others: a stream
    asking for 80,000 names that do not exist is not made to remember them."""
    known = snapshot.encoded(type_url) if snapshot is not None else {}
    unknown = 0
    for name in names:
        if name in known:
            yield name
        elif unknown < MAX_UNKNOWN_NAMES:
            unknown += 1
            yield name


__all__ = ["MAX_UNKNOWN_NAMES", "WILDCARD", "Names", "OnNack", "capped", "push_order", "subscription"]
