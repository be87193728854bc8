"""nodeagent: the agent that runs on every server of a no-logs VPN provider."""

__version__ = "0.1.0"
