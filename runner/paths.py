"""Where the host keeps its state by default (plugin store, worker scratch, runtime copy)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`CORRAL_STATE_DIR`, else /var/lib/corral for root, else ~/.local/state/corral.

    Worker uids must be able to traverse it, so it must not sit under a 0700 directory.
    """
    if environ.get("CORRAL_STATE_DIR"):
        return Path(environ["CORRAL_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/corral")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral"


def default_store_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The verified plugin store the host loads from: `<state dir>/store`."""
    return default_state_dir(environ) / "store"
