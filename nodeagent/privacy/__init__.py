"""The no-logs promise in code: idle-endpoint scrubbing and the host audit.

Log redaction for the whole process (logs), the scrubber pass (scrub), the host audit (audit).
"""
