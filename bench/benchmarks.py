"""The seven benchmarks of issue 7. Each takes the Rig and the Params and returns
``{"title", "rows": [Row.as_json()], "notes", "config"}``; every backout figure is
paired with the bare tool measured in the same loop, on the same stack."""

from __future__ import annotations

import contextlib
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backout.config.model import BackupsConfig
from backout.engines.mysql import DUMP_FLAGS
from bench.core import (
    BENCH_TOML,
    BenchError,
    JsonDict,
    Load,
    Monitor,
    Rig,
    Row,
    cpu_seconds,
    fired,
    floor,
    gap_figures,
    iso_epoch,
    rss_mib,
    tag_image_id,
)
from tests.support.stack import DATABASE, free_ports, wait_for

MB = 1_000_000
GB = 1_000_000_000
ZSTD_LEVEL = 3  # backout's [backups] zstd_level default; the bare pipes use the same


@dataclass
class Params:
    reps: int = 3
    mysql_mb: list[float] = field(default_factory=lambda: [100.0])
    redis_keys: list[int] = field(default_factory=lambda: [1_000_000])
    mongo_docs: list[int] = field(default_factory=lambda: [10_000])
    pg_mb: list[float] = field(default_factory=lambda: [100.0])
    monitor_seconds: float = 60.0
    # bench 6 again with the stack grown to each of these service counts ("20"), or by
    # so many services ("+1"): extra copies of the frontend app, each with a health
    # URL, /metrics and traffic
    monitor_services: list[str] = field(default_factory=list)
    rule_for: int = 10  # `for` of the shortened red-error-rate rule (bench 4 and 7)
    window: int = 10  # [monitor] window_seconds for bench 4 and 7
    interval: int = 2  # monitor --interval for bench 4 and 7
    v2_tag: str = "bench-v2"  # a second healthy backend image (bench 5)
    tail: float = 6.0  # bench 5 counts until this long after the rollback (nginx DNS: 5 s)


Bench = Callable[[Rig, Params], JsonDict]


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def result(title: str, rows: list[Row], notes: list[str], config: JsonDict | None = None,
           ) -> JsonDict:
    return {"title": title, "rows": [r.as_json() for r in rows], "notes": notes,
            "config": config or {}}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def container_floor(rig: Rig, service: str) -> float:
    """The physical floor of replacing a container: docker stop + docker start of the
    existing container + its healthcheck turning healthy (no create, no compose)."""
    cid = rig.stack.container_id(service)
    start = time.monotonic()
    for verb in ("stop", "start"):
        subprocess.run(["docker", verb, cid], capture_output=True, check=True, timeout=120)
    def healthy() -> bool:
        out = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", cid],
                             capture_output=True, text=True, check=False, timeout=60).stdout
        return out.strip() == "healthy"

    wait_for(healthy, timeout=120, interval=0.05, message=f"{service} healthy again")
    return time.monotonic() - start


def short_rule_toml(p: Params) -> str:
    """The runbook's RED error-rate rule with a shorter `for`, so a run finishes quickly."""
    return (f"\n[monitor]\ninterval_seconds = {p.interval}\nwindow_seconds = {p.window}\n\n"
            "[[monitor.rules]]\nname = \"red-error-rate\"\nsignal = \"error_rate\"\n"
            "comparison = \">\"\nthreshold = 0.5\n"
            f"for_seconds = {p.rule_for}\nlevel = \"RED\"\nseverity = \"SEV-2\"\n"
            "action = \"rollback-service\"\nclear_threshold = 0.1\nclear_for_seconds = 60\n")


# --------------------------------------------------------------------------- 1. service


def service_rollback(rig: Rig, p: Params) -> JsonDict:
    healthy = tag_image_id("backout-test/backend:healthy")
    ours: list[float] = []
    bare: list[float] = []
    floors: list[float] = []
    for i in range(p.reps):
        log(f"service rollback {i + 1}/{p.reps}")
        rig.deploy("backend", "errors")
        took = rig.backout("rollback", "service", "backend", "--yes").seconds
        if rig.image_id("backend") != healthy:
            raise BenchError("rollback service did not bring the healthy image back")
        ours.append(took)
        rig.deploy("backend", "errors")
        rig.set_image("backend", "healthy")
        bare.append(rig.compose_up("backend"))
        floors.append(container_floor(rig, "backend"))
    rig.measured["container_floor_s"] = floors
    rig.measured["bare_service_rollback_s"] = bare
    row = Row("rollback service backend (errors -> previous healthy image)", "s", ours, bare,
              "docker compose up -d --no-deps --wait backend (image present)",
              floor=floor("container stop+start+healthcheck (backend)", med(floors), "s"),
              extra={"floor_s": floors})
    return result("1. Service rollback", [row], [
        "Both start from the `errors` backend running; backout picks the previous release's "
        "image itself, the bare command gets the compose file edited back by hand (untimed).",
        "backout's figure includes its own verify of the service (health URL, container "
        "health, logs); the restart watch is off (`[verify] settle_seconds = 0`).",
    ])


# --------------------------------------------------------------------------- 2. emergency


def emergency_rollback(rig: Rig, p: Params) -> JsonDict:
    healthy = tag_image_id("backout-test/backend:healthy")
    ours: list[float] = []
    bare: list[float] = []
    floors: list[float] = []
    for i in range(p.reps):
        log(f"emergency rollback (code only) {i + 1}/{p.reps}")
        target = rig.set_image("backend", "healthy")
        rig.back_to_main("backend")
        rig.deploy("backend", "errors")
        ours.append(rig.backout("rollback", "emergency", target, "--yes").seconds)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: rig.image_id("backend") == healthy, timeout=10, interval=0.5)
        if rig.head() != target or rig.image_id("backend") != healthy:
            raise BenchError(f"rollback emergency: HEAD {rig.head()} (target {target}), "
                             f"backend {rig.image_id('backend')} (healthy {healthy})")
        rig.back_to_main("backend")  # the errors commit again
        bare.append(rig.sh('git checkout -q "$TARGET" && docker compose up -d --wait '
                           "--wait-timeout 240", env={"TARGET": target}, timeout=600).seconds)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: rig.image_id("backend") == healthy, timeout=10, interval=0.5)
        if rig.image_id("backend") != healthy:
            raise BenchError(f"the bare emergency rollback did not reach the target: HEAD "
                             f"{rig.head()} (target {target}), backend {rig.image_id('backend')}"
                             f" (healthy {healthy}); {rig.stack.inspect('backend')['Config']['Labels']}")
        if "container_floor_s" not in rig.measured:  # else: measured by service_rollback
            floors.append(container_floor(rig, "backend"))
        rig.git("checkout", "-q", "-f", "main")
    floors = floors or rig.measured["container_floor_s"]

    # --with-data: a checkpoint at the healthy commit holding the generated MySQL rows
    ensure_mysql_rows(rig, p.mysql_mb[0])
    data_ours: list[float] = []
    data_bare: list[float] = []
    per_gb_ours: list[float] = []
    per_gb_bare: list[float] = []
    restored: list[float] = []
    for i in range(p.reps):
        log(f"emergency rollback --with-data {i + 1}/{p.reps}")
        target = rig.set_image("backend", "healthy")
        rig.back_to_main("backend")
        cp = rig.backout("checkpoint", "--label", "bench: before a deploy").json()
        manifest = rig.manifest(cp["set_id"])
        raw = sum(int(a["raw_bytes"]) for a in manifest["artifacts"].values())
        mysql_dump = rig.project / ".backout" / "backups" / cp["set_id"] / "mysql.sql.zst"
        rig.deploy("backend", "errors")
        took = rig.backout("rollback", "emergency", f"cp{cp['checkpoint_id']}", "--with-data",
                           "--yes").seconds
        if rig.head() != target:
            raise BenchError(f"rollback emergency --with-data: HEAD {rig.head()}, not {target}")
        rig.back_to_main("backend")
        bare_took = rig.sh(
            'git checkout -q "$TARGET" && docker compose up -d --wait --wait-timeout 240 && '
            'zstd -q -dc "$DUMP" | docker compose exec -T -e MYSQL_PWD mysql mariadb --user=root',
            env={"TARGET": target, "DUMP": str(mysql_dump),
                 "MYSQL_PWD": rig.stack.secrets["MYSQL_ROOT_PASSWORD"]}, timeout=7200).seconds
        rig.git("checkout", "-q", "-f", "main")
        data_ours.append(took)
        data_bare.append(bare_took)
        restored.append(raw / GB)
        per_gb_ours.append(took / (raw / GB))
        per_gb_bare.append(bare_took / (raw / GB))
    rows = [
        Row("rollback emergency <commit> (code only, whole stack)", "s", ours, bare,
            "git checkout <commit> && docker compose up -d --wait (images present)",
            floor=floor("container stop+start+healthcheck (backend, the one service that "
                        "changes)", med(floors), "s"), extra={"floor_s": floors}),
        Row("rollback emergency cpN --with-data (code + MySQL + Redis + MongoDB)", "s",
            data_ours, data_bare,
            "git checkout + docker compose up -d --wait + zstd -dc mysql dump | mariadb "
            "(code + MySQL only)", extra={"gb_restored": restored}),
        Row("  the same, per GB restored (uncompressed dump bytes)", "s/GB", per_gb_ours,
            per_gb_bare, "the bare figure above over the same GB",
            extra={"gb_restored": restored}),
    ]
    return result("2. Emergency rollback", rows, [
        "Code only: HEAD is the healthy commit, a commit deploying the `errors` backend is "
        "deployed by hand, then rolled back to the healthy commit.",
        "--with-data restores every database of the checkpoint (safety backups first, writers "
        "stopped, counts checked); at small sizes the fixed cost dominates the per-GB figure.",
        f"MySQL holds the generated rows of the first size ({p.mysql_mb[0]:g} MB).",
    ], {"mysql_mb": p.mysql_mb[0]})


# --------------------------------------------------------------------------- 3. backups


