"""A hand-built seccomp-BPF filter: the system calls a worker may not make, installed via ctypes.

Runs inside the child after NO_NEW_PRIVS and Landlock; x86_64 only, no libseccomp (~25 ms to
load). Denied calls fail with an errno, so a plugin sees an OSError rather than dying.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from typing import Final

from . import _libc
from .errors import LayerUnavailableError
from .layers import Layer

# Classic BPF opcodes, seccomp return actions, and the layout of struct seccomp_data.
_LD_ABS_W: Final = 0x20
_JEQ: Final = 0x15
_JGE: Final = 0x35
_JSET: Final = 0x45
_RET: Final = 0x06
RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_ALLOW: Final = 0x7FFF0000
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_ARG0_LO: Final = 16
_ARG1_LO: Final = 24  # little-endian: the low 32 bits of args[i] sit at 16 + 8 * i
_SECCOMP_SET_MODE_FILTER: Final = 1
_SYS_SECCOMP: Final = 317  # x86_64

_AUDIT_ARCH_X86_64: Final = 0xC000003E
_X32_SYSCALL_BIT: Final = 0x40000000
_CLONE_THREAD: Final = 0x00010000
_CLONE_NAMESPACES: Final = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_PR_SET_PDEATHSIG: Final = 1

_X86_64: Final[dict[str, int]] = {
    # processes and programs
    "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322,
    # other processes' memory and signals
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "process_madvise": 440, "process_mrelease": 448, "pidfd_open": 434, "pidfd_getfd": 438,
    "pidfd_send_signal": 424, "tkill": 200, "kill": 62, "tgkill": 234,
    "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "prlimit64": 302, "prctl": 157,
    "migrate_pages": 256, "move_pages": 279,
    # mounts and namespaces
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "move_mount": 429, "open_tree": 428, "mount_setattr": 442, "statmount": 457,
    "listmount": 458, "open_tree_attr": 467,
    # kernel attack surface
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "add_key": 248,
    "request_key": 249, "keyctl": 250, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 304, "name_to_handle_at": 303,
    # machine administration
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "create_module": 174, "get_kernel_syms": 177, "query_module": 178,
    "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170,
    "setdomainname": 171, "iopl": 172, "ioperm": 173, "quotactl": 179, "quotactl_fd": 443,
    "nfsservctl": 180, "lookup_dcookie": 212, "uselib": 134, "ustat": 136, "sysfs": 139,
    "_sysctl": 156, "syslog": 103, "vhangup": 153,
    # networking: socketpair (53) stays allowed, asyncio needs it
    "socket": 41,
}  # fmt: skip

# Denied outright, with EPERM unless listed in _ERRNO.
DENIED: Final = (
    "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev",
    "kcmp", "process_madvise", "process_mrelease", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "tkill", "migrate_pages", "move_pages", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "statmount", "listmount", "open_tree_attr",
    "bpf", "perf_event_open", "userfaultfd", "add_key", "request_key", "keyctl",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "create_module", "get_kernel_syms", "query_module", "swapon", "swapoff",
    "reboot", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "iopl", "ioperm", "quotactl", "quotactl_fd", "nfsservctl",
    "lookup_dcookie", "uselib", "ustat", "sysfs", "_sysctl", "syslog", "vhangup", "socket",
    "clone3",
)  # fmt: skip
_ERRNO: Final = {
    "socket": errno.EAFNOSUPPORT,  # what a kernel without the address family would say
    "clone3": errno.ENOSYS,  # glibc then falls back to clone, whose flags BPF can read
}
# Signals and rlimits may target only the worker itself (arg0 is its pid, or 0 for prlimit).
_SELF_TARGETED: Final = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "prlimit64")

_Insn = tuple[int, int, int, int]


def _stmt(code: int, k: int) -> _Insn:
    return (code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> _Insn:
    return (code, jt, jf, k)


def _errno(value: int) -> _Insn:
    return _stmt(_RET, RET_ERRNO | value)


def _guarded(nr: int, body: list[_Insn]) -> list[_Insn]:
    """Run `body` (which must end every path in a return) only for syscall `nr`."""
    return [_jump(_JEQ, nr, 0, len(body)), *body]


def _arg0_in(values: tuple[int, ...]) -> list[_Insn]:
    """Allow when the low 32 bits of arg0 equal one of `values`, else EPERM."""
    count = len(values)
    body = [_stmt(_LD_ABS_W, _ARG0_LO)]
    body += [_jump(_JEQ, v, count - i, 0) for i, v in enumerate(values)]
    return [*body, _errno(errno.EPERM), _stmt(_RET, RET_ALLOW)]


def _clone_threads_only() -> list[_Insn]:
    """Allow clone only for threads (CLONE_THREAD) that create no namespace."""
    return [
        _stmt(_LD_ABS_W, _ARG0_LO),  # x86_64 clone(flags, ...): flags is arg0
        _jump(_JSET, _CLONE_THREAD, 0, 2),
        _jump(_JSET, _CLONE_NAMESPACES, 1, 0),
        _stmt(_RET, RET_ALLOW),
        _errno(errno.EPERM),
    ]


def _prctl_keeps_pdeathsig() -> list[_Insn]:
    """Allow prctl, except PR_SET_PDEATHSIG to anything but SIGKILL (it must not be cleared)."""
    return [
        _stmt(_LD_ABS_W, _ARG0_LO),
        _jump(_JEQ, _PR_SET_PDEATHSIG, 0, 3),
        _stmt(_LD_ABS_W, _ARG1_LO),
        _jump(_JEQ, signal.SIGKILL, 1, 0),
        _errno(errno.EPERM),
        _stmt(_RET, RET_ALLOW),
    ]


def build_filter(self_pid: int, machine: str | None = None) -> bytes:
    """Assemble the filter for a worker whose pid is `self_pid`, as packed sock_filter structs.

    `machine` defaults to `os.uname().machine`. Raises LayerUnavailableError("seccomp") on an
    architecture without a syscall table here. A foreign-ABI syscall kills the process.
    """
    machine = machine or os.uname().machine
    if machine != "x86_64":
        raise LayerUnavailableError(Layer.SECCOMP, f"no syscall table for {machine}")
    table = _X86_64
    program: list[_Insn] = [
        _stmt(_LD_ABS_W, _OFF_ARCH),
        _jump(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _stmt(_RET, RET_KILL_PROCESS),
        _stmt(_LD_ABS_W, _OFF_NR),
        _jump(_JGE, _X32_SYSCALL_BIT, 0, 1),
        _errno(errno.ENOSYS),
    ]
    for name in DENIED:
        program += [_jump(_JEQ, table[name], 0, 1), _errno(_ERRNO.get(name, errno.EPERM))]
    program += _guarded(table["clone"], _clone_threads_only())
    program += _guarded(table["prctl"], _prctl_keeps_pdeathsig())
    for name in _SELF_TARGETED:
        targets = (self_pid, 0) if name == "prlimit64" else (self_pid,)
        program += _guarded(table[name], _arg0_in(targets))
    program.append(_stmt(_RET, RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_filter(program: bytes) -> None:
    """Install `program` for the calling thread; NO_NEW_PRIVS must already be set.

    Raises LayerUnavailableError("seccomp") when the kernel refuses it.
    """
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    try:
        _libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(fprog))
    except OSError as exc:
        raise LayerUnavailableError(Layer.SECCOMP, f"seccomp(2): {exc.strerror}") from exc


def confine_syscalls() -> None:
    """Build and install the worker filter for the calling process."""
    install_filter(build_filter(os.getpid()))
