"""Provider adapters: the ProviderAdapter protocol and one module per provider.

Adapters import the lifecycle's types and nothing above them; the store is a sibling
they never see (import-linter enforces both).
"""

from gpufsm.adapters._http import (
    CircuitBreaker,
    HttpSeam,
    RateLimit,
    RetryPolicy,
    TokenBucket,
    parse_retry_after,
)
from gpufsm.adapters._protocol import (
    TAG_PREFIX,
    InstanceTypeOffer,
    LaunchRequest,
    Observation,
    ObservationKind,
    ProviderAdapter,
    ProviderInstance,
    ownership_tag,
    tag_from_name,
)
from gpufsm.adapters._registry import ADAPTERS, adapter_class

__all__ = [
    "ADAPTERS",
    "TAG_PREFIX",
    "CircuitBreaker",
    "HttpSeam",
    "InstanceTypeOffer",
    "LaunchRequest",
    "Observation",
    "ObservationKind",
    "ProviderAdapter",
    "ProviderInstance",
    "RateLimit",
    "RetryPolicy",
    "TokenBucket",
    "adapter_class",
    "ownership_tag",
    "parse_retry_after",
    "tag_from_name",
]
