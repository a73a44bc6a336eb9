"""Sign-in throttling: failed master-key sign-ins are counted per client address and limited.

The counting is LiteLLM's own rate limiter (the proxy's ``parallel_request_limiter`` hook, the one that
enforces the keys' limits), on a descriptor of its own: with REDIS_URL the count is shared by every worker
and replica, without it each worker counts alone. Only failures count; once an address has
:data:`FAILED_SIGN_INS` of them in the limiter's window (60 s), every sign-in from it is refused with 429
until the window ends, without the key being checked, so a throttled address learns nothing about a guess.
"""

from __future__ import annotations

from litellm.proxy.hooks.parallel_request_limiter_v3 import (
    PROXY_MaxParallelRequestsHandler_v3 as Limiter,
)
from litellm.proxy.hooks.parallel_request_limiter_v3 import (
    RateLimitDescriptor,
)

FAILED_SIGN_INS = 5  # per client address and limiter window
DESCRIPTOR_KEY = "hxp_console_sign_in"


def _limiter() -> Limiter:
    """The running proxy's rate limiter."""
    from litellm.proxy import proxy_server

    limiter = proxy_server.proxy_logging_obj.get_proxy_hook("parallel_request_limiter")
    if not isinstance(limiter, Limiter):
        raise RuntimeError("the proxy's rate limiter is not started")
    return limiter


def _descriptor(address: str) -> list[RateLimitDescriptor]:
    return [RateLimitDescriptor(key=DESCRIPTOR_KEY, value=address, rate_limit={"requests_per_unit": FAILED_SIGN_INS})]


async def retry_after_s(address: str) -> int | None:
    """None while ``address`` may try to sign in; else the seconds after which it may try again (at most)."""
    limiter = _limiter()
    status = await limiter.should_rate_limit(_descriptor(address), read_only=True)
    return limiter.window_size if status["overall_code"] == "OVER_LIMIT" else None


async def count_failure(address: str) -> None:
    """Count a failed sign-in from ``address``."""
    await _limiter().should_rate_limit(_descriptor(address))