def ensure_mysql_rows(rig: Rig, size_mb: float) -> int:
    """bench_rows in the app database, about size_mb MB of dump (rows of ~190 bytes:
    ids, ints, a datetime and 136 hex characters), added in chunks with MariaDB's
    SEQUENCE engine. Returns the row count."""
    want = max(1000, int(size_mb * MB / 190))
    rig.stack.mysql_query(
        "CREATE TABLE IF NOT EXISTS bench_rows (id BIGINT PRIMARY KEY, customer INT NOT NULL,"
        " amount_cents INT NOT NULL, created_at DATETIME NOT NULL, note VARCHAR(255) NOT NULL)"
        " ENGINE=InnoDB")
    have = int(rig.stack.mysql_scalar("SELECT COALESCE(MAX(id), 0) FROM bench_rows") or 0)
    while have < want:
        upto = min(want, have + 250_000)
        rig.stack.mysql_query(
            "INSERT INTO bench_rows SELECT seq, seq % 10007, (seq * 7919) % 100000,"
            " '2026-01-01' + INTERVAL (seq % 31536000) SECOND,"
            " CONCAT(SHA2(seq, 256), MD5(seq), SHA1(seq * 3))"
            f" FROM seq_{have + 1}_to_{upto}", timeout=1800)
        have = upto
    return have


def ensure_pg_rows(rig: Rig, size_mb: float) -> int:
    """bench_rows in PostgreSQL's app database, about size_mb MB of COPY data (rows
    shaped like MySQL's: ~190 bytes), added in chunks. Returns the row count."""
    want = max(1000, int(size_mb * MB / 190))
    rig.stack.pg_query(
        "CREATE TABLE IF NOT EXISTS bench_rows (id BIGINT PRIMARY KEY, customer INT NOT NULL,"
        " amount_cents INT NOT NULL, created_at TIMESTAMP NOT NULL, note TEXT NOT NULL)")
    have = int(rig.stack.pg_query("SELECT COALESCE(MAX(id), 0) FROM bench_rows")[0][0])
    while have < want:
        upto = min(want, have + 500_000)
        rig.stack.pg_query(
            "INSERT INTO bench_rows SELECT g, g % 10007, (g * 7919) % 100000,"
            " TIMESTAMP '2026-01-01' + g % 31536000 * INTERVAL '1 second',"
            " sha256(g::text::bytea)::text || md5(g::text) || md5((g * 3)::text)"
            f" FROM generate_series({have + 1}::bigint, {upto}) g", timeout=1800)
        have = upto
    return have


def pg_backups(rig: Rig, p: Params, disk: float) -> list[Row]:
    """PostgreSQL: backout's bundle (roles + pg_dump -Fc -Z0, checked, counted) against
    `pg_dump | zstd`; its restore (file next to the server, pg_restore --create -j)
    against the same bare steps."""
    from backout.engines.postgresql import DUMP_FLAGS as PG_FLAGS
    from backout.engines.postgresql import restore_jobs

    rows: list[Row] = []
    user = rig.stack.env["POSTGRES_USER"]
    jobs = restore_jobs()
    flags = " ".join(PG_FLAGS)
    dump_cmd = (f"docker compose exec -T -e PGPASSWORD postgres pg_dump -U {user} {flags} "
                f"-d {DATABASE} | zstd -q -{ZSTD_LEVEL} -T0 > \"$OUT\"")
    load_cmd = (f"zstd -q -dc \"$IN\" | docker compose exec -T postgres sh -c "
                "'cat > /tmp/bare.dump' && docker compose exec -T -e PGPASSWORD postgres sh -ec "
                f"'psql -X -q -U {user} -d postgres -c \"DROP DATABASE IF EXISTS {DATABASE} WITH "
                f"(FORCE)\" && pg_restore -U {user} --create --exit-on-error -j {jobs} -d postgres "
                "/tmp/bare.dump && rm -f /tmp/bare.dump'")
    for size in p.pg_mb:
        nrows = ensure_pg_rows(rig, size)
        r = rounds(rig, p, "postgresql", "postgresql.pgbundle.zst", dump_cmd, load_cmd,
                   {"PGPASSWORD": rig.stack.secrets["POSTGRES_PASSWORD"]},
                   f"PostgreSQL {size:g} MB", proven_dump=proven(dump_cmd, "postgresql"))
        rows += dump_rows(
            rig, r, db="postgresql", artifact="postgresql.pgbundle.zst", rows=nrows, disk=disk,
            label=f"PostgreSQL {r.raw_mb:.0f} MB dump ({nrows} generated rows + seed)",
            backup_how=f"pg_dump {flags} | zstd -{ZSTD_LEVEL} -T0 > file (in the container via "
                       "docker compose exec -T, PGPASSWORD in the environment)",
            restore_how="zstd -dc file | cat > file in the container; DROP DATABASE WITH "
                        f"(FORCE); pg_restore --create -j {jobs} (writers stopped, untimed)",
            whole_how="docker compose stop <writers>; the bare restore; "
                      "docker compose start <writers>", restore_extra={"jobs": jobs})
    return rows


def ensure_redis_keys(rig: Rig, keys: int) -> int:
    """bench:<i> string keys (about 40-byte values) up to `keys` in all, by a Lua loop
    in batches (EVAL runs in the server: fast, no client round trips)."""
    script = ("for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do "
              "redis.call('SET', 'bench:' .. i, 'value-' .. i .. '-abcdefghijklmnopqrstuvwxyz')"
              " end return 1")
    if int(rig.stack.redis_cmd("EXISTS", f"bench:{keys}")):
        return int(rig.stack.redis_cmd("DBSIZE"))
    start = 1
    while start <= keys:
        upto = min(keys, start + 200_000 - 1)
        rig.stack.redis_cmd("EVAL", script, "0", str(start), str(upto), timeout=600)
        start = upto + 1
    return int(rig.stack.redis_cmd("DBSIZE"))


def ensure_mongo_docs(rig: Rig, docs: int) -> int:
    code = (
        "coll = db['bench_docs']\n"
        f"want = {int(docs)}\n"
        "have = coll.estimated_document_count()\n"
        "while have < want:\n"
        "    upto = min(want, have + 2000)\n"
        "    coll.insert_many([{'_id': i, 'customer': i % 1000, 'amount_cents': (i * 7919) % 100000,"
        " 'note': ('%064x' % (i * 2654435761)) * 2, 'tags': ['a', 'b', str(i % 7)]}"
        " for i in range(have, upto)])\n"
        "    have = upto\n"
        "result = coll.estimated_document_count()\n"
    )
    return int(rig.stack.mongo_eval(code, timeout=1800))


def disk_write_mb_s(rig: Rig, mb: int) -> float:
    """dd of `mb` MiB with fsync into the scratch directory (the backups' disk)."""
    path = rig.scratch / "dd.test"
    start = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mb}", "conv=fsync"],
                   capture_output=True, check=True, timeout=600)
    took = time.monotonic() - start
    path.unlink()
    return mb * 1024 * 1024 / MB / took


def zstd_speeds(raw_file: Path) -> tuple[float, float]:
    """MB/s of `zstd -3 -T0` compressing raw_file and of `zstd -d` decompressing it,
    both to /dev/null (so the disk does not count)."""
    size = raw_file.stat().st_size
    zfile = raw_file.with_suffix(".zst-speed")
    start = time.monotonic()
    subprocess.run(["zstd", "-q", f"-{ZSTD_LEVEL}", "-T0", "-c", str(raw_file)],
                   stdout=subprocess.DEVNULL, check=True, timeout=3600)
    comp = size / MB / (time.monotonic() - start)
    subprocess.run(["zstd", "-q", f"-{ZSTD_LEVEL}", "-T0", "-f", "-o", str(zfile), str(raw_file)],
                   check=True, timeout=3600)
    start = time.monotonic()
    subprocess.run(["zstd", "-q", "-dc", str(zfile)], stdout=subprocess.DEVNULL, check=True,
                   timeout=3600)
    decomp = size / MB / (time.monotonic() - start)
    zfile.unlink()
    return comp, decomp


@dataclass
class Rounds:
    """MB/s of each repetition: backout's backup and restore next to the bare pipes'."""

    raw_mb: float = 0.0
    backup: list[float] = field(default_factory=list)
    bare_backup: list[float] = field(default_factory=list)
    restore_step: list[float] = field(default_factory=list)
    restore_whole: list[float] = field(default_factory=list)
    bare_restore: list[float] = field(default_factory=list)
    bare_restore_whole: list[float] = field(default_factory=list)
    proven_backup: list[float] = field(default_factory=list)  # the bare pipe + the proof
    dump_step: list[float] = field(default_factory=list)  # backup's journaled dump step alone
    backup_s: list[float] = field(default_factory=list)  # the same two, in seconds
    dump_step_s: list[float] = field(default_factory=list)
    # the whole rollback's journaled steps, seconds by step (where the time goes)
    whole_steps: list[dict[str, float]] = field(default_factory=list)
    # which command went first in each round (``turn``): backups, then restores
    first_backup: list[str] = field(default_factory=list)
    first_restore: list[str] = field(default_factory=list)
    # `backout backup DB --dry-run`: the command's start-up (Python, its config read
    # through Compose, the plan) with no dump, timed in the same rounds
    startup_s: list[float] = field(default_factory=list)


PROOF = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).with_name('proof.py')))}"


def proven(bare_dump: str, kind: str, *databases: str) -> str:
    """``bare_dump`` (a pipe ending ``| zstd ... > "$OUT"``) with the proof backout keeps
    in the middle (bench/proof.py), the compressed stream tested by a ``zstd -t`` as it
    is written (as backout's is) and the file fsync'd."""
    head, _, tail = bare_dump.rpartition("| zstd ")
    assert head and tail.endswith('> "$OUT"'), bare_dump
    tested = tail.removesuffix('> "$OUT"') + '| tee "$OUT" | zstd -t -q -'
    return (f"{head}| {PROOF} {kind} {' '.join(databases)} | zstd {tested} "
            '&& sync "$OUT"')


