"""Token budgets: tokens-per-minute buckets and per-day counters per identity, enforced at
admission and inside the stream, reconciled both ways at the end. Web-free: the aiohttp stage
that applies them to requests is `meterkit.stages.BudgetStage`."""

from meterkit.budgets.backends import BackendUnavailable, BudgetBackend, Identity, MemoryBackend
from meterkit.budgets.policy import Decision, Limits
from meterkit.budgets.redis_backend import RedisBackend
from meterkit.config.budgets import BudgetStore

__all__ = [
    "BackendUnavailable",
    "BudgetBackend",
    "Decision",
    "Identity",
    "Limits",
    "MemoryBackend",
    "RedisBackend",
    "make_backend",
]


def make_backend(store: BudgetStore) -> BudgetBackend:
    """The backend a `budget_store:` section describes."""
    if store.type == "redis":
        assert store.url is not None
        return RedisBackend(store.url, store.prefix, store.timeout)
    return MemoryBackend()
