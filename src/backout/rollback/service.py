"""``backout rollback service SERVICE [VERSION]``: one service back, the rest untouched.

The compose files are not edited: the target image is put in place through an
override file used for that one ``up --no-deps`` call. Other services keep their
containers (same IDs). When the running image then differs from what the
compose files say, we say so (and ``backout status`` keeps saying so).
"""

from __future__ import annotations

from typing import Any

from backout import switch
from backout.adapters import http
from backout.config import Config
from backout.errors import NotFoundError, UnhealthyError, UsageError
from backout.operations.executor import Action, RunContext
from backout.operations.plan import Plan, Step
from backout.platforms.base import Platform
from backout.rollback import common
from backout.state import Store
from backout.verify import EXPECTED_IMAGES


def resolve(store: Store, platform: Platform, service: str,
            version: str | None) -> dict[str, Any]:
    data = platform.definition()
    spec = common.require_service(data, service)
    project = platform.project_name(data)
    current = common.running_image(platform, service)
    if version is None:
        for rel in store.releases():
            svc = rel["services"].get(service)
            # a release whose image retention removed is no candidate
            if svc and svc["image_id"] != current and platform.image(svc["image_id"]):
                return {"image_id": svc["image_id"], "source": f"release {rel['id']}",
                        "release_id": rel["id"], "current": current, "project": project}
        raise NotFoundError(f"no recorded release ran another image of {service} than the one "
                            "running now", fix="name a VERSION (image tag or release id); "
                                               "see `backout releases`")
    release = common.release_by_ref(store, version)
    if release is not None:
        svc = release["services"].get(service)
        if not svc:
            raise NotFoundError(f"release {release['id']} has no service {service}")
        if platform.image(svc["image_id"]) is None:
            raise NotFoundError(f"the image of {service} in release {release['id']} "
                                f"({svc['image_id'][7:19]}) is no longer on this host",
                                fix="pick a newer release (`backout releases`) or an image tag")
        return {"image_id": svc["image_id"], "source": f"release {release['id']}",
                "release_id": release["id"], "current": current, "project": project}
    ref = version if (":" in version or "/" in version) else \
        f"{_untagged(str(spec.get('image') or service))}:{version}"
    info = platform.image(ref)
    if info is None:
        raise NotFoundError(f"no image {ref} on this host for {service}",
                            fix="name a tag that exists (`docker image ls`) or a release id")
    return {"image_id": info.id, "source": f"image {ref}", "release_id": None, "current": current,
            "project": project}


def _untagged(image: str) -> str:
    """An image reference without its tag and digest (a registry's port is no tag)."""
    name = image.split("@", 1)[0]
    repository, colon, tag = name.rpartition(":")
    return repository if colon and "/" not in tag else name