def rounds(rig: Rig, p: Params, db: str, artifact: str, bare_dump: str, bare_load: str,
           env: dict[str, str], what: str, proven_dump: str | None = None) -> Rounds:
    """`backout backup DB`, the bare dump pipe (writing "$OUT"), `backout rollback db DB`
    and the bare load pipe (reading "$IN"), each timed, p.reps times; ``proven_dump``:
    the bare pipe with the proof in it (``proven``), timed too.

    Which command goes first turns round by round (``turn``): the first command after a
    load can pay for what the server still does in the background (InnoDB's page
    flushing and purge, which no ``sync`` reaches), and with a fixed order backout's
    backup always came right after the previous round's bare load, so any such cost
    fell on backout alone. (Round 0 still starts with backout, right after the table
    is made.)"""
    r = Rounds()
    for i in range(p.reps):
        log(f"{what} {i + 1}/{p.reps}")
        one_round(rig, r, i, db, artifact, bare_dump, bare_load, env, proven_dump)
    return r


def one_round(rig: Rig, r: Rounds, i: int, db: str, artifact: str, bare_dump: str,
              bare_load: str, env: dict[str, str], proven_dump: str | None) -> None:
    """Round ``i`` of ``rounds``: its figures appended to ``r``."""
    out = rig.scratch / f"bare-{artifact}"
    set_id = ""
    seconds: dict[str, float] = {}

    def ours() -> None:
        nonlocal set_id
        done = rig.backout("backup", db)
        set_id = done.json()["set_id"]
        r.raw_mb = rig.manifest(set_id)["artifacts"][artifact]["raw_bytes"] / MB
        r.backup_s.append(done.seconds)
        r.dump_step_s.append(rig.step_seconds(int(done.json()["operation_id"]), f"dump {db}"))

    def bare() -> None:
        seconds["bare"] = rig.sh(bare_dump, env={**env, "OUT": str(out)}).seconds

    def proof() -> None:
        assert proven_dump is not None
        seconds["proven"] = rig.sh(proven_dump, env={**env, "OUT": str(out)}).seconds

    backups = {"backout": ours, "bare": bare,
               **({"proven": proof} if proven_dump is not None else {})}
    order = turn(list(backups), i)
    for name in order:
        rig.settle()
        backups[name]()
    r.first_backup.append(order[0])
    rig.settle()
    r.startup_s.append(rig.backout("backup", db, "--dry-run").seconds)
    # MB/s by this round's size, known once backout's backup ran (wherever it went)
    r.backup.append(r.raw_mb / r.backup_s[-1])
    r.dump_step.append(r.raw_mb / r.dump_step_s[-1])
    r.bare_backup.append(r.raw_mb / seconds["bare"])
    if proven_dump is not None:
        r.proven_backup.append(r.raw_mb / seconds["proven"])

    def restore() -> None:
        back = rig.backout("rollback", "db", db, set_id, "--yes")
        r.restore_whole.append(r.raw_mb / back.seconds)
        r.restore_step.append(r.raw_mb / rig.step_seconds(int(back.json()["operation_id"]),
                                                           f"restore {db}"))
        r.whole_steps.append(whole_steps(rig, int(back.json()["operation_id"]), db))

    def bare_restore() -> None:
        # like backout, the bare restore runs with the writers stopped (the app would
        # otherwise write into half-loaded tables)
        writers = " ".join(rig.writers(db))
        stop = rig.sh(f"docker compose stop {writers}").seconds if writers else 0.0
        load = rig.sh(bare_load, env={**env, "IN": str(out)}).seconds
        start = rig.sh(f"docker compose start {writers}").seconds if writers else 0.0
        r.bare_restore.append(r.raw_mb / load)
        r.bare_restore_whole.append(r.raw_mb / (stop + load + start))

    restores = {"backout": restore, "bare": bare_restore}
    order = turn(list(restores), i)
    for name in order:
        rig.settle()
        restores[name]()
    r.first_restore.append(order[0])


def turn(names: list[str], i: int) -> list[str]:
    """``names`` rotated by ``i``: in round i the (i mod n)-th goes first, the order kept."""
    k = i % len(names)
    return names[k:] + names[:k]


WHOLE_STEPS = ("verify {db} backup", "stop writers", "safety backup of {db}", "restore {db}",
               "start writers")


def whole_steps(rig: Rig, operation_id: int, db: str) -> dict[str, float]:
    """The seconds of each journaled step of a `rollback db` (those it ran)."""
    out = {}
    for step in WHOLE_STEPS:
        name = step.format(db=db)
        try:
            out[name] = round(rig.step_seconds(operation_id, name), 3)
        except BenchError:
            continue  # not in this plan (no writers to stop)
    return out


def proof_floor(r: Rounds, physical: float) -> JsonDict:
    """What a proven backup can reach here: the bare pipe with the proof in it. Beside
    it, backout's own dump step (the journal's timing), the rest of the command as
    seconds that do not grow with the data (start-up, config, plan, publish), and the
    proven pipe with backout's start-up added (a --dry-run of the same command)."""
    return floor(f"the bare pipe with the proof backout keeps in it (its checker and a "
                 f"sha256 in Python, zstd -t of the stream, fsync: bench/proof.py), "
                 f"{med(r.proven_backup):.3g} "
                 f"MB/s; zstd and the disk allow {physical:.0f}. backout's dump step "
                 f"alone: {med(r.dump_step):.3g} MB/s, the rest of the command a fixed "
                 f"{fixed_seconds(r):.2f} s; its start-up alone, timed apart (`--dry-run`: "
                 f"Python, the config read through Compose, the plan), "
                 f"{med(r.startup_s):.2f} s; the proven pipe plus that start-up: "
                 f"{with_startup(r):.3g} MB/s",
                 min(med(r.proven_backup), physical), "MB/s")


def with_startup(r: Rounds) -> float:
    """MB/s of the proven pipe with backout's start-up added (the medians)."""
    return r.raw_mb / (r.raw_mb / med(r.proven_backup) + med(r.startup_s))


def fixed_seconds(r: Rounds) -> float:
    """The seconds of `backout backup` outside its dump step (the median of each
    repetition's difference)."""
    return med([whole - step for whole, step in zip(r.backup_s, r.dump_step_s, strict=True)])


def step_extra(r: Rounds) -> JsonDict:
    out: JsonDict = {
        "dump_step_mb_s": r.dump_step, "outside_the_dump_step_s": round(fixed_seconds(r), 3),
        "startup_s": r.startup_s,
        "went_first": {"backups": r.first_backup, "restores": r.first_restore}}
    if r.proven_backup:
        out["proven_with_startup_mb_s"] = round(with_startup(r), 3)
    return out


# the floor loads over as many sessions as backout's default ([backups] restore_sessions)
RESTORE_SESSIONS = BackupsConfig().restore_sessions


def _split_dump(raw: Path, parts: int) -> tuple[Path, list[Path]]:
    """A mariadb-dump file split ahead of a parallel load, as a person might: the
    rows (``INSERT`` statements between ``LOCK TABLES`` and ``UNLOCK TABLES``) dealt round
    by round to ``parts`` files, each starting with the dump's head (its comments and
    ``SET`` lines: foreign-key and unique checks off, character set, SQL mode) and
    the ``USE`` of the rows' database; everything else stays in order in the main file,
    which runs first (the tables exist before their rows arrive). Not backout's
    splitter: the floor must not share its code. Triggers run with the main file,
    before the rows: right for this bench's schema (it has none), not for any dump."""
    main = raw.with_suffix(".main.sql")
    files = [raw.with_suffix(f".part{n}.sql") for n in range(parts)]
    outs = [f.open("wb") for f in files]
    head: list[bytes] = []
    in_head, in_rows, in_insert, database, turn = True, False, False, b"", 0
    told: list[bytes] = [b""] * parts  # the database each part was last told to USE
    with raw.open("rb") as src, main.open("wb") as rest:
        for line in src:
            if in_head and line.strip() and not line.startswith((b"--", b"/*")):
                in_head = False
                for out in outs:
                    out.write(b"".join(head))
            if in_head:
                head.append(line)
            elif line.startswith(b"USE `"):
                database = line
            elif line.startswith(b"LOCK TABLES `"):
                in_rows = True
            elif line.startswith(b"UNLOCK TABLES;"):
                in_rows = False
            if in_rows and (in_insert or line.startswith(b"INSERT INTO ")):
                # MariaDB 11's dump writes a row a line: the statement ends at the ";"
                if not in_insert and told[turn] != database:
                    outs[turn].write(database)
                    told[turn] = database
                outs[turn].write(line)
                in_insert = not line.rstrip(b"\r\n").endswith(b";")
                if not in_insert:
                    turn = (turn + 1) % parts
            else:
                rest.write(line)
    for out in outs:
        out.close()
    return main, files


