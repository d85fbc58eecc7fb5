"""Which layers this kernel offers, found by trying each one in a throw-away child.

Host side. `probe` starts one short-lived interpreter that forks once per layer and tries the
layer for real, so the host itself is never confined. Run it once at start-up (~0.1 s; from
async code, via asyncio.to_thread) and keep the `SandboxReport`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Final, NamedTuple

from .cgroups import CgroupSupport, CgroupVersion, prepare_cgroups
from .errors import ProbeError
from .layers import Layer
from .policy import SandboxPolicy
from .uids import DEFAULT_FIRST_UID

PROBE_TIMEOUT_S: Final = 10.0
_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD_CODE: Final = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from sandbox.probe import _child_main; _child_main(int(sys.argv[2]))"
)


class LayerStatus(NamedTuple):
    """One row of the report: whether `layer` works here, and why (not)."""

    layer: Layer
    available: bool
    reason: str


class SandboxReport(NamedTuple):
    """What this kernel offers, one row per layer, plus the Landlock ABI and cgroup support."""

    rows: tuple[LayerStatus, ...]
    landlock_abi: int
    cgroups: CgroupSupport

    def status(self, layer: Layer) -> LayerStatus:
        """Return the row of `layer`; layers the probe does not test count as available."""
        for row in self.rows:
            if row.layer is layer:
                return row
        return LayerStatus(layer, True, "always available")

    def is_available(self, layer: Layer) -> bool:
        """Return whether `layer` works on this machine."""
        return self.status(layer).available


def requested_layers(policy: SandboxPolicy) -> tuple[Layer, ...]:
    """Return the layers `policy` asks for, in the order they are applied."""
    wanted = {
        Layer.SESSION: True,
        Layer.RLIMITS: True,
        Layer.CGROUP: bool(policy.cgroup_dirs),
        Layer.CREDENTIALS: policy.uid is not None,
        Layer.NAMESPACES: policy.isolate_network,
        Layer.NO_NEW_PRIVS: True,
        Layer.LANDLOCK: policy.landlock,
        Layer.SECCOMP: policy.seccomp,
        Layer.PDEATHSIG: True,
    }
    return tuple(layer for layer in Layer if wanted[layer])


def required_layers_missing(policy: SandboxPolicy, report: SandboxReport) -> list[LayerStatus]:
    """Return the rows of layers `policy` asks for that `report` says are unavailable.

    In strict mode the host refuses to start a worker when this is not empty, naming the
    layers; in permissive mode it starts it and warns.
    """
    return [report.status(x) for x in requested_layers(policy) if not report.is_available(x)]


def format_table(report: SandboxReport, policy: SandboxPolicy | None = None) -> str:
    """Render the `corral sandbox doctor` table; with `policy`, add whether each layer is active.

    "active" is yes (requested and available), no (not requested) or MISSING (requested but
    unavailable: strict mode refuses to start workers).
    """
    header = ["layer", "available"] + (["active"] if policy else []) + ["detail"]
    requested = requested_layers(policy) if policy else ()
    table = [header]
    for row in report.rows:
        cells = [str(row.layer), "yes" if row.available else "no"]
        if policy:
            active = row.layer in requested
            cells.append(("yes" if row.available else "MISSING") if active else "no")
        table.append([*cells, row.reason])
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]) for r in table
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def probe(
    *,
    python: str = sys.executable,
    uid: int = DEFAULT_FIRST_UID,
    cgroups: CgroupSupport | None = None,
) -> SandboxReport:
    """Try every layer in a throw-away child of `python` and return the report.

    `uid` is the unprivileged uid the credentials and namespace checks drop to (as the workers
    will, when the host is root). `cgroups` defaults to `prepare_cgroups()`. Blocking, ~0.1 s.
    Raises ProbeError when the probe child cannot run or answers nonsense.
    """
    import subprocess  # deferred: the bootstrap imports this package and must stay lean

    support = prepare_cgroups() if cgroups is None else cgroups
    command = [python, "-I", "-S", "-B", "-c", _CHILD_CODE, _ROOT, str(uid)]
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=PROBE_TIMEOUT_S, check=True, env={}, cwd="/"
        )
        rows, abi = _parse_child_report(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ProbeError(f"probe child failed: {exc}") from exc
    usable = support.version is not CgroupVersion.NONE
    rows.append(LayerStatus(Layer.CGROUP, usable, f"{support.version}: {support.reason}"))
    return SandboxReport(tuple(rows), abi, support)


def _parse_child_report(stdout: bytes) -> tuple[list[LayerStatus], int]:
    """Read the probe child's JSON report; raises ValueError when it is malformed."""
    raw = json.loads(stdout)
    try:
        rows = [LayerStatus(Layer(name), bool(ok), str(why)) for name, (ok, why) in raw["rows"]]
        return rows, int(raw["landlock_abi"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed probe report: {exc!r}") from exc


# --- the probe child: runs in its own single-threaded interpreter, forks once per check ---


def _in_fork(check: Callable[[], str]) -> tuple[bool, str]:
    """Run `check` in a forked child; return (True, detail) or (False, why it failed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            result = [True, check()]
        except BaseException as exc:
            result = [False, getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"]
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return False, f"probe child died (wait status {status})"
    ok, detail = json.loads(b"".join(chunks))
    return bool(ok), str(detail)


def _child_main(uid: int) -> None:
    """Entry of the probe child: print {"rows": [[layer, [ok, detail]], ...], "landlock_abi"}."""
    from . import _checks

    abi = _checks.landlock_abi()
    checks = {
        Layer.RLIMITS: _checks.rlimits,
        Layer.CREDENTIALS: lambda: _checks.credentials_check(uid),
        Layer.NAMESPACES: lambda: _checks.namespaces_check(uid),
        Layer.LANDLOCK: _checks.landlock_check,
        Layer.SECCOMP: _checks.seccomp_check,
        Layer.NO_NEW_PRIVS: _checks.no_new_privs,
        Layer.PDEATHSIG: _checks.pdeathsig,
    }
    rows = [[str(layer), _in_fork(check)] for layer, check in checks.items()]
    sys.stdout.write(json.dumps({"rows": rows, "landlock_abi": abi}))
