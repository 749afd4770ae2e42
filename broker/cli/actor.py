"""Who the audit log names for a `broker …` command: `cli:<os user>`."""

from __future__ import annotations

import getpass


def actor() -> str:
    """Return the audit actor id of the person running this command."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "cli"
    return f"cli:{name[:64]}"