def mysql_parallel_floor(rig: Rig, artifact: Path, rows: int, env: dict[str, str],
                         sessions: int = RESTORE_SESSIONS) -> JsonDict:
    """What a parallel load of this dump can reach on this machine, without backout:
    the bare run's own dump split ahead (untimed, :func:`_split_dump`), then timed its
    main file through one `mariadb` and the rows through ``sessions`` `mariadb` clients
    at once (each `zstd -dc part | docker compose exec -T ... mariadb`, as the bare
    single stream reads), with the writers stopped. The load must leave every row."""
    raw = artifact.with_suffix(".split.raw")
    subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(raw), str(artifact)], check=True,
                   timeout=3600)
    raw_mb = raw.stat().st_size / MB
    main, parts = _split_dump(raw, sessions)
    raw.unlink()
    for f in [main, *parts]:
        subprocess.run(["zstd", "-q", "-1", "-T0", "--rm", "-f", str(f)], check=True,
                       timeout=3600)
    client = "docker compose exec -T -e MYSQL_PWD mysql mariadb --user=root"
    zipped = [shlex.quote(str(f) + ".zst") for f in parts]
    script = (f"zstd -q -dc {shlex.quote(str(main) + '.zst')} | {client}\n"
              f"pids=''\nfor f in {' '.join(zipped)}; do\n"
              f"  (zstd -q -dc \"$f\" | {client}) & pids=\"$pids $!\"\ndone\n"
              "for pid in $pids; do wait $pid; done")
    # the proof backout's restore step ends with: every base table counted (COUNT(*),
    # one client run), timed after the load; the tables are listed before it, untimed
    # (backout's one statement lists and counts). Only bench_rows can be checked: the
    # app's tables in this dump hold what the writers had written when it was taken
    tables = [str(t) for (t, *_) in rig.stack.mysql_query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        f"'{DATABASE}' AND table_type = 'BASE TABLE'", database=None)]
    if not tables:
        raise BenchError(f"no tables in {DATABASE} before the bare parallel load")
    union = " UNION ALL ".join(
        f"SELECT '{t.replace(chr(39), chr(39) * 2)}', COUNT(*) FROM "
        f"`{DATABASE}`.`{t.replace('`', '``')}`" for t in tables)
    count = (f"printf '%s\\n' \"$COUNT_SQL\" | {client} --default-character-set=utf8mb4 "
             "--batch --skip-column-names")
    count_env = {**env, "COUNT_SQL": union}

    def counts(out: str) -> dict[str, int]:
        return {name: int(n) for name, n in (line.split("\t") for line in out.splitlines() if line)}

    writers = " ".join(rig.writers("mysql"))
    if writers:
        rig.sh(f"docker compose stop {writers}")
    try:
        rig.settle()
        took = rig.sh(script, env=env).seconds
        counted = rig.sh(count, env=count_env)
        loaded = counts(counted.stdout)
    finally:
        if writers:
            rig.sh(f"docker compose start {writers}")
        for f in [main, *parts]:
            Path(str(f) + ".zst").unlink(missing_ok=True)
    if loaded.get("bench_rows") != rows or set(loaded) != set(tables):
        raise BenchError(f"the bare parallel load left {loaded.get('bench_rows')} of {rows} "
                         f"rows in bench_rows; counted {sorted(loaded)} of {sorted(tables)}")
    return {"mb_s": raw_mb / (took + counted.seconds), "seconds": round(took + counted.seconds, 2),
            "load_mb_s": raw_mb / took, "load_s": round(took, 2),
            "count_s": round(counted.seconds, 2), "tables": len(tables), "sessions": sessions}


def dump_rows(rig: Rig, r: Rounds, *, db: str, label: str, artifact: str, rows: int,
              disk: float, backup_how: str, restore_how: str, whole_how: str,
              restore_extra: JsonDict | None = None,
              parallel: JsonDict | None = None) -> list[Row]:
    """The three rows of a logical dump (backup, restore step, whole rollback db),
    with the floors measured on the bare run's own output (left in the scratch dir
    as bare-<artifact>, removed here)."""
    out = rig.scratch / f"bare-{artifact}"
    raw_file = rig.scratch / f"bare-{artifact}.raw"
    subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(raw_file), str(out)], check=True,
                   timeout=3600)
    ratio_c = raw_file.stat().st_size / max(1, out.stat().st_size)
    comp, decomp = zstd_speeds(raw_file)
    raw_file.unlink()
    out.unlink()
    physical = min(comp, disk * ratio_c)
    backup_floor = floor(f"min(zstd -{ZSTD_LEVEL} -T0 {comp:.0f} MB/s, disk write "
                         f"{disk:.0f} MB/s (dd, fsync) x compression {ratio_c:.1f})",
                         physical, "MB/s")
    if r.proven_backup:
        backup_floor = proof_floor(r, physical)
    restore_floor = floor(f"zstd -d {decomp:.0f} MB/s", decomp, "MB/s")
    if parallel:
        others = "".join(f"; {t['sessions']} clients {t['mb_s']:.3g} MB/s (the load alone "
                         f"{t['load_mb_s']:.3g})" for t in parallel.get("tried", [])
                         if t["sessions"] != parallel["sessions"])
        restore_floor = floor(
            f"the same dump split ahead (untimed) and loaded bare by {parallel['sessions']} "
            f"mariadb clients at once after its schema, then its {parallel['tables']} tables "
            f"counted (COUNT(*), the proof the restore step ends with: "
            f"{parallel['count_s']:.1f} s), {parallel['mb_s']:.3g} MB/s "
            f"({parallel['mb_s'] / med(r.bare_restore):.2f}x the single stream; the load "
            f"alone {parallel['load_mb_s']:.3g} MB/s, "
            f"{parallel['load_mb_s'] / med(r.bare_restore):.2f}x{others}); "
            f"zstd -d {decomp:.0f} MB/s",
            min(parallel["mb_s"], decomp), "MB/s")
    return [
        Row(f"{label}: backup", "MB/s", r.backup, r.bare_backup, backup_how, kind="higher",
            floor=backup_floor,
            extra={"raw_mb": round(r.raw_mb, 1), "rows": rows, "compression": round(ratio_c, 2),
                   "proven_bare_backup": r.proven_backup, **step_extra(r)}),
        Row(f"{label}: restore (the restore step)", "MB/s", r.restore_step, r.bare_restore,
            restore_how, kind="higher", floor=restore_floor,
            extra={"raw_mb": round(r.raw_mb, 1), **(restore_extra or {}),
                   **({"bare_parallel_load": parallel} if parallel else {})}),
        Row(f"{label}: whole `rollback db {db}`", "MB/s", r.restore_whole, r.bare_restore_whole,
            whole_how, kind="higher",
            # the safety backup is a dump of the same data: at best the bare dump,
            # then the bare restore, one after the other
            floor=floor("bare dump then bare stop + load + start (the safety backup "
                        "it must take first)",
                        1 / (1 / med(r.bare_backup) + 1 / med(r.bare_restore_whole)), "MB/s"),
            extra={"includes": "verify the backup, safety backup, stop writers, restore, "
                               "counts, start writers", "steps_s": r.whole_steps}),
    ]


def backups(rig: Rig, p: Params) -> JsonDict:
    rows: list[Row] = []
    disk = disk_write_mb_s(rig, 64 if p.reps <= 1 else 256)
    log_bin = rig.stack.mysql_scalar("SELECT @@log_bin") == "1"
    flags = " ".join([*DUMP_FLAGS, *(["--master-data=2"] if log_bin else [])])
    dump_cmd = (f"docker compose exec -T -e MYSQL_PWD mysql mariadb-dump --user=root {flags} "
                f"--databases {DATABASE} | zstd -q -{ZSTD_LEVEL} -T0 > \"$OUT\"")
    load_cmd = 'zstd -q -dc "$IN" | docker compose exec -T -e MYSQL_PWD mysql mariadb --user=root'
    for size in p.mysql_mb:
        nrows = ensure_mysql_rows(rig, size)
        secret = {"MYSQL_PWD": rig.stack.secrets["MYSQL_ROOT_PASSWORD"]}
        r = rounds(rig, p, "mysql", "mysql.sql.zst", dump_cmd, load_cmd, secret,
                   f"MySQL {size:g} MB", proven_dump=proven(dump_cmd, "mysql", DATABASE))
        # backout's default session count, and one more: the floor is the better of them
        # (two cores here: a third session shows whether the count, not the machine, limits)
        loads = []
        for sessions in (RESTORE_SESSIONS, RESTORE_SESSIONS + 1):
            log(f"MySQL {size:g} MB: bare parallel load, {sessions} sessions")
            loads.append(mysql_parallel_floor(rig, rig.scratch / "bare-mysql.sql.zst", nrows,
                                              secret, sessions))
        parallel = {**max(loads, key=lambda f: f["mb_s"]), "tried": loads}
        rows += dump_rows(
            rig, r, db="mysql", label=f"MySQL {r.raw_mb:.0f} MB dump ({nrows} generated rows + seed)",
            artifact="mysql.sql.zst", rows=nrows, disk=disk, parallel=parallel,
            backup_how=f"mariadb-dump {flags} | zstd -{ZSTD_LEVEL} -T0 > file (in the container "
                       "via docker compose exec -T, MYSQL_PWD in the environment)",
            restore_how="zstd -dc file | mariadb (in the container via docker compose exec -T; "
                        "writers stopped, untimed)",
            whole_how="docker compose stop <writers>; zstd -dc file | mariadb; "
                      "docker compose start <writers>")

    bgsave = ("docker compose exec -T -e REDISCLI_AUTH redis sh -c 'redis-cli --no-auth-warning "
              "BGSAVE >/dev/null && while redis-cli --no-auth-warning INFO persistence | grep -q "
              "\"rdb_bgsave_in_progress:1\"; do sleep 0.1; done' && docker compose exec -T redis "
              f"cat /data/dump.rdb | zstd -q -{ZSTD_LEVEL} -T0 > \"$OUT\"")
    rdb_put = ('cid=$(docker compose ps -q redis) && zstd -q -d -f -o "$RDB" "$IN" && '
               'docker compose stop redis >/dev/null && docker cp "$RDB" "$cid:/data/dump.rdb" && '
               "docker compose up -d --no-deps --wait --wait-timeout 240 redis")
    for keys in p.redis_keys:
        total = ensure_redis_keys(rig, keys)
        r = rounds(rig, p, "redis", "redis.rdb.zst", bgsave, rdb_put,
                   {"REDISCLI_AUTH": rig.stack.secrets["REDIS_PASSWORD"],
                    "RDB": str(rig.scratch / "dump.rdb")}, f"Redis {keys} keys",
                   proven_dump=proven(bgsave, "redis"))
        if int(rig.stack.redis_cmd("DBSIZE")) != total:
            raise BenchError("the bare Redis restore lost keys")
        (rig.scratch / "bare-redis.rdb.zst").unlink(missing_ok=True)
        (rig.scratch / "dump.rdb").unlink(missing_ok=True)
        label = f"Redis {total} keys ({r.raw_mb:.0f} MB RDB)"
        rows += [
            Row(f"{label}: backup", "MB/s", r.backup, r.bare_backup,
                f"redis-cli BGSAVE, wait, cat dump.rdb | zstd -{ZSTD_LEVEL} -T0 > file",
                kind="higher", floor=proof_floor(r, disk),
                extra={"raw_mb": round(r.raw_mb, 1), "keys": total,
                       "proven_bare_backup": r.proven_backup, **step_extra(r)}),
            Row(f"{label}: restore (the restore step)", "MB/s", r.restore_step, r.bare_restore,
                "zstd -d > dump.rdb; docker compose stop redis; docker cp; "
                "docker compose up -d --wait redis", kind="higher",
                extra={"raw_mb": round(r.raw_mb, 1), "keys": total}),
            Row(f"{label}: whole `rollback db redis`", "MB/s", r.restore_whole,
                r.bare_restore_whole, "the same, with docker compose stop/start <writers>",
                kind="higher",
                floor=floor("bare backup then bare stop + restore + start (the safety "
                            "backup it must take first)",
                            1 / (1 / med(r.bare_backup) + 1 / med(r.bare_restore_whole)), "MB/s"),
                extra={"steps_s": r.whole_steps}),
        ]

    raw_tool = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).with_name('rawmongo.py')))}"
    port = rig.stack.ports["mongo"]
    for docs in p.mongo_docs:
        total = ensure_mongo_docs(rig, docs)
        r = rounds(rig, p, "mongodb", "mongodb.tar.zst",
                   f'{raw_tool} dump {port} {DATABASE} | zstd -q -{ZSTD_LEVEL} -T0 > "$OUT"',
                   f'zstd -q -dc "$IN" | {raw_tool} restore {port} {DATABASE}', {},
                   f"MongoDB stand-in {docs} docs")
        (rig.scratch / "bare-mongodb.tar.zst").unlink(missing_ok=True)
        label = f"MongoDB STAND-IN (nx-27017, not MongoDB) {total} docs ({r.raw_mb:.1f} MB BSON)"
        rows += [
            Row(f"{label}: backup", "MB/s", r.backup, r.bare_backup,
                "pymongo find() raw BSON of every collection | zstd (bench/rawmongo.py)",
                kind="higher", extra={"raw_mb": round(r.raw_mb, 2), "docs": total,
                                      **step_extra(r)}),
            Row(f"{label}: restore (the restore step)", "MB/s", r.restore_step, r.bare_restore,
                "zstd -dc | drop + insert_many per collection (bench/rawmongo.py)",
                kind="higher", extra={"raw_mb": round(r.raw_mb, 2), "docs": total}),
        ]
    rows += pg_backups(rig, p, disk)
    notes = [
        "MB/s are uncompressed dump bytes (the SQL text, the RDB file, the BSON, the "
        "pg_dump archives) per second "
        "of wall time, the same byte count for backout and the bare pipe.",
        "backout's backup figure includes what the bare pipe does not: fsync, the proof "
        "of the artifact computed as it is written (sha256, format check, row/key counts, "
        "the RDB's CRC-64) and the manifest.",
        "A proven backup's floor column also gives backout's own dump step (its journaled "
        "`dump <db>` step, from the state database) and the seconds of the command outside "
        "it (Python start-up, the config and Compose's, the plan, the publish): these do "
        "not grow with the data, so the ratio nears the dump step's as the data grows.",
        "The restore step is `rollback db`'s journaled `restore <db>` step (drop + load + "
        "exact row counts); the whole command adds a verify of the backup and a safety "
        "backup of the current data first.",
        "MongoDB figures come from the nx-27017 wire-protocol stand-in (SQLite underneath), "
        "not from MongoDB: they say nothing about mongod's speed.",
        "The MySQL restore's floor is a parallel load without backout, measured once per "
        "size on the bare run's dump: split ahead by a person's rule (rows dealt to the "
        "parts, the rest in order in a main file; untimed), then timed the main file "
        "through one `mariadb` and the parts through as many `mariadb` clients at once as "
        "backout's default `restore_sessions`, and again with one client more, writers "
        "stopped; then every table counted (`COUNT(*)` in one client run, timed: the "
        "exactness proof the restore step ends with, which issue 16 keeps); every row "
        "must be back. The floor is the faster of the two.",
    ]
    return result("3. Backup and restore throughput", rows, notes,
                  {"disk_write_mb_s": round(disk, 1), "mysql_mb": p.mysql_mb,
                   "redis_keys": p.redis_keys, "mongo_docs": p.mongo_docs, "pg_mb": p.pg_mb})


