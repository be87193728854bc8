"""OpenVPN through its management interface: the protocol, the client, authentication, sessions."""
