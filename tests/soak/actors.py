"""The processes of the soak and fault tests: ``python -m tests.soak.actors ROLE OUT_DIR [INDEX]``.

Each runs with ``DJANGO_SETTINGS_MODULE=tests.soak.settings`` and reads its parameters from
``OUT_DIR/config.json``. Roles:

* ``worker``: runs tracked jobs that report progress, write logs, sometimes fail, and stop
  when asked to; now and then records a run whose worker is gone (old heartbeat) for the
  reaper. One JSON line per run in ``worker-INDEX.jsonl``: what the job did.
* ``killer``: asks random running runs to stop, through the API.
* ``purger`` / ``reaper``: ``purge_jobstatus`` / ``reap_jobstatus`` in a loop.
* ``reader``: polls the API and notes any run it saw finished and later saw otherwise.
* ``beater``: one tracked job that reports progress until it is killed (the crash test).
* ``outage``: one tracked job that runs through a database restart (the restart test).

The looping roles stop when ``OUT_DIR/stop`` exists and write ``ROLE-INDEX.json``. Every
role records each ``job_status_changed`` it sends in ``signals-ROLE-INDEX.jsonl``, and
every warning of ``django_jobstatus`` (a write that failed) in its report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import time
import traceback
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import django

KEPT = "soak.kept"  # never purged: the final state is read from the table
CHURN = "soak.churn"  # purged while the soak runs
ABANDONED = "soak.abandoned"  # a run whose worker is gone, for the reaper


class PlannedError(Exception):
    """The error a soak job raises on purpose."""


class _Warnings(logging.Handler):
    """Collect what django_jobstatus logs at WARNING and above: writes that failed."""

    def __init__(self, on_record: Any = None) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.on_record = on_record

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        self.messages.append(text)
        if self.on_record is not None:
            self.on_record(record)


def _record_signals(path: Path) -> None:
    from django_jobstatus.signals import job_status_changed

    out = path.open("a", buffering=1)

    def receiver(sender: Any, run: Any, previous: str, status: str, **_: Any) -> None:
        out.write(
            json.dumps({"run": str(run.pk), "previous": previous, "status": status})
            + "\n"
        )

    job_status_changed.connect(receiver, weak=False, dispatch_uid="soak-recorder")


def _stopped(out: Path) -> bool:
    return (out / "stop").exists()


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201


# The soak.


def _one_job(
    job_name: str, plan: dict[str, Any], rng: random.Random, index: int, n: int
) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from django_jobstatus import JobKilled, track

    starts: list[float] = []
    state: dict[str, Any] = {
        "outcome": "succeeded",
        "logs": 0,
        "errors": 0,
        "done": 0,
        "end": None,
    }
    item_seconds = plan["item_seconds"]
    job = None
    # Some jobs run inside their own transaction: tracking then writes through a second
    # connection, so the progress shows at once and the end survives the job's rollback.
    own = transaction.atomic() if plan["atomic"] else contextlib.nullcontext()
    try:
        with (
            own,
            track(job_name, params={"worker": index, "n": n}, source="command") as job,
        ):
            if plan["atomic"]:
                get_user_model().objects.filter(username=f"soak-{index}").exists()
            try:
                job.progress(0, total=plan["items"])
                for i in range(plan["items"]):
                    starts.append(round(time.time(), 4))
                    job.check_kill()
                    if i == plan["fail_at"]:
                        raise PlannedError(f"planned failure at item {i}")
                    time.sleep(item_seconds)
                    if rng.random() < 0.3:
                        job.info("worker %d job %d item %d", index, n, i)
                        state["logs"] += 1
                    if rng.random() < 0.02:
                        job.error("worker %d job %d item %d went wrong", index, n, i)
                        state["logs"] += 1
                        state["errors"] += 1
                    state["done"] += 1  # the item is done: advance() records it, then
                    job.advance()  # may raise JobKilled (a kill request seen)
                job.result = {"items": plan["items"]}
            except JobKilled:
                state["outcome"] = "killed"
                raise
            except PlannedError:
                state["outcome"] = "failed"
                raise
            finally:
                state["end"] = time.time()
    except PlannedError:
        pass
    except Exception:
        state["outcome"] = "error"
        state["error"] = traceback.format_exc()
    return {
        "run": str(job.run.pk) if job is not None else None,
        "name": job_name,
        "items": plan["items"],
        "atomic": plan["atomic"],
        "starts": starts,
        "recorded": job.run.status if job is not None else None,
        **state,
    }


def worker(config: dict[str, Any], out: Path, index: int) -> None:
    from django.utils import timezone

    from django_jobstatus.models import JobRun

    rng = random.Random(f"{config['seed']}-{index}")
    item_seconds = config["interval"] / config["items_per_interval"]
    warnings = _Warnings()
    logging.getLogger("django_jobstatus").addHandler(warnings)
    with (out / f"worker-{index}.jsonl").open("w", buffering=1) as report:
        for n in range(config["jobs"]):
            if rng.random() < config["abandon_rate"]:
                old = timezone.now() - timedelta(hours=1)
                run = JobRun.objects.start(
                    ABANDONED, started_at=old, heartbeat_at=old, worker="ghost:0"
                )
                entry = {"run": str(run.pk), "name": ABANDONED, "outcome": "lost"}
                report.write(json.dumps(entry | {"logs": 0, "starts": []}) + "\n")
            items = rng.randint(config["min_items"], config["max_items"])
            plan = {
                "items": items,
                "fail_at": rng.randrange(items)
                if rng.random() < config["fail_rate"]
                else None,
                "item_seconds": item_seconds,
                "atomic": rng.random() < config["atomic_rate"],
            }
            name = KEPT if rng.random() < 0.5 else CHURN
            report.write(json.dumps(_one_job(name, plan, rng, index, n)) + "\n")
    (out / f"worker-{index}.json").write_text(
        json.dumps({"warnings": warnings.messages})
    )


def _loop(out: Path, pause: tuple[float, float], step: Any) -> dict[str, Any]:
    """Call ``step()`` until the stop file appears; count the calls and the errors they raised."""
    rng = random.Random()
    loops = 0
    errors: list[str] = []
    while not _stopped(out):
        try:
            step()
        except Exception:
            errors.append(traceback.format_exc())
        loops += 1
        time.sleep(rng.uniform(*pause))
    return {"loops": loops, "errors": errors}


def _api_client(config: dict[str, Any]) -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=config["user"]))
    return client


def killer(config: dict[str, Any], out: Path, index: int) -> None:
    from django_jobstatus.models import JobRun

    client = _api_client(config)
    rng = random.Random(f"{config['seed']}-killer")
    answers: Counter[int] = Counter()
    requests: list[dict[str, Any]] = []

    def step() -> None:
        running = list(
            JobRun.objects.running()
            .filter(job_name__in=[KEPT, CHURN])
            .values_list("pk", flat=True)
        )
        if not running:
            return
        pk = rng.choice(running)
        response = client.post(f"/api/jobstatus/runs/{pk}/kill/")
        answers[response.status_code] += 1
        requests.append({"run": str(pk), "answer": response.status_code})
        if response.status_code not in (202, 404, 409):
            raise AssertionError(
                f"kill {pk}: {response.status_code} {response.content[:500]!r}"
            )

    result = _loop(out, tuple(config["kill_pause"]), step)
    result |= {"answers": dict(answers), "requests": requests}
    (out / f"killer-{index}.json").write_text(json.dumps(result))


def purger(config: dict[str, Any], out: Path, index: int) -> None:
    from django.core.management import call_command

    def step() -> None:
        call_command(
            "purge_jobstatus",
            "--days=0",
            "--keep-last=3",
            f"--job-name={CHURN}",
            "--batch-size=25",
            "--verbosity=0",
        )

    (out / f"purger-{index}.json").write_text(json.dumps(_loop(out, (0.1, 0.3), step)))


def reaper(config: dict[str, Any], out: Path, index: int) -> None:
    from django.core.management import call_command

    def step() -> None:
        call_command(
            "reap_jobstatus", f"--timeout={config['reap_timeout']}", "--verbosity=0"
        )

    (out / f"reaper-{index}.json").write_text(json.dumps(_loop(out, (0.2, 0.5), step)))


def reader(config: dict[str, Any], out: Path, index: int) -> None:
    client = _api_client(config)
    rng = random.Random()
    terminal = {"succeeded", "failed", "killed", "lost"}
    seen: dict[str, str] = {}  # run id -> the finished status it was seen in
    flips: list[str] = []
    answers: Counter[int] = Counter()

    def get(url: str, *ok: int) -> Any:
        response = client.get(url)
        answers[response.status_code] += 1
        if response.status_code not in (200, *ok):
            raise AssertionError(
                f"GET {url}: {response.status_code} {response.content[:500]!r}"
            )
        return response.json() if response.status_code == 200 else None

    def saw(run: dict[str, Any]) -> None:
        pk, status = run["id"], run["status"]
        if pk in seen and status != seen[pk]:
            flips.append(f"{pk}: seen {seen[pk]}, then {status}")
        if status in terminal:
            seen.setdefault(pk, status)

    def step() -> None:
        picked: list[str] = []
        for query in ("status=running", "status=finished", "job_name=soak.kept", ""):
            page = get(f"/api/jobstatus/runs/?page_size=50&{query}")
            for run in page["results"]:
                saw(run)
            picked += [run["id"] for run in page["results"][:3]]
        for pk in rng.sample(picked, min(len(picked), 4)):
            run = get(f"/api/jobstatus/runs/{pk}/", 404)
            if run is not None:
                saw(run)
            get(f"/api/jobstatus/runs/{pk}/logs/", 404)
        get("/api/jobstatus/runs/stats/")

    result = _loop(out, (0.05, 0.2), step)
    result |= {"answers": dict(answers), "flips": flips, "finished_seen": len(seen)}
    (out / f"reader-{index}.json").write_text(json.dumps(result))


# The fault tests.


def beater(config: dict[str, Any], out: Path, index: int) -> None:
    """A tracked job that reports progress and logs until it is killed (by a request or SIGKILL)."""
    from django_jobstatus import track

    with track("faults.crash", params={"index": index}, source="command") as job:
        _say(f"run {job.run.pk}")
        item = 0
        while True:
            item += 1
            job.progress(item)
            job.step(f"item {item}")
            if item % 10 == 0:
                job.info("item %d", item)
            job.check_kill()
            time.sleep(0.02)


def outage(config: dict[str, Any], out: Path, index: int) -> None:
    """A tracked job that works until ``OUT_DIR/end-KIND`` exists, through a database restart.

    ``INDEX`` is ``through`` (works across the outage, ends once the database is back),
    ``ok`` or ``fail`` (ends while the database is down: succeeded, or with an error), or
    ``atomic`` (as ``ok``, inside the job's own transaction: tracking writes through its
    second connection).
    Prints ``run ID``, then ``write failed`` at the first write the outage broke,
    ``ending`` as the job leaves its block, ``finish refused`` when the database refused
    the first attempt to record the end, and ``done``; the report has the items done, the log lines
    written, the connection attempts that failed while the run's end was being
    recorded, and any error that reached the job.
    """
    from django.db import transaction
    from django.db.backends.postgresql.base import DatabaseWrapper

    from django_jobstatus import track

    kind = str(index)
    refused = Counter[str]()
    phase = ["working"]
    connect = DatabaseWrapper.get_new_connection

    def counting_connect(self: Any, params: Any) -> Any:
        try:
            return connect(self, params)
        except Exception:
            refused[phase[0]] += 1
            if phase[0] == "finishing" and refused[phase[0]] == 1:
                _say("finish refused")
            raise

    DatabaseWrapper.get_new_connection = counting_connect  # type: ignore[method-assign]
    said: set[str] = set()

    def on_warning(record: logging.LogRecord) -> None:
        if "write failed" not in said:
            said.add("write failed")
            _say("write failed")

    warnings = _Warnings(on_warning)
    logging.getLogger("django_jobstatus").addHandler(warnings)
    report: dict[str, Any] = {"items": 0, "logs": 0, "errors": []}
    end = out / f"end-{kind}"
    try:
        own = transaction.atomic() if kind == "atomic" else contextlib.nullcontext()
        with own, track(f"faults.outage.{kind}", source="command") as job:
            report["run"] = str(job.run.pk)
            _say(f"run {job.run.pk}")
            while not end.exists():
                report["items"] += 1
                job.progress(report["items"])
                job.info("item %d", report["items"])
                report["logs"] += 1
                job.check_kill()
                time.sleep(0.02)
            job.result = {"items": report["items"]}
            _say("ending")
            phase[0] = "finishing"
            if kind == "fail":
                raise PlannedError("planned failure while the database is down")
    except PlannedError:
        pass
    except Exception:
        report["errors"].append(traceback.format_exc())
    report |= {
        "refused": dict(refused),
        "warnings": warnings.messages,
        "recorded": job.run.status,
    }
    (out / f"outage-{kind}.json").write_text(json.dumps(report))
    _say("done")


ROLES = {
    "worker": worker,
    "killer": killer,
    "purger": purger,
    "reaper": reaper,
    "reader": reader,
    "beater": beater,
    "outage": outage,
}


def main(role: str, out_dir: str, index: str = "0") -> None:
    django.setup()
    out = Path(out_dir)
    config = json.loads((out / "config.json").read_text())
    _record_signals(out / f"signals-{role}-{index}.jsonl")
    number: Any = int(index) if index.isdigit() else index
    ROLES[role](config, out, number)


if __name__ == "__main__":
    main(*sys.argv[1:])