# --------------------------------------------------------------------------- 4. detection


def traffic(rig: Rig) -> list[Load]:
    """Steady API traffic on every app service (an error rate without requests is "no
    data", never silently green)."""
    return [Load(f"{rig.stack.url('backend')}/api/v1/items", workers=2, period=0.05),
            Load(f"{rig.stack.url('frontend')}/", workers=1, period=0.2),
            Load(f"{rig.stack.url('model-server')}/predict", workers=1, period=0.2)]


def _green(decision: JsonDict) -> bool:
    return decision.get("level") == "GREEN"


def detection_latency(rig: Rig, p: Params) -> JsonDict:
    rig.write_config(short_rule_toml(p))
    bound = float(p.rule_for + p.interval)
    took: list[float] = []
    arrival: list[float] = []
    spacing: list[float | None] = []
    refused: list[float] = []
    try:
        for i in range(p.reps):
            log(f"detection {i + 1}/{p.reps}")
            rig.deploy("backend", "healthy")
            rig.reset_monitor_state()
            loads = traffic(rig)
            for load in loads:
                load.__enter__()
            mon = Monitor(rig, "--interval", str(p.interval))
            try:
                mon.wait_for(_green, timeout=120, what="a GREEN decision before the fault")
                deployed = time.time()
                rig.deploy("backend", "errors")
                at, red = mon.wait_for(lambda d: fired(d, "red-error-rate", "backend"),
                                       timeout=p.rule_for + p.window + 120,
                                       what="red-error-rate firing for backend")
                # The fault is the errors release answering 5xx; the refused
                # connections while Compose replaces the container come before it and
                # are the deploy's own gap (health, not error_rate, sees those).
                onset = loads[0].first_failure_after(deployed, server_errors=True)
                if onset is None:
                    raise BenchError("the errors version never answered a 5xx")
                first = loads[0].first_failure_after(deployed)
                took.append(float(red["t"]) - onset)
                arrival.append(at - onset)
                refused.append(onset - first if first is not None else 0.0)
            finally:
                mon.stop()
                spacing.append(mon.spacing())
                for load in loads:
                    load.__exit__()
    finally:
        rig.write_config()
        rig.reset_monitor_state()
        rig.deploy("backend", "healthy")
    rows = [Row("fault onset (first 5xx) -> RED decision (red-error-rate, backend)", "s", took,
                [bound] * len(took), f"configured bound: `for` {p.rule_for} s + interval "
                f"{p.interval} s (not a tool)",
                floor=floor(f"`for` {p.rule_for} s + one interval {p.interval} s", bound, "s"),
                extra={"target_s": bound + 2, "decision_line_received_s": arrival,
                       "decision_spacing_s": spacing,
                       "failures_before_the_first_5xx_s": refused})]
    return result("4. Detection latency", rows, [
        f"Rule red-error-rate shortened to `for` {p.rule_for} s (runbook: 60 s) with "
        f"[monitor] window_seconds = {p.window} and --interval {p.interval}; the target is "
        "window + one interval + 2 s.",
        "Onset is the first 5xx the load generator saw from the `errors` backend (not "
        "the refused connections while Compose replaces the container before it: extra "
        "failures_before_the_first_5xx_s); the RED "
        "time is the decision's own timestamp (extra: when its JSON line reached us, and "
        "the median time between decisions, i.e. the interval as achieved).",
    ], {"for_seconds": p.rule_for, "window_seconds": p.window, "interval_seconds": p.interval})


# --------------------------------------------------------------------------- 5. nginx gap


def build_v2(tag: str) -> None:
    """A second healthy backend image (a label on top of :healthy), so that a rollback
    swaps containers without the errors version's own 5xx muddying the count."""
    dockerfile = ("FROM backout-test/backend:healthy\n"
                  f"LABEL io.backout.bench.version=\"{tag}\"\n")
    subprocess.run(["docker", "build", "-q", "-t", f"backout-test/backend:{tag}", "-"],
                   input=dockerfile, text=True, capture_output=True, check=True, timeout=300)


BACKEND_FIXED_PORT = '"127.0.0.1:${BACKEND_PORT:-8000}:8000"'
BACKEND_ANY_PORT = '"127.0.0.1::8000"'  # an ephemeral host port: two containers can run


STATIC_BACKEND = "proxy_pass http://backend:8000;"  # resolved once, when nginx loads it
RESOLVED_BACKEND = "proxy_pass http://$backend_upstream;"


@contextlib.contextmanager
def start_first_backend(rig: Rig) -> Iterator[None]:
    """The test stack as a zero-downtime deploy wants it: the backend publishes no
    fixed host port (a fixed one makes backout switch stop-first, rightly) and its
    health is read through nginx. Put back afterwards."""
    compose = rig.stack.compose_file
    text = compose.read_text()
    if BACKEND_FIXED_PORT not in text:
        raise BenchError("the backend's port line is not in docker-compose.yml")
    rig.git("checkout", "-q", "-f", "main")
    compose.write_text(text.replace(BACKEND_FIXED_PORT, BACKEND_ANY_PORT))
    rig.git("commit", "-q", "-am", "bench 5: backend without a fixed host port")
    rig.compose_up("backend")
    try:
        yield
    finally:
        rig.git("checkout", "-q", "-f", "main")
        compose.write_text(compose.read_text().replace(BACKEND_ANY_PORT, BACKEND_FIXED_PORT))
        rig.git("commit", "-q", "-am", "bench 5: the backend's fixed port back")
        rig.write_config()
        rig.compose_up("backend")