def plan(store: Store, platform: Platform, service: str, version: str | None, *,
         config: Config, order: str | None = None) -> Plan:
    """``order``: ``--order`` (start-first / stop-first), None to let the compose
    file and ``[services.NAME] switch`` decide (``backout.switch.order_for``)."""
    target = resolve(store, platform, service, version)
    short = target["image_id"][7:19]
    cur = target["current"][7:19] if target["current"] else "none"
    definition = platform.definition()
    ref = common.target_ref(target["project"], service, target["image_id"])
    if platform.switches_itself:
        # The platform orders the update itself (Swarm: update_config.order and its
        # health gating); backout.toml's switch and --order are Compose's.
        if order:
            raise UsageError(f"--order does not apply on {platform.kind}: it updates {service} "
                             "in the order of the service's update_config",
                             fix="drop --order; set deploy.update_config.order in the compose "
                                 "file")
        switch_json: dict[str, Any] = {"order": "the platform's", "reasons": [],
                                       "source": platform.kind}
        how = f"in {platform.kind}'s own update order"
        switching = [_recreate_step(service, short, cur, target,
                                    f"by {platform.kind} itself, in the order of the service's "
                                    "update_config")]
        spec = (definition.get("services") or {}).get(service) or {}
        update_order = ((spec.get("deploy") or {}).get("update_config") or {}).get("order")
        downtime = ("none expected: its update_config starts the new task first"
                    if update_order == "start-first" else
                    f"{service} while its task is replaced (update_config order "
                    f"{update_order or 'stop-first, the default'})")
    else:
        chosen = switch.order_for(config, definition, service, order)
        switch_json, how = chosen.to_json(), chosen.order
        if chosen.start_first:
            switching = switch.steps(config, definition, service, image_id=target["image_id"],
                                     ref=ref, order=chosen)
            downtime = (f"none expected: {service}'s new container serves before the old one "
                        "stops")
        else:
            switching = [_recreate_step(service, short, cur, target, chosen.describe())]
            downtime = f"{service} only, while its container is recreated (seconds)"
    steps = (
        *switching,
        Step(f"verify {service}", "rollback.service.verify",
             "the new container is healthy and its health URL answers", {"service": service},
             key=f"verify-service:{service}"),
        Step("record the expected image", "rollback.record_expected",
             "`backout verify` and `backout status` compare against it",
             {"images": {service: target["image_id"]}}, key="record-expected"),
    )
    return Plan("rollback.service", {"service": service, "version": version, **target,
                                     "switch": switch_json}, steps,
                summary=f"roll {service} back from {cur} to {short} ({target['source']}), {how}",
                downtime=downtime)


def _recreate_step(service: str, short: str, cur: str, target: dict[str, Any],
                   order: str) -> Step:
    return Step(
        f"recreate {service} from image {short}", "rollback.service.recreate",
        f"{order}; {service} now runs {cur}; its container is replaced by one of {short} "
        f"({target['source']}); no other container is touched, no image is built or pulled",
        {"service": service, "image_id": target["image_id"], "project": target["project"]},
        key=f"recreate:{service}")


def _recreate(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    ref = common.ensure_tagged(ctx.platform, params["project"], params["service"],
                               params["image_id"])
    ctx.platform.replace_service(params["service"], ref, operation_id=ctx.operation_id)
    return {"ref": ref}


def _verify(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    svc = params["service"]
    containers = ctx.platform.containers(svc)
    bad = [c for c in containers if not c.ready]
    if not containers or bad:
        raise UnhealthyError(f"{svc} is not healthy after the rollback: "
                             + ", ".join(f"{c.name} {c.state}/{c.health}" for c in bad or containers))
    svc_cfg = ctx.config.services.get(svc)
    if svc_cfg and svc_cfg.health_url:
        probe = http.get(ctx.env, svc_cfg.health_url)
        if probe.status != svc_cfg.health_status:
            raise UnhealthyError(f"{svc}: {svc_cfg.health_url} answered "
                                 f"{probe.status or probe.error} after the rollback")
    return {"healthy": True}


def _record_expected(ctx: RunContext, params: dict[str, Any], _r: dict[str, Any]) -> Any:
    expected = dict(ctx.store.fact(EXPECTED_IMAGES) or {})
    expected.update(params["images"])
    ctx.store.set_fact(EXPECTED_IMAGES, expected)
    return {"expected": params["images"]}


def drift(platform: Platform) -> dict[str, dict[str, str]]:
    """Services whose running image differs from what the compose files name."""
    data = platform.definition()
    project = platform.project_name(data)
    out = {}
    running = {c.service: c.image_id for c in platform.containers() if c.state in
               ("running", "restarting")}
    for svc, spec in (data.get("services") or {}).items():
        wanted = common.compose_file_image(platform, spec, project, svc)
        if svc in running and wanted and running[svc] != wanted:
            out[svc] = {"running": running[svc], "compose_file": wanted,
                        "compose_image": str(spec.get("image") or "")}
    return out


# This module's step actions by the names plans give them; the executor reads the table.
ACTIONS: dict[str, Action] = {
    "rollback.service.recreate": _recreate,
    "rollback.service.verify": _verify,
    "rollback.record_expected": _record_expected,
}
