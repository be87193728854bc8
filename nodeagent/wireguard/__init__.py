"""WireGuard backends: the kernel module over generic netlink, and userspace over UAPI."""
