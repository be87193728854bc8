"""The network-namespace lab: namespaces, veth links and wireguard-go daemons on one host.

Used by ``nodeagent lab`` and by the netns and end-to-end test tiers.
"""
