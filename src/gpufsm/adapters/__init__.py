"""Provider adapters: the ProviderAdapter protocol and one module per provider.

The four real adapters are exported here, where a user looks first::

    from gpufsm.adapters import LambdaCloudAdapter

    adapter = LambdaCloudAdapter()  # LAMBDA_API_KEY and GPUFSM_LAMBDA_BASE_URL, as the CLI

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
    BatchTerminate,
    Closable,
    HasSeam,
    InstanceTypeOffer,
    LaunchRequest,
    Observation,
    ObservationKind,
    ProviderAdapter,
    ProviderInstance,
    Renamable,
    ownership_tag,
    tag_from_name,
)
from gpufsm.adapters._registry import ADAPTERS, adapter_class
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.adapters.novita import NovitaAdapter
from gpufsm.adapters.runpod import RunPodAdapter
from gpufsm.adapters.vastai import VastAdapter

__all__ = [
    "ADAPTERS",
    "TAG_PREFIX",
    "BatchTerminate",
    "CircuitBreaker",
    "Closable",
    "HasSeam",
    "HttpSeam",
    "InstanceTypeOffer",
    "LambdaCloudAdapter",
    "LaunchRequest",
    "NovitaAdapter",
    "Observation",
    "ObservationKind",
    "ProviderAdapter",
    "ProviderInstance",
    "RateLimit",
    "Renamable",
    "RetryPolicy",
    "RunPodAdapter",
    "TokenBucket",
    "VastAdapter",
    "adapter_class",
    "ownership_tag",
    "parse_retry_after",
    "tag_from_name",
]
