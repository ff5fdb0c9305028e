"""The request pipeline: the seam between the HTTP layer and the stages (budgets, payments).

`RequestContext` carries one request; `Stage` declares every hook with its contract;
`Problem`/`ProxyError` and `problem_response` are the one way an error becomes a response;
`Pipeline` runs the stages and guarantees each that entered hears how the request ended.
"""

from meterkit.pipeline.context import MeterSettings, RequestContext, Result
from meterkit.pipeline.problems import problem_response
from meterkit.pipeline.run import Pipeline
from meterkit.pipeline.stage import Answer, Stage
from meterkit.problems import Problem, ProxyError

__all__ = [
    "Answer",
    "MeterSettings",
    "Pipeline",
    "Problem",
    "ProxyError",
    "RequestContext",
    "Result",
    "Stage",
    "problem_response",
]
