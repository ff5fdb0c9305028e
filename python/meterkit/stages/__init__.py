"""The aiohttp-aware stages of the request pipeline: thin adapters from a request to the
web-free decisions of `meterkit.budgets` and `meterkit.payments`."""

from meterkit.stages.budget import BudgetStage
from meterkit.stages.hooks import HookStage
from meterkit.stages.keys import KeyStage
from meterkit.stages.payment import PaymentStage
from meterkit.stages.session import SessionStage

__all__ = ["BudgetStage", "HookStage", "KeyStage", "PaymentStage", "SessionStage"]
