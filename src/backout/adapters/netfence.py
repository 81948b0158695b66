"""A fence in one container's network namespace: every new TCP connection from it to
some IPv4 addresses is answered at once with a reset (an iptables rule in that namespace,
entered with nsenter), until the rules tagged for it are removed.

Why (issue 14): an nginx that re-resolves its upstream through Docker's DNS keeps the
addresses of its last answer for ``valid`` seconds. The moment an old container stops,
Docker frees its address and its name together; a request nginx sends to that address
before it asks again meets no host and waits ``proxy_connect_timeout`` (no reset ever
comes). Refused at once, nginx passes the request to the next address of its answer
(``proxy_next_upstream error``, its default): the new container. Only new connections
are refused (``--syn``): requests in flight to the old container finish.

Needs root on the host running the Docker Engine (nsenter into another namespace,
iptables in it), and nsenter and iptables installed; ``unavailable`` says what is
missing. Every rule carries a comment naming its operation, so a resumed operation
removes exactly what it (or its killed run) added.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from backout import proc
from backout.environment import Environment
from backout.errors import ExternalError

TIMEOUT = 15.0
# iptables waits this long for the namespace's xtables lock instead of failing at once
LOCK_WAIT = "5"


def unavailable() -> str | None:
    """Why no fence can be put up from this process, or None."""
    if os.geteuid() != 0:
        return "backout is not running as root (entering a container's network " \
               "namespace needs it)"
    missing = [tool for tool in ("nsenter", "iptables") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return None


def foreign(pid: int, container_id: str, proc_root: Path = Path("/proc")) -> str | None:
    """Why process ``pid`` (as the engine reports a container's main process) is no
    namespace to fence in, or None: it must be that container's (its cgroup names
    it: the engine's process IDs are this host's, not a VM's or another container's)
    and have a network namespace other than this process's (not network_mode: host).
    """
    try:
        cgroup = (proc_root / str(pid) / "cgroup").read_text(encoding="utf-8",
                                                             errors="replace")
        theirs = os.readlink(proc_root / str(pid) / "ns" / "net")
        ours = os.readlink(proc_root / "self" / "ns" / "net")
    except OSError as exc:
        return f"its process {pid} cannot be looked at on this host ({exc.strerror})"
    if not container_id or container_id not in cgroup:
        return (f"process {pid} on this host is not its main process (the Docker Engine "
                "runs in a VM or backout in a container)")
    if theirs == ours:
        return "it shares this host's network namespace (network_mode: host)"
    return None


def _in_namespace(pid: int, *args: str) -> list[str]:
    return ["nsenter", f"--target={pid}", "--net", "--", "iptables", "-w", LOCK_WAIT, *args]


def rule(address: str, label: str) -> list[str]:
    """The rule's match and target, after the chain: new TCP connections to the IPv4
    ``address`` get a reset."""
    return ["-d", f"{address}/32", "-p", "tcp", "--syn", "-m", "comment", "--comment",
            label, "-j", "REJECT", "--reject-with", "tcp-reset"]


def put_up(env: Environment, pid: int, addresses: Sequence[str], label: str) -> None:
    """Fence ``addresses`` in the network namespace of process ``pid`` (a container's
    main process). A rule already there (a resumed run) is not added twice. Raises
    ExternalError when a rule cannot be added."""
    for address in addresses:
        spec = rule(address, label)
        there = proc.run(env, _in_namespace(pid, "-C", "OUTPUT", *spec),
                         timeout=TIMEOUT, check=False, what="iptables -C").ok
        if not there:
            proc.run(env, _in_namespace(pid, "-I", "OUTPUT", *spec), timeout=TIMEOUT,
                     what=f"fence {address} (iptables in a proxy's network namespace)")


def take_down(env: Environment, pid: int, label: str) -> int:
    """Remove every rule tagged ``label`` from the namespace of process ``pid``; how
    many were removed. A namespace that is gone (its container stopped) holds none;
    rules that cannot be listed in one that is there raise ExternalError."""
    listed = proc.run(env, _in_namespace(pid, "-S", "OUTPUT"), timeout=TIMEOUT,
                      check=False, what="iptables -S")
    if not listed.ok:
        if not Path(f"/proc/{pid}/ns/net").exists():
            return 0
        raise ExternalError(f"iptables -S in process {pid}'s network namespace failed: "
                            f"{proc.last_line(listed.stderr)}")
    removed = 0
    for line in listed.stdout.splitlines():
        if label not in line:
            continue
        try:
            words = shlex.split(line)
        except ValueError:  # not ours: ours print without quotes
            continue
        if words[:2] != ["-A", "OUTPUT"] or not _tagged(words, label):
            continue
        proc.run(env, _in_namespace(pid, "-D", *words[1:]), timeout=TIMEOUT,
                 what="take down a fence (iptables in a proxy's network namespace)")
        removed += 1
    return removed


def _tagged(words: Sequence[str], label: str) -> bool:
    return any(a == "--comment" and b == label for a, b in itertools.pairwise(words))
