"""The child's environment, built from an allow-list: nothing of the host's leaks through.

Host side; the result is passed as `env=` to the spawn. The interpreter runs with `-I`, which
ignores PYTHON* variables anyway; they are set for the plugin's benefit and for clarity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

BASE_ENV: Final[Mapping[str, str]] = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUTF8": "1",
    "MALLOC_ARENA_MAX": "2",  # keeps virtual memory (RLIMIT_AS) close to resident memory
}
RESERVED: Final = frozenset({*BASE_ENV, "HOME", "TMPDIR"})
_LOADER_PREFIXES: Final = ("LD_", "GCONV_", "LOCPATH", "PYTHON")


def build_env(scratch_dir: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the worker's whole environment: the base, HOME and TMPDIR = `scratch_dir`, `extra`.

    PYTHONHASHSEED is left unset so hash randomisation stays on. Raises ValueError when an
    `extra` name is malformed, would override a reserved name (PATH, HOME, TMPDIR, ...), or
    steers the dynamic loader or the interpreter (LD_*, GCONV_*, LOCPATH, PYTHON*).
    """
    env = dict(BASE_ENV)
    env["HOME"] = scratch_dir
    env["TMPDIR"] = scratch_dir
    for name, value in (extra or {}).items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"malformed environment variable {name!r}")
        if name in RESERVED:
            raise ValueError(f"environment variable {name} is reserved for the sandbox")
        if name.startswith(_LOADER_PREFIXES):
            raise ValueError(f"environment variable {name} is not allowed in a worker")
        env[name] = value
    return env
