"""The trusted entry of every cold-started worker: confine the process, then run the plugin.

Run as ``python -I -S -B <dir>/sandbox/bootstrap.py <policy-json> <entry-module> [args...]``
(see `launch.build_launch`); it applies the policy, then runs the entry module as `__main__`
with ``sys.argv = [entry_module, *args]``. It never writes to fd 1, the worker's RPC channel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Sequence
from typing import Final, NoReturn

if __name__ == "__main__":
    # Run as a script under -I: the package root is not on sys.path yet. The policy's sys.path
    # replaces this entry once confined; the sandbox modules are loaded by then.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox import confine, events
from sandbox.errors import LayerUnavailableError, SandboxError
from sandbox.policy import SandboxPolicy

USAGE: Final = "usage: bootstrap.py <policy-json> <entry-module> [args...]"


def run_as_main(module_name: str) -> None:
    """Execute `module_name` (or `<package>.__main__`) as the `__main__` module.

    Like ``python -m`` but leaves `sys.argv` as the caller set it. Raises ImportError when
    the module cannot be found; exceptions from the module propagate.
    """
    import importlib.util
    import types

    spec = importlib.util.find_spec(module_name)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(f"{module_name}.__main__")
    if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
        raise ImportError(f"no runnable module named {module_name}", name=module_name)
    code = spec.loader.get_code(spec.name)
    if code is None:
        raise ImportError(f"no code for module {module_name}", name=module_name)
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=spec.origin,
        __cached__=None,
        __loader__=spec.loader,
        __package__=spec.parent,
        __spec__=spec,
    )
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def confine_or_exit(policy: SandboxPolicy, *, keep_fds: Collection[int] = ()) -> None:
    """Apply `policy`, report warnings as JSON lines; on any failure report it and exit.

    Exits 78 when a layer is refused (strict mode) or the sandbox cannot be set up, 70 on an
    unexpected error. Usable from a fork-server child as well as from `main`.
    """
    try:
        warnings = confine.apply(policy, keep_fds=keep_fds)
    except LayerUnavailableError as exc:
        events.emit("error", "sandbox_refused", layer=exc.layer, reason=exc.reason)
        os._exit(events.EXIT_REFUSED)
    except SandboxError as exc:
        events.emit("error", "sandbox_refused", layer=None, reason=str(exc))
        os._exit(events.EXIT_REFUSED)
    except Exception as exc:  # our own bug: never run the plugin half-confined
        events.emit("error", "sandbox_failed", reason=f"{type(exc).__name__}: {exc}")
        os._exit(events.EXIT_FAILED)
    for text in warnings:
        layer, reason = events.split_warning(text)
        events.emit("warning", "sandbox_layer_missing", layer=layer, reason=reason)


def main(argv: Sequence[str]) -> NoReturn:
    """Confine this process with the policy in `argv[0]`, then run module `argv[1]`."""
    if len(argv) < 2:
        events.emit("error", "sandbox_refused", layer=None, reason=USAGE)
        os._exit(events.EXIT_REFUSED)
    try:
        policy = SandboxPolicy.from_json(argv[0])
    except ValueError as exc:
        events.emit("error", "sandbox_refused", layer=None, reason=str(exc))
        os._exit(events.EXIT_REFUSED)
    entry, args = argv[1], list(argv[2:])
    confine_or_exit(policy)
    sys.argv = [entry, *args]
    sys.dont_write_bytecode = True
    run_as_main(entry)
    sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
