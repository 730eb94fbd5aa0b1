"""How to reach an instance over SSH: the login user and port each provider uses.

Shared by ``gpufsm run`` (which logs in) and ``gpufsm instances`` (which shows the
``user@host -p port`` a person would type), so the two never disagree about a provider.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SSH_PORT", "DEFAULT_SSH_USERS", "ssh_login", "ssh_user"]

#: Login user of each provider's stock images; anything else gets root.
DEFAULT_SSH_USERS = {"lambda": "ubuntu"}
#: The port when the provider reports none (Lambda never maps it; RunPod and Vast.ai
#: report theirs in the listing, and only there).
DEFAULT_SSH_PORT = 22


def ssh_user(provider: str) -> str:
    return DEFAULT_SSH_USERS.get(provider, "root")


def ssh_login(provider: str, host: str | None, port: int | None = None) -> str:
    """``ubuntu@203.0.113.7 -p 22``, or "" while there is no host to reach."""
    if not host:
        return ""
    return f"{ssh_user(provider)}@{host} -p {port or DEFAULT_SSH_PORT}"
