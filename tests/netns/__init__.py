"""Root tier: real wireguard-go in network namespaces."""
