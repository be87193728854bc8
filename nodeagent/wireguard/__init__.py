"""WireGuard backends: the kernel module over generic netlink, and userspace over UAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodeagent.core.backend import Backend, BackendError, InterfaceMissing

if TYPE_CHECKING:
    from nodeagent.config.agent import WireguardInterfaceConfig

__all__ = ["Backend", "BackendError", "InterfaceMissing", "open_backend"]


def open_backend(cfg: WireguardInterfaceConfig) -> Backend:
    """The backend an interface's configuration names (imported lazily: pyroute2 is heavy)."""
    if cfg.backend == "kernel":
        from nodeagent.wireguard.netlink.backend import KernelBackend

        return KernelBackend(cfg.name)
    from nodeagent.wireguard.uapi.backend import UapiBackend

    return UapiBackend(cfg.name, cfg.uapi_socket)
