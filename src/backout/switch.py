"""Switching one service's container to another image, start-first (issue 14).

    start the new container beside the old one -> wait until it is ready
    -> let the proxies in front see it -> drain the old one (stop with its grace
    period, remove it; proxies that resolved once are reloaded again)
    [only if a step failed] keep whichever side is serving, remove the other

Each is a journaled step of the caller's plan (rollback service, deploy, emergency),
so SIGKILL at any of them and `backout resume` ends with exactly one container of the
service, on the intended image: every action finds what an earlier, cut-short run
left (the new container by its image, the old ones by the IDs journaled when the
new one started). Whether to switch start-first at all is ``policy.switch``; how a
container is started beside another is the platform's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backout import proc
from backout.adapters import http
from backout.config import Config
from backout.errors import BackoutError, ExternalError, UnhealthyError, UsageError
from backout.operations import interrupt
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Step
from backout.platforms.base import ContainerInfo, ReadyWatch
from backout.policy import switch as policy
from backout.policy.switch import SwitchOrder

KEPT_SERVING = "the old release kept serving"
POLL = 0.25
# The new container's health turns at its healthcheck's pace; a tenth of a second
# between looks (one engine list each) keeps the switch within that of Compose's --wait.
READY_POLL = 0.1
# After `nginx -s reload` the workers of the old configuration (which know only the
# old container) still pass on the requests they had accepted (seen on the real stack:
# a burst of 502s when the drain followed the reload at once): the old container keeps
# accepting until they are gone or this long has passed -- always this long when the
# workers cannot be told apart.
RELOAD_SETTLE = 1.0
WORKERS_POLL = 0.05  # while the old workers get their second at most
# A reload that took has started its new workers well within this (a large
# configuration on a loaded host included); none by then: the master kept its old
# configuration. Only a reload that failed waits this long, the old container serving.
RELOAD_TAKES = 10.0
# nginx's title of a worker process; after a reload the old ones end with
# "is shutting down" and keep their process IDs until they exit.
WORKER = "worker process"
SHUTTING_DOWN = "is shutting down"
OLD_WORKERS_LIMIT = 120.0  # seconds: nginx's own proxy_connect_timeout is at most 75 s
RELOADED = ("nginx-reload", "nginx-resolver")


def order_for(config: Config, definition: dict[str, Any], service: str,
              requested: str | None = None) -> SwitchOrder:
    """start-first or stop-first for ``service``, with the reasons, from the compose
    definition, backout.toml and ``--order``."""
    spec = (definition.get("services") or {}).get(service) or {}
    svc_cfg = config.services.get(service)
    return policy.choose(service, spec, requested=requested,
                         configured=svc_cfg.switch if svc_cfg else None,
                         database_services={db.service for db in config.databases.values()})


def candidates(config: Config, definition: dict[str, Any], *,
               exclude: Collection[str] = ()) -> list[str]:
    """The services a whole-stack change (deploy, emergency rollback) switches
    start-first before Compose converges the rest: every service nothing blocks
    (databases, fixed host ports, ... go stop-first through ``compose up``)."""
    out = []
    for service in sorted(definition.get("services") or {}):
        if service in exclude:
            continue
        try:
            chosen = order_for(config, definition, service)
        except UsageError:
            continue  # start-first configured over a hard blocker: compose up does it
        if chosen.start_first:
            out.append(service)
    return out


def stack_steps(config: Config, definition: dict[str, Any], *,
                exclude: Collection[str] = ()) -> list[Step]:
    """The start-first switch of every candidate, each to the image the compose files
    name once the new code is checked out (a service whose image does not change is
    skipped when its turn comes)."""
    out: list[Step] = []
    for service in candidates(config, definition, exclude=exclude):
        out += steps(config, definition, service, image_id=None, ref=None,
                     order=order_for(config, definition, service))
    return out


def whole_stack_downtime(steps: Collection[Step]) -> str:
    """What a whole-stack change (deploy, emergency rollback) costs in downtime, from
    the switches actually planned (none on a platform that orders its own updates)."""
    started = [str(s.params["service"]) for s in steps if s.action == "switch.start"]
    if not started:
        return "the services whose image changes are replaced one by one"
    return (f"{', '.join(started)} switch start-first (none expected); the other services "
            "whose image changes are replaced one by one")


def proxies(config: Config, switched: str) -> list[dict[str, Any]]:
    """The configured proxies in front of the switched service (not itself)."""
    return [{"service": s.name, "mode": s.proxy, "reload": list(s.proxy_reload),
             "valid": s.proxy_dns_valid_seconds}
            for s in config.services.values() if s.proxy and s.name != switched]


def _proxy_words(fronts: list[dict[str, Any]]) -> str:
    if not fronts:
        return "no proxy is configured in front (Docker's DNS lists both containers)"
    words = {"nginx-reload": "reload {s} (its proxy_pass resolved once) and let its old "
                             f"workers pass on what they accepted (at most {RELOAD_SETTLE:g}s)",
             "nginx-resolver": "reload {s} so it asks Docker's DNS afresh at once instead of "
                               "after its resolver's valid={v}s (waited out only if the "
                               f"reload fails), and let its old workers finish (at most "
                               f"{RELOAD_SETTLE:g}s)",
             "labels": "{s} follows the healthy container by its labels"}
    return "; ".join(words[p["mode"]].format(s=p["service"], v=p["valid"]) for p in fronts)


def _pre_stop_words(pre_stop: Sequence[str], wait: int) -> str:
    if not pre_stop:
        return ""
    return (f"first run `{' '.join(pre_stop)}` in it and wait until the engine reports it "
            f"unhealthy (at most {wait}s), so a proxy that follows health (Traefik) drops "
            "it before it is told to stop; then ")


def steps(config: Config, definition: dict[str, Any], service: str, *,
          image_id: str | None, ref: str | None, order: SwitchOrder) -> list[Step]:
    """The start-first switch of ``service`` as keyed steps. ``ref`` is the reference
    to start it from (tagged to ``image_id`` first), None for the image the compose
    files name (a deploy or an emergency rollback after the images are in place)."""
    spec = (definition.get("services") or {}).get(service) or {}
    svc_cfg = config.services.get(service)
    fronts = proxies(config, service)
    grace = policy.stop_grace(spec)
    start_key = f"switch-start:{service}"
    common = {"service": service, "start": start_key, "image_id": image_id, "grace": grace,
              "proxies": fronts}
    what = f"image {image_id[7:19]}" if image_id else "the image the compose files name"
    timeout = policy.ready_timeout(spec, svc_cfg.ready_timeout_seconds if svc_cfg else None)
    probe = svc_cfg.readiness_url if svc_cfg else None
    pre_stop = svc_cfg.pre_stop if svc_cfg else ()
    pre_wait = svc_cfg.pre_stop_wait_seconds if svc_cfg else 0
    return [
        Step(f"start a new {service} beside the old one", "switch.start",
             f"{order.describe()}; a second container of {service} from {what}, made by "
             "Compose (its name, labels, networks, aliases); the old one keeps serving"
             + (f"; {', '.join(sorted(_resolvers(fronts)))} re-resolve(s) through Docker's DNS, "
                "which names the new one at once: until it is ready, nginx's new connections "
                "to it are refused at once (a rule in nginx's network namespace, needs root) "
                "and go to the old one" if _resolvers(fronts) else ""),
             {**common, "ref": ref}, key=start_key),
        Step(f"wait until the new {service} is ready", "switch.ready",
             "its healthcheck" + (f" and {probe}" if probe else "")
             + f", at most {timeout:.0f}s; if it never gets ready it is removed and "
             + KEPT_SERVING, {**common, "timeout": timeout, "probe": probe},
             key=f"switch-ready:{service}"),
        Step(f"let the proxies see the new {service}", "switch.proxies", _proxy_words(fronts),
             common, key=f"switch-proxies:{service}"),
        Step(f"drain the old {service}", "switch.drain",
             _pre_stop_words(pre_stop, pre_wait) +
             f"stop it with its stop_grace_period ({grace:g}s) so requests in flight finish, "
             "then remove it" + ("; meanwhile nginx's new connections to it are refused at "
                                 "once (a rule in nginx's network namespace, taken down after; "
                                 "needs root), so nginx passes them to the new one; reload "
                                 "the proxies so none keeps its address" if any(
                 p["mode"] in RELOADED for p in fronts) else ""),
             {**common, "pre_stop": list(pre_stop), "pre_stop_wait": pre_wait},
             key=f"switch-drain:{service}"),
        Step(f"keep one {service} if the switch failed", "switch.abort",
             "while the old container runs, the new one is removed and " + KEPT_SERVING
             + "; once the old one is gone, the new one stays", common,
             on_failure=True, key=f"switch-abort:{service}"),
    ]


def _started(results: dict[str, Any], params: dict[str, Any]) -> dict[str, Any] | None:
    """The start step's result, None when it decided there was nothing to switch."""
    started = results.get(params["start"])
    if not isinstance(started, dict) or "skipped" in started:
        return None
    return started