@contextlib.contextmanager
def nginx_in_front(rig: Rig, mode: str) -> Iterator[None]:
    """nginx as ``mode`` reaches the backend: "nginx-resolver" is the test stack's own
    configuration (`resolver 127.0.0.11 valid=5s` and a variable in proxy_pass);
    "nginx-reload" swaps in a static `proxy_pass http://backend:8000;` (the shape most
    nginx configurations have) in the running nginx. backout.toml declares it."""
    backend_port, nginx_port = rig.stack.env["BACKEND_PORT"], rig.stack.env["NGINX_PORT"]
    toml = re.sub(rf"(health_url = \"http://127\.0\.0\.1:){backend_port}/",
                  rf"\g<1>{nginx_port}/", rig.init_toml)
    if toml == rig.init_toml:
        raise BenchError("backout init wrote no backend health URL to adapt")
    if re.search(r'^proxy = "[a-z-]+"$', toml, re.M):  # `backout init` found it
        toml = re.sub(r'^proxy = "[a-z-]+"$', f'proxy = "{mode}"', toml, flags=re.M)
    else:
        toml = toml.replace("[services.nginx]\n", f'[services.nginx]\nproxy = "{mode}"\n', 1)
    if f'proxy = "{mode}"' not in toml:
        raise BenchError("no [services.nginx] in backout.toml to declare the proxy")
    (rig.project / "backout.toml").write_text(toml + BENCH_TOML)
    conf = (rig.project / "nginx" / "default.conf").read_text()
    if RESOLVED_BACKEND not in conf:
        raise BenchError("the test stack's nginx no longer proxies to $backend_upstream")
    if mode == "nginx-reload":
        _nginx_conf(rig, conf.replace(RESOLVED_BACKEND, STATIC_BACKEND))
    try:
        yield
    finally:
        if mode == "nginx-reload":
            _nginx_conf(rig, conf)
        rig.write_config()


def _nginx_conf(rig: Rig, text: str) -> None:
    """Into the running nginx, checked, reloaded."""
    staged = rig.project / ".bench-nginx.conf"
    staged.write_text(text)
    try:
        rig.sh(f"docker compose cp {staged.name} nginx:/etc/nginx/conf.d/default.conf && "
               "docker compose exec -T nginx nginx -t -q && "
               "docker compose exec -T nginx nginx -s reload", timeout=120)
    finally:
        staged.unlink()
    time.sleep(2)  # the old workers finish


def _during(rig: Rig, url: str, tail: float,
            change: Callable[[], float | tuple[float, JsonDict]]) -> JsonDict:
    """The load's figures over one change (from its start to ``tail`` after its end),
    and what the change says of itself (a deploy: when its switch ran, from t0)."""
    with Load(url, workers=4, period=0.02) as load:
        time.sleep(1)
        t0 = time.time()
        done = change()
        t1 = time.time()
        time.sleep(tail)
    took, said = done if isinstance(done, tuple) else (done, {})
    marks = {k: round(v - t0, 3) for k, v in said.items()}
    if "switch_from_s" in said:  # the switch's own stretch, its checkpoint's load aside
        marks["longest_in_the_switch_s"] = gap_figures(
            load.between(said["switch_from_s"], said["switch_to_s"]),
            t0)["longest_without_success_s"]
    return {**gap_figures(load.between(t0, t1 + tail), t0), "seconds": round(took, 3),
            "window_s": round(t1 + tail - t0, 3), **marks}


# What an operator runs after replacing a container behind an nginx that resolved its
# upstream once: without it that nginx keeps sending to the old container's address.
RELOAD_NGINX = " && docker compose exec -T nginx nginx -s reload"


def _switch(rig: Rig, who: str, target: str,
            mode: str) -> Callable[[], float | tuple[float, JsonDict]]:
    """The timed command of one run of bench 5 (``mode``: how nginx reaches the backend;
    the bare commands behind a static one reload it, as its operator must). A deploy
    also says when its switch began and ended (its journal: the new backend started,
    the old one drained), to tell a stretch of its checkpoint from one of its switch."""
    reload = RELOAD_NGINX if mode == "nginx-reload" else ""

    def run() -> float | tuple[float, JsonDict]:
        if who == "rollback":
            return rig.backout("rollback", "service", "backend", "healthy", "--yes").seconds
        if who == "bare":
            # --force-recreate: compose sometimes kept the container a start-first
            # switch had made (as Rig.deploy notes), and then swapped nothing
            return rig.sh("docker compose up -d --no-deps --force-recreate --wait "
                          "--wait-timeout 240 backend" + reload, timeout=600).seconds
        if who == "deploy":
            done = rig.backout("deploy", target, "--watch", "0", timeout=1800, expect=None)
            if done.returncode != 0:
                failed = [f"{s['name']}: {s['reason']}" for s in done.json().get("steps", [])
                          if s["status"] == "failed"]
                raise BenchError(f"backout deploy exited {done.returncode}: {failed}")
            op = int(done.json()["operation_id"])
            return done.seconds, {"switch_from_s": rig.step_times(op, "start a new")[0],
                                  "switch_to_s": rig.step_times(op, "drain the old")[1]}

        return rig.sh('git checkout -q "$TARGET" && docker compose up -d --wait '
                      "--wait-timeout 240" + reload, env={"TARGET": target},
                      timeout=600).seconds

    return run


def _beside(rig: Rig) -> Callable[[], float]:
    """The floor of bench 5's stretches: a second backend started beside the running
    one (a one-off `docker compose run`, which joins the network under no service
    alias, so no proxy ever sends it a request), healthy, then removed. What that
    start-up's CPU does to the load on this machine, nothing switched."""
    name = f"{rig.stack.project_name}-bench-beside"

    def health() -> str:
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                              capture_output=True, text=True, timeout=60).stdout.strip()

    def run() -> float:
        start = time.monotonic()
        rig.sh(f"docker compose run -d --no-deps --name {name} backend", timeout=300)
        try:
            wait_for(lambda: health() == "healthy", timeout=240, interval=0.1,
                     message="the one-off backend getting healthy")
        finally:
            rig.sh(f"docker rm -f {name}", timeout=120)
        return time.monotonic() - start

    return run


def _set_up(rig: Rig, mode: str, tag: str) -> None:
    """The backend at ``tag`` by hand before a measured run; a static nginx reloaded
    after it (a recreated container may get another address: seen as a deploy's
    requests failing before backout ever touched anything)."""
    rig.deploy("backend", tag)
    if mode == "nginx-reload":
        rig.sh(RELOAD_NGINX.removeprefix(" && "), timeout=120)
        time.sleep(1)  # its old workers finish


PROXY_MODES = {"nginx-reload": "a static `proxy_pass http://backend:8000;`",
               "nginx-resolver": "the test stack's `resolver 127.0.0.11 valid=5s` + "
                                 "`proxy_pass http://$backend_upstream;`"}


def _when(runs: list[JsonDict]) -> JsonDict:
    """Where each run's longest stretch began (seconds from the command's start), and
    for a deploy where its switch began and ended: inside the switch or before it."""
    out: JsonDict = {"longest_at_s": [f["longest_at_s"] for f in runs],
                     "seconds": [f["seconds"] for f in runs]}
    if all("switch_from_s" in f for f in runs):
        out["switch_s"] = [[f["switch_from_s"], f["switch_to_s"]] for f in runs]
        out["in_the_switch"] = [f["switch_from_s"] <= f["longest_at_s"] <= f["switch_to_s"]
                                for f in runs]
        out["longest_in_the_switch_s"] = [f["longest_in_the_switch_s"] for f in runs]
    return out


