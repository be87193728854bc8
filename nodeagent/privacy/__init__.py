"""The no-logs promise in code: idle-endpoint scrubbing and the host audit.

Log redaction lives in ``nodeagent.logs``; see DESIGN.md, "Privacy invariants".
"""