def _container(ctx: RunContext, service: str, cid: str) -> ContainerInfo | None:
    return next((c for c in ctx.platform.containers(service) if c.id == cid), None)


def _start(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    service, ref = params["service"], params.get("ref")
    if not ref:
        # A whole-stack change: the definition is the new code's only now.
        data = ctx.platform.definition()
        spec = (data.get("services") or {}).get(service)
        if spec is None:
            return {"skipped": f"the new definition has no service {service}"}
        try:
            chosen = order_for(ctx.config, data, service)
        except UsageError as exc:
            chosen = SwitchOrder(policy.STOP_FIRST, (exc.message,), "backout.toml")
        if not chosen.start_first:
            return {"skipped": f"now {chosen.describe()}: Compose recreates it"}
        name = str(spec.get("image") or f"{ctx.platform.project_name(data)}-{service}")
        if ctx.platform.image(name) is None:
            return {"skipped": f"{name} is not on this host yet: Compose pulls it and "
                               "recreates the service"}
    else:
        if ctx.platform.image(params["image_id"]) is None:
            raise UnhealthyError(f"image {params['image_id'][:19]} of {service} is no longer "
                                 "on this host", fix="pick another release")
        ctx.platform.tag(params["image_id"], ref)
    holders = _resolver_containers(ctx, params.get("proxies", []))
    hold = _Hold(ctx, holders, _resolvers(params.get("proxies", []))) if holders else None
    pair = ctx.platform.start_beside(service, ref, operation_id=ctx.operation_id,
                                     on_join=hold.on_join if hold else None)
    if not pair.old:
        _take_down(ctx, holders, hold_label(ctx.operation_id))  # nothing else serves it
        return {"skipped": f"{service} had no container of another image to replace",
                "new": pair.new}
    return {"new": pair.new, "old": list(pair.old), "started_at": pair.started_at,
            **(hold.report() if hold else {})}


class _Hold:
    """Keeps a starting container out of reach of the nginx that re-resolve through
    Docker's DNS until it is ready: Docker's DNS names it from its start, and such an
    nginx would send it requests (answered late, or with errors, or by a release that
    never gets ready at all) as soon as its cached answer expires. A fence in each of
    those nginx's namespaces refuses their new connections to it at once, so nginx
    passes each request to the old container. Put up from start_beside's thread the
    moment the container joins a network; taken down once it is ready (``_ready``), or
    after it is removed (``_abort``)."""

    def __init__(self, ctx: RunContext, holders: list[str], names: Collection[str]) -> None:
        self.ctx, self.holders, self.names = ctx, holders, sorted(names)
        self.label = hold_label(ctx.operation_id)
        self.why: str | None = ctx.platform.fence_problem()
        if self.why is None:
            # written here, before the first rule, by this thread (the journal's own)
            _note_fences(ctx, self.label, holders)
        self.held: list[str] = []

    def on_join(self, container_id: str, addresses: Sequence[str]) -> None:
        if self.why is not None:
            return
        try:
            why = self.ctx.platform.fence(self.holders, [container_id], label=self.label,
                                          addresses=addresses)
        except BackoutError as exc:  # a rule could not be put up: taken down with the rest
            why = exc.message
        if why is None:
            self.held.append(container_id)
        elif not self.held:
            self.why = why

    def report(self) -> dict[str, Any]:
        if self.held:
            return {"held_from": self.names}
        return {"not_held": self.why or "the new container was never seen joining"}


def _ready(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    started = _started(results, params)
    holders = _resolver_containers(ctx, params.get("proxies", []))
    if started is None:
        _take_down(ctx, holders, hold_label(ctx.operation_id))
        return {"skipped": "nothing was started"}
    service, new = params["service"], started["new"]
    intr = interrupt.current()
    deadline = time.monotonic() + float(params["timeout"])
    watch = ReadyWatch()  # without a healthcheck: running a while, not at the first look
    while True:
        intr.check(f"waiting for the new {service}")
        c = _container(ctx, service, new)
        if c is None:
            raise UnhealthyError(f"the new container of {service} is gone; {KEPT_SERVING}")
        if watch.given_up(c):
            raise UnhealthyError(f"the new container of {service} is {watch.describe(c)}; "
                                 f"{KEPT_SERVING}")
        if watch.ready(c, time.monotonic()) and _probe_ok(ctx, new, params.get("probe")):
            # ready: the nginx held off it may reach it now (and the reloads tell them)
            released = _take_down(ctx, holders, hold_label(ctx.operation_id))
            return {"ready": new, "health": c.health,
                    **({"released_rules": released} if released else {})}
        if time.monotonic() > deadline:
            raise UnhealthyError(f"the new container of {service} did not become ready in "
                                 f"{params['timeout']:.0f}s ({watch.describe(c)}); "
                                 f"{KEPT_SERVING}")
        intr.sleep(READY_POLL)


def _probe_ok(ctx: RunContext, cid: str, probe: str | None) -> bool:
    if not probe:
        return True
    parts = urlsplit(probe)
    address = ctx.platform.container_address(cid, parts.port or 80)
    if address is None:
        return False
    answer = http.get(ctx.env, urlunsplit(parts._replace(netloc=address)), timeout=3)
    return answer.status is not None and 200 <= answer.status < 300


def _reloads(ctx: RunContext, fronts: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(proxy, container, argv) of each reload, straight into its running container (docker
    exec starts in a fraction of compose exec's time: the drain runs it between the
    old container's exit and anything else)."""
    out = []
    for front in fronts:
        if front["mode"] not in RELOADED:
            continue
        running = [c for c in ctx.platform.containers(front["service"]) if c.state == "running"]
        out += [(front["service"], c.id, ctx.platform.container_exec_argv(c.id, front["reload"]))
                for c in running]
    return out


def _worker_pids(ctx: RunContext, cid: str, *, serving: bool = False) -> set[str] | None:
    """The process IDs of the nginx workers in a proxy container (``serving``: not those
    an earlier reload left finishing a long request -- they take nothing new and are
    not this switch's to wait for); None when they cannot be told: no process list (a
    running nginx always shows its master), or no worker in it."""
    try:
        lines = ctx.platform.processes(cid)
    except BackoutError:
        return None
    workers = [line for line in lines if WORKER in line]
    if not workers:
        return None
    return {line.split()[0] for line in workers if not (serving and SHUTTING_DOWN in line)}


@dataclass
class Reloaded:
    """What a round of proxy reloads did: the proxies reloaded, those whose reload
    failed (only those allowed to fail get here), and the worker process IDs each
    reloaded container had before (None: not told apart) -- the old workers are
    exactly these, whatever their titles say in the instant after the reload."""

    proxies: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    before: dict[str, set[str] | None] = field(default_factory=dict)


def _run_reloads(ctx: RunContext, reloads: list[tuple[str, str, list[str]]],
                 before: dict[str, set[str] | None], *,
                 tolerate: Collection[str] = ()) -> Reloaded:
    """Reload each proxy container; a failure of a proxy in ``tolerate`` is recorded,
    any other raises."""
    out = Reloaded()
    done: set[str] = set()
    failed: set[str] = set()
    for proxy, cid, argv in reloads:
        try:
            ok = proc.run(ctx.env, argv, timeout=60, check=proxy not in tolerate,
                          what=f"reload {proxy}").ok
        except ExternalError:
            if proxy not in tolerate:
                raise
            ok = False  # timed out, or no such command: as good as refused
        if ok:
            done.add(proxy)
            out.before[cid] = before.get(cid)
        else:
            failed.add(proxy)
    out.proxies, out.failed = sorted(done - failed), sorted(failed)
    return out


def _old_workers_gone(ctx: RunContext, reloaded: Reloaded, limit: float,
                      first_poll: float) -> tuple[float, list[str]]:
    """Wait until none of the workers from before the reload is left in any reloaded
    container, at most ``limit`` seconds. (seconds waited, containers whose reload
    never took: no new worker appeared within RELOAD_TAKES -- `nginx -s reload` exits
    0 once it has signalled the master, which keeps its old workers when the new
    configuration does not load: waiting for them would be waiting for nothing)."""
    start = time.monotonic()
    intr = interrupt.current()
    never_took: list[str] = []
    for cid, pids in sorted(reloaded.before.items()):
        seen_new = False
        poll = first_poll
        while pids and not intr.stop_now:
            elapsed = time.monotonic() - start
            now = _worker_pids(ctx, cid)
            if now is None:
                break  # no longer told apart: nothing more to learn
            seen_new = seen_new or bool(now - pids)
            if not pids & now or (seen_new and elapsed >= limit):
                break
            if not seen_new and elapsed >= RELOAD_TAKES:
                never_took.append(cid)
                break
            intr.sleep(poll)
            # old workers usually go within milliseconds of the reload; one holding a
            # long request may take minutes: look often at first, then every POLL
            poll = min(poll * 2, max(poll, POLL))
    return round(time.monotonic() - start, 3), never_took


def _reported(reloaded: Reloaded, reloads: list[tuple[str, str, list[str]]],
              never_took: Collection[str] = ()) -> dict[str, Any]:
    """A round of reloads as step results say it: a reload that never took (its
    container in ``never_took``) counts as failed."""
    took_not = {proxy for proxy, cid, _argv in reloads if cid in never_took}
    failed = sorted(set(reloaded.failed) | took_not)
    return {"reloaded": [p for p in reloaded.proxies if p not in took_not],
            **({"reload_failed": failed} if failed else {})}


def _resolvers(fronts: list[dict[str, Any]]) -> set[str]:
    """The proxies with a fallback when their reload fails: their resolver's cache
    expires by itself."""
    return {p["service"] for p in fronts if p["mode"] == "nginx-resolver"}


def _resolver_containers(ctx: RunContext, fronts: list[dict[str, Any]]) -> list[str]:
    """The running containers of the nginx in front that re-resolve through Docker's
    DNS (a static one learns of the new container only from the reload after it is
    ready; a label-driven proxy follows its health itself)."""
    return _containers(_reloads(ctx, [f for f in fronts if f["mode"] == "nginx-resolver"]))


def _containers(reloads: list[tuple[str, str, list[str]]]) -> list[str]:
    """The proxy containers a round of reloads reaches, each once."""
    return sorted({cid for _p, cid, _a in reloads})


def _snapshot(ctx: RunContext, reloads: list[tuple[str, str, list[str]]],
              ) -> dict[str, set[str] | None]:
    return {cid: _worker_pids(ctx, cid, serving=True) for cid in _containers(reloads)}


def _proxies(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    started = _started(results, params)
    if started is None:
        return {"skipped": "nothing was started"}
    if not params["proxies"]:
        return {"skipped": "no proxy configured in front"}
    intr = interrupt.current()
    began = time.monotonic()
    # Every nginx in front is reloaded: one that resolved its upstream once learns the
    # new container; one that re-resolves through a resolver drops its cached answer
    # (the old container alone) now rather than `valid` seconds after it last asked.
    # Only a resolver has a fallback when its reload fails (its cache expires); a
    # static one that cannot reload would never see the new container: that fails the
    # step, and the abort step keeps the old one serving.
    reloads = _reloads(ctx, params["proxies"])
    resolvers = _resolvers(params["proxies"])
    try:
        reloaded = _run_reloads(ctx, reloads, _snapshot(ctx, reloads), tolerate=resolvers)
    except ExternalError as exc:  # a static nginx refused (`nginx -s reload` tests first)
        raise _cannot_reload(params["service"], str(exc)) from exc
    settled, never_took = _old_workers_gone(ctx, reloaded, RELOAD_SETTLE, WORKERS_POLL)
    if any(pids is None for pids in reloaded.before.values()):
        intr.sleep(max(0.0, RELOAD_SETTLE - settled))  # workers not told apart: 1 s
    report = _reported(reloaded, reloads, never_took)
    late = report.get("reload_failed", [])
    # only a reload that never took gets a static proxy here (a refused one raised)
    static_not = [proxy for proxy in late if proxy not in resolvers]
    if static_not:
        raise _cannot_reload(params["service"], f"{', '.join(static_not)}: the reload never "
                             "took (its master kept the old workers)")
    # A resolver nginx whose reload failed or did not take still learns the new address
    # when its cached answer expires: `valid` seconds after the new container joined.
    valid = max((float(p["valid"]) for p in params["proxies"] if p["service"] in late),
                default=0.0)
    if valid:
        intr.sleep(max(0.0, float(started["started_at"]) + valid + 0.5 - time.time()))
    return {**report, "settled_s": settled, "took_s": round(time.monotonic() - began, 3)}


def _cannot_reload(service: str, why: str) -> UnhealthyError:
    """A static nginx that cannot reload would never see the new container: the
    switch stops there, and the abort step keeps the old one serving."""
    return UnhealthyError(f"a proxy in front could not reload, so it would not see the new "
                          f"{service} ({why}); {KEPT_SERVING}",
                          fix="read the proxy's own log (`docker compose logs PROXY`) for "
                              "nginx's [emerg] line, fix its configuration, then run again")


def _retire_then_reload(ctx: RunContext, ids: list[str], params: dict[str, Any],
                        reloads: list[tuple[str, str, list[str]]],
                        before: dict[str, set[str] | None]) -> tuple[list[str], Reloaded]:
    """Stop ``ids`` with the service's grace, reload every proxy the moment the stop is
    answered (the stopped address has left Docker's DNS), then remove them. Every
    reload may fail: the stopped container is gone either way."""
    done: list[Reloaded] = []
    retired = ctx.platform.retire(
        ids, grace_seconds=float(params["grace"]),
        after_stop=lambda: done.append(_run_reloads(
            ctx, reloads, before, tolerate={p["service"] for p in params["proxies"]})))
    return retired, (done[0] if done else Reloaded())


def _drain(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    started = _started(results, params)
    if started is None:
        return {"skipped": "nothing was started"}
    # Once the old container is told to stop, the switch is finished, not cut short
    # by SIGINT: the new one is ready, and an old one half stopped serves nobody.
    interrupt.current().abortable = False
    # Once the old container has stopped its address is gone; an nginx still holding
    # it (resolved once, or cached by its resolver) would send requests into a black
    # hole until its connect timeout: reloaded the moment the old one is gone, its
    # workers ask Docker's DNS afresh (only the new container is left in it). Until
    # then (and until the workers from before that reload are gone) nginx's new
    # connections to the old address are refused at once where the platform can
    # fence it: nginx passes each such request to the new container instead of
    # waiting out its connect timeout in the instant between the stop and the reload.
    before = _pre_stop(ctx, params, started["old"]) if params.get("pre_stop") else {}
    reloads = _reloads(ctx, params["proxies"])
    fronts = _containers(reloads)
    label = fence_label(ctx.operation_id)
    not_fenced = _fence(ctx, fronts, started["old"], label) if fronts else None
    try:
        retired, reloaded = _retire_then_reload(ctx, started["old"], params, reloads,
                                                _snapshot(ctx, reloads))
        stopped = time.monotonic()
        # Requests an old worker had already sent toward the stopped address (unfenced)
        # wait for nginx's connect timeout, then go to the new container (and nginx
        # logs an error): the switch ends once those workers are gone, so what comes
        # next (a deploy's verify reading the logs) sees only the new release.
        waited, never_took = _old_workers_gone(ctx, reloaded, OLD_WORKERS_LIMIT, WORKERS_POLL)
        report = _reported(reloaded, reloads, never_took)
        if fronts and not_fenced is None:
            # a resolver nginx whose reload failed or never took keeps the old address
            # until its cached answer expires: the fence stays up that long
            late = set(report.get("reload_failed", [])) & _resolvers(params["proxies"])
            valid = max((float(p["valid"]) for p in params["proxies"] if p["service"] in late),
                        default=0.0)
            if valid:
                interrupt.current().sleep(max(0.0, stopped + valid + 0.5 - time.monotonic()))
    except BaseException:
        with contextlib.suppress(BackoutError):  # else the abort step tries again
            _take_down(ctx, fronts, label)
        raise
    # Always, fenced or not this run: a killed run may have left its rules behind.
    _take_down(ctx, fronts, label)
    fence = ({"fenced": sorted({p for p, _c, _a in reloads})} if fronts and not_fenced is None
             else {"not_fenced": not_fenced} if not_fenced else {})
    if before:
        ctx.store.set_fact(_pre_stop_fact(ctx, params["service"]), None)
    return {**before, "retired": retired, "serving": started["new"], "old_workers_s": waited,
            **report, **fence}


def _pre_stop(ctx: RunContext, params: dict[str, Any], old: list[str]) -> dict[str, Any]:
    """The service's pre_stop command in each old container still running, then wait
    until the engine reports each unhealthy (a label-driven proxy drops a container at
    that event; it would otherwise pass it requests until it has exited), at most
    pre_stop_wait seconds. A container without a healthcheck has nothing to wait for.
    A command that fails is reported, and the container stopped anyway."""
    service, argv = params["service"], list(params["pre_stop"])
    running = {c.id: c for c in ctx.platform.containers(service)
               if c.id in old and c.state == "running"}
    # Written before the first command: from here on the old containers may be
    # draining, which cannot be undone, so a failed drain is finished by the abort
    # (the new one, ready, kept) instead of undone (see _keep_one).
    ctx.store.set_fact(_pre_stop_fact(ctx, service), sorted(running))
    failed: dict[str, str] = {}
    for cid in running:
        done = proc.run(ctx.env, ctx.platform.container_exec_argv(cid, argv), timeout=60,
                        check=False, what=f"pre_stop in the old {service}")
        if not done.ok:
            # stopped anyway, as without pre_stop (a proxy may pass it requests until
            # it has exited), with no wait for a health change it will not make
            failed[cid] = (f"{cid[:12]}: exit {done.returncode} "
                           f"{ctx.env.redact(done.stderr.strip()[-200:])}".strip())
    waiting = {cid for cid, c in running.items() if c.health is not None and cid not in failed}
    began = time.monotonic()
    deadline = began + float(params["pre_stop_wait"])
    intr = interrupt.current()
    while waiting and time.monotonic() < deadline and not intr.stop_now:
        now = {c.id: c.health for c in ctx.platform.containers(service)}
        waiting = {cid for cid in waiting if cid in now and now[cid] != "unhealthy"}
        if waiting:
            intr.sleep(POLL)
    out: dict[str, Any] = {"pre_stop_s": round(time.monotonic() - began, 3)}
    if waiting:
        out["not_unhealthy"] = sorted(waiting)  # stopped anyway, as without pre_stop
    if failed:
        out["pre_stop_failed"] = sorted(failed.values())
    return out


def _pre_stop_fact(ctx: RunContext, service: str) -> str:
    """The journal's note that the old containers of ``service`` ran (or were running)
    their pre_stop command in this operation."""
    return f"pre_stop ran: op-{ctx.operation_id} {service}"


def fence_label(operation_id: int) -> str:
    """The tag of the fences one operation's drains put up (no spaces: rules print it
    bare)."""
    return f"backout-op-{operation_id}"


def hold_label(operation_id: int) -> str:
    """The tag of the fences that hold a starting container off (``_Hold``): apart from
    the drain's, as they come down at another time."""
    return f"backout-op-{operation_id}-new"


def _fence_fact(label: str) -> str:
    """The journal's note that fences tagged ``label`` may be up: written before the
    first rule, cleared once they are all down, so a resumed run knows to take them
    down even when it cannot (and then says so instead of passing over them)."""
    return f"fences up: {label}"


def _fence(ctx: RunContext, fronts: list[str], old: list[str], label: str) -> str | None:
    """Fence ``old`` in the proxy containers ``fronts``: None once fenced, else why not
    (the drain then goes on unfenced; a fence that failed half way is taken down with
    the drain's take-down)."""
    why = ctx.platform.fence_problem()
    if why is not None:
        return why
    earlier = _note_fences(ctx, label, fronts)
    try:
        why = ctx.platform.fence(fronts, old, label=label)
    except BackoutError as exc:  # a rule could not be put up (others may be)
        return exc.message
    if why is not None and not earlier:
        ctx.store.set_fact(_fence_fact(label), None)  # nothing to fence: nothing changed
    return why


def _note_fences(ctx: RunContext, label: str, fronts: list[str]) -> Any:
    """Note in the journal, before the first rule, that fences tagged ``label`` may be up
    in ``fronts``, added to an earlier note (a killed run's: its rules may be up too);
    that earlier note."""
    fact = _fence_fact(label)
    earlier = ctx.store.fact(fact)
    ctx.store.set_fact(fact, sorted(set(fronts) | set(earlier or ())))
    return earlier


class FenceLeftError(ExternalError):
    """A fence could not be taken down; left up it would refuse every later connection
    to that address (Docker gives it to the next container it starts). A cleanup step
    that meets it waits for `backout resume`."""

    code = "fence_left"
    retry_on_resume = True


def _take_down(ctx: RunContext, fronts: list[str], label: str) -> int:
    """Take down the fences of this operation, if the journal says any may be up: in
    the proxy containers it wrote down and those in front now."""
    fact = _fence_fact(label)
    noted = ctx.store.fact(fact)
    if not noted:
        return 0
    try:
        removed = ctx.platform.unfence(sorted(set(noted) | set(fronts)), label=label)
    except BackoutError as exc:
        raise FenceLeftError(
            f"a fence this switch put up in a proxy's network namespace could not be taken "
            f"down ({exc.message}); nginx cannot reach that address until it is",
            fix=f"fix that, then run `backout resume` (as root); by hand: `nsenter "
                f"--target PID --net iptables -S OUTPUT` (PID: the proxy's `docker inspect -f "
                f"'{{{{.State.Pid}}}}'`), then -D each rule commented {label}") from exc
    ctx.store.set_fact(fact, None)
    return removed


def _keep_one(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    service = params["service"]
    started = _started(results, params)
    containers = ctx.platform.containers(service)
    if started is None:
        if params["start"] in results:
            return {"skipped": "nothing was started"}
        # The start itself failed or was cut short: a container it made is told apart
        # from the old one by the target image.
        target = params.get("image_id") or _definition_image(ctx, service)
        new = [c.id for c in containers if c.image_id == target]
        old = [c.id for c in containers if c.image_id != target]
    else:
        new = [c.id for c in containers if c.id == started["new"]]
        old = [c.id for c in containers if c.id in started["old"]]
    running_old = [c.id for c in containers if c.id in old and c.state == "running"]
    drained = started is not None and ctx.store.fact(_pre_stop_fact(ctx, service))
    if drained and old and [c for c in containers if c.id in new and c.state == "running"]:
        # The drain had begun: the old containers ran their pre_stop (a proxy that
        # follows health drops them, or will: it cannot be undone), and the new one
        # was ready by then. The drain is finished instead of undone.
        reloads = _reloads(ctx, params["proxies"])
        removed, reloaded = _retire_then_reload(ctx, old, params, reloads, {})
        ctx.store.set_fact(_pre_stop_fact(ctx, service), None)
        return {"kept": new, "removed": removed,
                "said": f"the new {service} serves (the old one had been drained)",
                **_reported(reloaded, reloads)}
    if running_old and new:
        # Proxies that saw the new one forget its address the moment it has stopped;
        # a cleanup step: a proxy that cannot reload is reported, not fatal.
        reloads = _reloads(ctx, params["proxies"])
        removed, reloaded = _retire_then_reload(ctx, new, params, reloads, {})
        return {"removed": removed, "kept": running_old, "said": KEPT_SERVING,
                **_reported(reloaded, reloads)}
    if running_old or not new:
        return {"skipped": "no new container to remove"}
    # The old one is stopped (the drain was under way): the new one serves.
    leftovers = ctx.platform.retire(old, grace_seconds=0)
    return {"kept": new, "removed": leftovers, "said": f"the new {service} serves"}


def _abort(ctx: RunContext, params: dict[str, Any], results: dict[str, Any]) -> Any:
    # The drain may have been cut short with its fence up: taken down before the old
    # container is kept serving (nginx could not reach it through the fence). If that
    # fails nothing is removed (the new container, ready, serves through nginx) and
    # the step waits for `backout resume` (FenceLeftError).
    label = fence_label(ctx.operation_id)
    if ctx.store.fact(_fence_fact(label)):
        _take_down(ctx, _containers(_reloads(ctx, params["proxies"])), label)
    hold = hold_label(ctx.operation_id)
    try:
        kept = _keep_one(ctx, params, results)
    except BackoutError as exc:
        if ctx.store.fact(_fence_fact(hold)):
            # the hold stays while the new container may be there; a resume retries
            raise FenceLeftError(
                f"the new {params['service']} was not removed ({exc.message}), and the "
                f"fence holding it off nginx stays up until it is",
                fix="fix that, then run `backout resume`") from exc
        raise
    # The new container never got ready: held off until it is gone (its address would
    # be the next container's), then the hold comes down.
    _take_down(ctx, _resolver_containers(ctx, params["proxies"]), hold)
    return kept


def _definition_image(ctx: RunContext, service: str) -> str | None:
    data = ctx.platform.definition()
    spec = (data.get("services") or {}).get(service) or {}
    info = ctx.platform.image(str(spec.get("image") or
                                  f"{ctx.platform.project_name(data)}-{service}"))
    return info.id if info else None


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "switch.start": _start,
    "switch.ready": _ready,
    "switch.proxies": _proxies,
    "switch.drain": _drain,
    "switch.abort": _abort,
}