def requests_during_rollback(rig: Rig, p: Params) -> JsonDict:
    healthy = tag_image_id("backout-test/backend:healthy")
    v2 = tag_image_id(f"backout-test/backend:{p.v2_tag}")
    url = f"{rig.stack.url('nginx')}/api/v1/items"
    tail = p.tail
    runs: dict[tuple[str, str], list[JsonDict]] = {}
    with start_first_backend(rig):
        for mode in PROXY_MODES:
            with nginx_in_front(rig, mode):
                for i in range(p.reps):
                    log(f"{mode}: requests during a rollback {i + 1}/{p.reps}")
                    for who in ("rollback", "bare"):
                        _set_up(rig, mode, p.v2_tag)
                        if who == "bare":
                            rig.set_image("backend", "healthy")
                        runs.setdefault((mode, who), []).append(
                            _during(rig, url, tail, _switch(rig, who, "", mode)))
                        if rig.image_id("backend") != healthy:
                            raise BenchError(f"{who}: backend is not the healthy image "
                                             "afterwards")
                    log(f"{mode}: the load beside a second backend starting {i + 1}/{p.reps}")
                    _set_up(rig, mode, "healthy")
                    runs.setdefault((mode, "beside"), []).append(
                        _during(rig, url, tail, _beside(rig)))
                    log(f"{mode}: requests during a deploy {i + 1}/{p.reps}")
                    for who in ("deploy", "bare_deploy"):
                        _set_up(rig, mode, "healthy")
                        target = rig.set_image("backend", p.v2_tag)
                        rig.git("checkout", "-q", "HEAD~1")  # the running release checked out
                        runs.setdefault((mode, who), []).append(
                            _during(rig, url, tail, _switch(rig, who, target, mode)))
                        if rig.image_id("backend") != v2:
                            raise BenchError(f"{who}: backend is not {p.v2_tag} after the "
                                             "deploy")
                rig.deploy("backend", "healthy")
    rows: list[Row] = []
    for mode, words in PROXY_MODES.items():
        ours, bare = runs[(mode, "rollback")], runs[(mode, "bare")]
        deploy, bare_deploy = runs[(mode, "deploy")], runs[(mode, "bare_deploy")]
        beside = [f["longest_without_success_s"] for f in runs[(mode, "beside")]]
        machine = floor("the same load while a second backend starts beside the running "
                        f"one, nothing switched (median of {beside})",
                        statistics.median(beside), "s")
        rows += [
            Row(f"behind nginx with {words}: failed requests during `rollback service "
                "backend`", "requests", [f["failed"] for f in ours], [f["failed"] for f in bare],
                "docker compose up -d --no-deps --force-recreate --wait backend"
                + (RELOAD_NGINX if mode == "nginx-reload" else "") + ", same load",
                kind="count", extra={"backout_failed": [f["failed"] for f in ours],
                                     "baseline_failed": [f["failed"] for f in bare],
                                     "backout_requests": [f["requests"] for f in ours],
                                     "baseline_requests": [f["requests"] for f in bare],
                                     "statuses": sorted({s for f in ours + bare
                                                         for s in f["statuses"]})}),
            Row("  longest stretch without a successful answer", "s",
                [f["longest_without_success_s"] for f in ours],
                [f["longest_without_success_s"] for f in bare], "the same bare rollback",
                floor=machine, extra={"load_spacing_s": 0.02, "beside_s": beside,
                                      **_when(ours)}),
            Row("  rollback time (start-first)", "s", [f["seconds"] for f in ours],
                [f["seconds"] for f in bare],
                "docker compose up -d --no-deps --force-recreate --wait backend (stop-first)"
                + (RELOAD_NGINX if mode == "nginx-reload" else "")),
            Row("  failed requests during `deploy` of a healthy release", "requests",
                [f["failed"] for f in deploy], [f["failed"] for f in bare_deploy],
                "git checkout + docker compose up -d --wait"
                + (RELOAD_NGINX if mode == "nginx-reload" else "") + ", same load", kind="count",
                extra={"backout_requests": [f["requests"] for f in deploy],
                       "baseline_requests": [f["requests"] for f in bare_deploy],
                       "statuses": sorted({s for f in deploy + bare_deploy
                                           for s in f["statuses"]})}),
            Row("  longest stretch without a successful answer", "s",
                [f["longest_without_success_s"] for f in deploy],
                [f["longest_without_success_s"] for f in bare_deploy], "the same bare deploy",
                floor=machine, extra={"load_spacing_s": 0.02, "beside_s": beside,
                                      **_when(deploy)}),
        ]
    return result("5. Requests failing during a service rollback and a deploy behind nginx",
                  rows, [
        f"4 threads GET {url.split('//')[1].split(':')[0]}:<nginx>/api/v1/items with a 20 ms "
        "pause each; counted from the command's start to 6 s after its end (nginx caches "
        "the backend's address for 5 s).",
        "backout switches the backend start-first (issue 14): for this benchmark the backend "
        "publishes an ephemeral host port instead of the test stack's fixed one (a fixed "
        "host port makes backout fall back to stop-first, as it should). Each figure is "
        "measured behind nginx as most configurations write it (a static proxy_pass, "
        "backout.toml: proxy = \"nginx-reload\") and as the test stack's nginx does "
        "(a resolver and a variable: proxy = \"nginx-resolver\"); backout reloads either "
        "once the new container is ready and again the moment the old one has stopped.",
        "Rollback: both roll the backend from a second healthy image (`:healthy` + a label) "
        "back to `:healthy`, so every failure is the container swap's, not the app's. Deploy: "
        "`backout deploy <commit> --watch 0` (its checkpoint included) from `:healthy` to "
        "that second image; the bare one is `git checkout` + `docker compose up -d --wait`.",
        "Behind the static nginx every bare command ends with `docker compose exec -T nginx "
        "nginx -s reload` (without it that nginx keeps the old container's address: every "
        "request fails), and the set-up before each run reloads it too.",
        "Failure = no HTTP answer or a status >= 400 (statuses seen are in extra).",
        "The stretches' floor is measured in the same run: the same load while a second "
        "backend container starts beside the running one (`docker compose run -d "
        "--no-deps backend`, under no service alias: no proxy sends it anything), gets "
        "healthy and is removed. Its Python start-up on this 2-core machine stalls every "
        "request at once for a moment; the load's own spacing is 0.02 s.",
        "Each stretch row's extra says where each run's longest stretch began (seconds from "
        "the command's start); a deploy's also says when its switch ran (from its journal: "
        "the new backend started to the old one drained), whether the longest stretch fell "
        "inside it (by where it began), and the longest stretch between two answers both "
        "within it (a lower bound of the switch's own; the checkpoint before the switch "
        "dumps every database while the load runs).",
    ], {"tail_s": tail, "workers": 4, "pause_s": 0.02, "proxies": list(PROXY_MODES)})


# --------------------------------------------------------------------------- 6. overhead


def _watch_process(pid: int, seconds: float) -> tuple[float, float, float]:
    """(CPU s/min incl. reaped children, own CPU s/min, max RSS MiB) over `seconds`."""
    own0, kids0 = cpu_seconds(pid)
    t0 = time.monotonic()
    peak = rss_mib(pid)
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        peak = max(peak, rss_mib(pid))
    own1, kids1 = cpu_seconds(pid)
    minutes = (time.monotonic() - t0) / 60
    return (own1 + kids1 - own0 - kids0) / minutes, (own1 - own0) / minutes, peak


BARE_MONITOR_LABEL = ("a bash loop every 5 s: curl of every health URL and /metrics, docker "
                      "compose ps, docker compose logs --since 5s | grep errors (the runbook's "
                      "four terminals)")


@dataclass
class Overhead:
    """Benchmark 6's figures at one stack size, all repetitions."""

    services: int
    cpu: list[float] = field(default_factory=list)  # CPU s/min incl. children
    own: list[float] = field(default_factory=list)  # the monitor process alone
    rss: list[float] = field(default_factory=list)
    bare_cpu: list[float] = field(default_factory=list)
    bare_rss: list[float] = field(default_factory=list)
    # one evaluation: the monitor's own `evaluation_s` (median of a run's, its first
    # left out: it starts the connections), and one round of the bare loop's body
    evaluation: list[float] = field(default_factory=list)
    bare_evaluation: list[float] = field(default_factory=list)


def _service_count(rig: Rig) -> int:
    return len(rig.stack.compose("config", "--services").stdout.split())


EVALUATION_TARGET_S = 0.25  # issue 16: an evaluation in at most 250 ms


