"""The request pipeline: the seam between the HTTP layer and the stages (budgets, payments).

`RequestContext` carries one request; `Stage` declares every hook with its contract;
`Problem`/`ProxyError` and `problem_response` are the one way an error becomes a response;
`Pipeline` runs the stages and guarantees each that entered hears how the request ended.
"""

from meterkit.pipeline.context import (
    Caps,
    Gates,
    Identity,
    MeterSettings,
    PaymentFacts,
    RequestContext,
    Result,
)
from meterkit.pipeline.order import ORDER, ordered
from meterkit.pipeline.problems import problem_response
from meterkit.pipeline.run import Pipeline
from meterkit.pipeline.stage import Answer, Stage
from meterkit.problems import Problem, ProxyError

__all__ = [
    "ORDER",
    "Answer",
    "Caps",
    "Gates",
    "Identity",
    "MeterSettings",
    "PaymentFacts",
    "Pipeline",
    "Problem",
    "ProxyError",
    "RequestContext",
    "Result",
    "Stage",
    "ordered",
    "problem_response",
]
