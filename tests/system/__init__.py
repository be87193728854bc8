"""The system tier: nodeagent installed as the README says on Debian with systemd as PID 1.

A VM (qemu, the real kernel WireGuard module) boots a cached Debian image;
``guest-checks.sh`` installs the agent with ``make install``, runs the unit
under the real systemd and reports each check; ``test_systemd_unit.py`` turns
those reports into assertions.
"""