def _measure_overhead(rig: Rig, p: Params, urls: list[str]) -> Overhead:
    """`backout monitor` (default policy and interval) against the bare loop over
    ``urls``, each watched p.monitor_seconds, p.reps times."""
    got = Overhead(_service_count(rig))
    body = ("for u in " + " ".join(urls) + "; do curl -fsS -o /dev/null \"$u\" || "
            "true; done; docker compose ps --format json >/dev/null; docker compose logs "
            "--since 5s --no-color 2>&1 | grep -ciE 'error|exception|traceback' >/dev/null || "
            "true;")
    loop = f"while :; do {body} sleep 5; done"
    for i in range(p.reps):
        log(f"monitor overhead at {got.services} services {i + 1}/{p.reps} "
            f"({p.monitor_seconds:g} s each)")
        rig.reset_monitor_state()
        mon = Monitor(rig)
        try:
            mon.wait_for(lambda d: True, timeout=120, what="the monitor's first decision")
            c, o, r = _watch_process(mon.proc.pid, p.monitor_seconds)
        finally:
            mon.stop()
        took = [float(d["evaluation_s"]) for _t, d in mon.decisions[1:]
                if d.get("evaluation_s") is not None]
        if not took:
            raise BenchError("the monitor's decisions carry no evaluation_s")
        got.evaluation.append(round(statistics.median(took), 4))
        got.bare_evaluation.append(rig.sh(body).seconds)
        got.cpu.append(c)
        got.own.append(o)
        got.rss.append(r)
        bash = subprocess.Popen(["bash", "-c", loop], cwd=rig.project,
                                env=rig.stack.compose_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            c, _o, r = _watch_process(bash.pid, p.monitor_seconds)
        finally:
            bash.terminate()
            bash.wait(timeout=30)
        got.bare_cpu.append(c)
        got.bare_rss.append(r)
    return got


SCALE_SERVICE = """  scale-{n:02d}:
    image: backout-test/frontend:healthy
    environment:
      REDIS_HOST: redis
      REDIS_PASSWORD: "${{REDIS_PASSWORD}}"
    ports:
      - "127.0.0.1:{port}:3000"
    healthcheck:
      test: ["CMD", "python3", "/app/app.py", "healthcheck"]
      interval: 2s
      timeout: 10s
      retries: 3
      start_period: 10s
    labels:
      io.backout.test.run: "${{BACKOUT_TEST_RUN:-manual}}"
"""


@contextlib.contextmanager
def more_services(rig: Rig, count: int) -> Iterator[list[str]]:
    """``count`` more app services (copies of the frontend app on ports of their own),
    running, in backout.toml as `backout init --force` writes it for the grown stack,
    with light traffic; yields their base URLs. Everything is put back afterwards."""
    compose_file = rig.stack.compose_file
    original_compose, original_toml = compose_file.read_text(), rig.init_toml
    ports = free_ports(count)
    names = [f"scale-{n:02d}" for n in range(1, count + 1)]
    extra = "".join(SCALE_SERVICE.format(n=n, port=port)
                    for n, port in zip(range(1, count + 1), ports, strict=True))
    head, sep, rest = original_compose.partition("\nservices:\n")
    if not sep:
        raise BenchError(f"no top-level services: in {compose_file}")
    with contextlib.ExitStack() as undo:
        # registered before each change, run in reverse: the compose file and the
        # config come back even when removing the containers fails
        undo.callback(rig.write_config)
        undo.callback(setattr, rig, "init_toml", original_toml)
        undo.callback(compose_file.write_text, original_compose)
        compose_file.write_text(head + sep + extra + "\n" + rest)
        if names:
            undo.callback(rig.stack.compose, "rm", "-s", "-f", *names, check=False)
            rig.compose_up(*names)
        rig.backout("init", "--force")
        rig.init_toml = (rig.project / "backout.toml").read_text()
        rig.write_config()
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            undo.enter_context(Load(f"{url}/", workers=1, period=1.0))
        yield urls


def _grown_size(spec: str, base: int) -> int:
    """``--monitor-services`` entry: "20" (services in all) or "+1" (more than now)."""
    try:
        size = base + int(spec[1:]) if spec.startswith("+") else int(spec)
    except ValueError:
        raise BenchError(f"--monitor-services {spec}: a count (20) or an increment (+1)") from None
    if size < base:
        raise BenchError(f"--monitor-services {spec}: the stack already has {base} services")
    return size


def monitor_overhead(rig: Rig, p: Params) -> JsonDict:
    rig.write_config()  # the default policy, the default interval
    loads = traffic(rig)
    for load in loads:
        load.__enter__()
    urls = [f"{rig.stack.url('backend')}/api/v1/health/check", f"{rig.stack.url('frontend')}/",
            f"{rig.stack.url('model-server')}/healthy-check", f"{rig.stack.url('nginx')}/",
            *(f"{rig.stack.url(s)}/metrics" for s in ("backend", "frontend", "model-server"))]
    try:
        base = _measure_overhead(rig, p, urls)
        grown: list[Overhead] = []
        for spec in p.monitor_services:
            add = _grown_size(spec, base.services) - base.services
            with more_services(rig, add) as extra:
                grown.append(_measure_overhead(
                    rig, p, urls + [u for e in extra for u in (f"{e}/health", f"{e}/metrics")]))
    finally:
        for load in loads:
            load.__exit__()
    rows = [
        Row("CPU seconds per minute, incl. child processes (docker CLI)", "CPU s/min",
            base.cpu, base.bare_cpu, BARE_MONITOR_LABEL,
            extra={"own_cpu_s_per_min": base.own, "services": base.services}),
        Row("resident memory (peak)", "MiB", base.rss, base.bare_rss,
            "the same bash loop (bash itself)"),
        Row("one evaluation (collect, decide, record)", "s", base.evaluation,
            base.bare_evaluation, "one round of the same bash loop's body (no sleep)",
            extra={"target_s": EVALUATION_TARGET_S}),
    ]
    for g in grown:
        # what each service beyond the stack's own costs, from the medians
        per_service = ((med(g.cpu) - med(base.cpu)) / (g.services - base.services)
                       if g.services > base.services else None)
        rows.append(Row(f"CPU seconds per minute at {g.services} services", "CPU s/min",
                        g.cpu, g.bare_cpu, BARE_MONITOR_LABEL,
                        extra={"own_cpu_s_per_min": g.own, "services": g.services,
                               "cpu_s_per_min_per_added_service": per_service}))
        rows.append(Row(f"resident memory (peak) at {g.services} services", "MiB", g.rss,
                        g.bare_rss, "the same bash loop (bash itself)"))
        rows.append(Row(f"one evaluation at {g.services} services", "s", g.evaluation,
                        g.bare_evaluation, "one round of the same bash loop's body (no sleep)",
                        extra={"target_s": EVALUATION_TARGET_S}))
    return result("6. Monitor overhead", rows, [
        "`backout monitor --json` with the default policy and interval (5 s), watching the "
        "whole stack under light traffic; measured from its first decision on (startup "
        "excluded), from /proc/<pid>/stat (utime+stime, plus cutime+cstime of reaped "
        "children) and /proc/<pid>/status (VmRSS, sampled every second).",
        "At a grown size, the added services are copies of the frontend app (health URL, "
        "/metrics, one request a second each), configured by `backout init --force`; the "
        "bare loop curls their health URL and /metrics too.",
        "One evaluation is the monitor's own `evaluation_s` (collect every signal, decide, "
        "record: the median of a run's decisions after its first), against one round of "
        "the bare loop's body timed alone; the issue's target is 0.25 s.",
    ], {"seconds": p.monitor_seconds, "interval_seconds": 5,
        "services": [base.services, *(g.services for g in grown)]})


# --------------------------------------------------------------------------- 7. end to end


def end_to_end_recovery(rig: Rig, p: Params) -> JsonDict:
    healthy = tag_image_id("backout-test/backend:healthy")
    rig.write_config(short_rule_toml(p))
    from_onset: list[float] = []
    from_deploy: list[float] = []
    failed: list[int] = []
    bare: list[float] = []
    try:
        for i in range(p.reps):
            log(f"end-to-end recovery {i + 1}/{p.reps}")
            rig.deploy("backend", "healthy")
            rig.backout("release", "record", "--note", "bench: healthy before the deploy")
            rig.reset_monitor_state()
            loads = traffic(rig)
            for load in loads:
                load.__enter__()
            mon = Monitor(rig, "--auto-rollback", "--interval", str(p.interval))
            try:
                mon.wait_for(_green, timeout=120, what="a GREEN decision before the deploy")
                deployed = time.time()
                rig.set_image("backend", "errors")
                rig.compose_up("backend")
                at, _red = mon.wait_for(lambda d: fired(d, "red-error-rate", "backend"),
                                        timeout=p.rule_for + p.window + 300,
                                        what="the RED decision (after rollback and verify)")
                onset = loads[0].first_failure_after(deployed, server_errors=True)
            finally:
                mon.stop()
                for load in loads:
                    load.__exit__()
            if onset is None:
                raise BenchError("the errors version never answered a 5xx")
            if rig.image_id("backend") != healthy:
                raise BenchError("the automatic rollback did not bring the healthy image back")
            recovered = _verified_at(rig, deployed) or at
            from_onset.append(recovered - onset)
            from_deploy.append(recovered - deployed)
            failed.append(sum(1 for s in loads[0].between(onset, recovered)
                              if not 200 <= s.status < 400))
            if "bare_service_rollback_s" not in rig.measured:
                # the bare rollback of the same change, for the bound
                rig.deploy("backend", "errors")
                rig.set_image("backend", "healthy")
                bare.append(rig.compose_up("backend"))
    finally:
        rig.write_config()
        rig.reset_monitor_state()
        rig.deploy("backend", "healthy")
    bare = bare or rig.measured["bare_service_rollback_s"]
    bound = [p.rule_for + p.interval + b for b in bare]
    rows = [
        Row("broken deploy: first 5xx -> verified healthy previous release", "s", from_onset,
            bound, f"bound: `for` {p.rule_for} s + interval {p.interval} s + the bare "
            "docker compose up --no-deps --wait rollback (measured in this run)",
            floor=floor(f"`for` {p.rule_for} s + interval {p.interval} s + container swap",
                        p.rule_for + p.interval + med(bare), "s"),
            extra={"bare_rollback_s": bare, "failed_requests": failed}),
        Row("  the same, from the start of the deploy command", "s", from_deploy, None, None),
        Row("  failed backend requests from onset to recovery", "requests",
            [float(f) for f in failed], None, None, kind="count",
            extra={"failed_requests": failed}),
    ]
    return result("7. End-to-end recovery with monitor --auto-rollback", rows, [
        "`backout monitor --auto-rollback --interval "
        f"{p.interval}` with red-error-rate `for` {p.rule_for} s; the `errors` backend is "
        "deployed by hand (commit + docker compose up); recovery ends when the incident's "
        "timeline records `verified` (the rollback's own checks passed).",
    ], {"for_seconds": p.rule_for, "interval_seconds": p.interval, "window_seconds": p.window})


def _verified_at(rig: Rig, since: float) -> float | None:
    """When the incident opened after `since` recorded its `verified` step."""
    times = [iso_epoch(ev["ts"]) for incident in rig.backout("incidents").json()["incidents"]
             if incident.get("rule") == "red-error-rate"
             for ev in incident.get("timeline", [])
             if ev.get("kind") == "verified" and iso_epoch(ev["ts"]) >= since]
    return min(times) if times else None


# --------------------------------------------------------------------------- 8. off-site copy


def offsite_copy(rig: Rig, p: Params) -> JsonDict:
    """Issue 17: `backout backups copy` of one checkpoint's set to a fresh restic
    repository (a local path) against a bare `restic init` + `restic backup` of the same
    files into another fresh one, in the same loop."""
    import os
    import secrets
    import shutil

    rig.write_config()
    ensure_mysql_rows(rig, p.mysql_mb[0])  # a set of a known size (bench 3's first size)
    cp = rig.backout("checkpoint", "--label", "bench: off-site copy").json()
    set_id = cp["set_id"]
    set_dir = rig.project / ".backout" / "backups" / set_id
    size = sum(f.stat().st_size for f in set_dir.iterdir() if f.is_file())
    password = secrets.token_hex(16)
    # the password reaches backout through its environment (password_env), never argv
    os.environ["BACKOUT_BENCH_REPO_PASSWORD"] = password
    ours, bare = [], []
    try:
        for i in range(p.reps):
            mine, theirs = rig.scratch / f"restic-backout-{i}", rig.scratch / f"restic-bare-{i}"
            rig.write_config(f'\n[repositories.bench]\nurl = "{mine}"\n'
                             'password_env = "BACKOUT_BENCH_REPO_PASSWORD"\n')
            ours.append(rig.backout("backups", "copy", set_id, "--to", "bench").seconds)
            bare.append(rig.sh(f'restic --repo "{theirs}" init -q --repository-version 2 && '
                               f'cd .backout/backups && restic --repo "{theirs}" backup -q '
                               f"{set_id}", env={"RESTIC_PASSWORD": password}).seconds)
            shutil.rmtree(mine, ignore_errors=True)
            shutil.rmtree(theirs, ignore_errors=True)
    finally:
        os.environ.pop("BACKOUT_BENCH_REPO_PASSWORD", None)
        rig.write_config()
    mb = size / MB
    rows = [Row(f"copy of a {mb:.1f} MB set to a fresh local restic repository", "MB/s",
                [mb / t for t in ours], [mb / t for t in bare],
                "restic init + restic backup of the same set directory", kind="higher",
                extra={"set_mb": round(mb, 2)}),
            Row("the same, wall time", "s", ours, bare,
                "restic init + restic backup of the same set directory")]
    notes = ["backout's copy includes what the bare command does not: opening the "
             "repository to see whether it exists, the copy's check (manifest read back with "
             "`restic dump`, every artifact listed with `restic ls`), one `restic check` of "
             "the repository, and the state store's record.",
             "A local-path repository on the same disk: the figure is restic's and backout's "
             "work, not a network's. The SFTP path is exercised by tests/integration/"
             "test_offsite.py, not timed.",
             "The set's artifacts are already zstd-compressed: restic's own compression "
             "gains little on them."]
    return result("8. Off-site copy throughput", rows, notes, {"set_bytes": size})


BENCHMARKS: dict[str, Bench] = {
    "service_rollback": service_rollback,
    "emergency_rollback": emergency_rollback,
    "backups": backups,
    "detection_latency": detection_latency,
    "requests_during_rollback": requests_during_rollback,
    "monitor_overhead": monitor_overhead,
    "end_to_end_recovery": end_to_end_recovery,
    "offsite_copy": offsite_copy,
}
