"""With READ_DATABASE (a replica), what an action answers after its write is read back from
the database it wrote to, as the dashboard's roll-ups are (tests/test_routers.py).

The first tests check the order of the statements (any engine); the PostgreSQL ones make the
replica lag with a REPEATABLE READ snapshot taken before the request, as a streaming replica
would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest
from django.db import connections, transaction

from django_jobstatus import contrib, health
from django_jobstatus.api.serializers import JobMonitorSerializer
from django_jobstatus.models import (
    JobMonitor,
    JobMonitorIncident,
    JobRun,
    MonitorState,
    Status,
)
from tests.api.conftest import BASE
from tests.api.test_monitors import URL as MONITORS
from tests.api.test_monitors import monitor_api as monitor_api  # the fixture

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

# Quoted: the roll-ups' table (django_jobstatus_jobrunhour) starts with the same name.
RUNS_TABLE = f'"{JobRun._meta.db_table}"'


@pytest.fixture
def routed(settings):
    settings.DATABASE_ROUTERS = ["django_jobstatus.routers.JobStatusRouter"]
    settings.JOBSTATUS = {"READ_DATABASE": "replica"}


@contextmanager
def statements() -> Iterator[list[tuple[str, str]]]:
    """Every statement on the runs table, in order, as (alias, sql)."""
    seen: list[tuple[str, str]] = []

    def recorder(alias):
        def wrapper(execute, sql, params, many, context):
            if RUNS_TABLE in sql:
                seen.append((alias, sql.lstrip("( \n")))
            return execute(sql, params, many, context)

        return wrapper

    with ExitStack() as stack:
        for alias in ("default", "replica"):
            stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
        yield seen


def read_on_the_replica_after_the_write(seen: list[tuple[str, str]]) -> list[str]:
    """The statements on the replica after the first write (the first that is no SELECT:
    an UPDATE, a DELETE, or PostgreSQL's WITH … DELETE), which must be on the primary."""
    first = next(i for i, (_, sql) in enumerate(seen) if not sql.startswith("SELECT"))
    assert seen[first][0] == "default", seen[first]
    return [sql[:60] + "…" for alias, sql in seen[first:] if alias == "replica"]


@contextmanager
def lagging_replica() -> Iterator[None]:
    """The replica as of now: later commits on the primary are not visible on it."""
    with transaction.atomic(using="replica"):
        with connections["replica"].cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        JobRun.objects.using("replica").count()  # the snapshot
        yield


def test_the_kill_answers_the_run_as_the_primary_has_it(routed, api, make_run):
    """The run a kill answers (and whose "finished meanwhile" 409 it judges) is read back
    from the primary, not from the replica the run was first read from."""
    run = make_run("a")
    with statements() as seen:
        response = api.post(f"{BASE}{run.pk}/kill/", {"force": True}, format="json")
    assert response.status_code == 202, response.content
    assert not read_on_the_replica_after_the_write(seen)


@pytest.mark.parametrize("action", ["kill", "retry"])
def test_the_bulk_actions_pick_and_count_their_runs_on_the_primary(
    routed, api, make_run, action
):
    """The runs a bulk kill counts (matched, active) or a bulk retry judges (still
    active?) are read where the writes go: the replica may not have them yet."""
    runs = [make_run("a", status=Status.SUCCEEDED), make_run("a")]
    with statements() as seen:
        response = api.post(
            f"{BASE}{action}/", {"ids": [str(run.pk) for run in runs]}, format="json"
        )
    assert response.status_code in (200, 202), response.content
    assert seen
    assert all(alias == "default" for alias, _ in seen), seen


def test_the_bulk_delete_counts_what_is_left_on_the_primary(routed, api, make_run):
    """The bulk delete counts what it picked, deletes, and counts what is left
    (not_finished, held) all on the primary."""
    runs = [make_run("a", status=Status.SUCCEEDED) for _ in range(2)]
    with statements() as seen:
        response = api.post(
            f"{BASE}delete/", {"ids": [str(run.pk) for run in runs]}, format="json"
        )
    assert response.status_code == 200, response.content
    assert not read_on_the_replica_after_the_write(seen)
    assert all(alias == "default" for alias, _ in seen), seen


@pytest.mark.postgres
def test_a_forced_kill_behind_a_lagging_replica_answers_the_run_killed(
    routed, api, make_run
):
    """A forced kill answers the run killed, though the replica still has it running."""
    run = make_run("a")
    with lagging_replica():
        response = api.post(f"{BASE}{run.pk}/kill/", {"force": True}, format="json")
    run.refresh_from_db(using="default")
    assert run.status == Status.KILLED
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "killed"
    assert body["kill_requested_at"] is not None


@pytest.mark.postgres
def test_a_bulk_delete_behind_a_lagging_replica_says_nothing_is_held(
    routed, api, make_run
):
    """Runs the bulk delete deleted are not also reported held, though the replica still has them."""
    runs = [make_run("a", status=Status.SUCCEEDED) for _ in range(2)]
    with lagging_replica():
        response = api.post(
            f"{BASE}delete/", {"ids": [str(run.pk) for run in runs]}, format="json"
        )
    assert JobRun.objects.using("default").count() == 0
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["matched"], body["deleted"], body["not_finished"], body["held"]) == (
        2,
        2,
        0,
        0,
    )


# A run read from the replica, then written; a run judged for a write (found by a red-team pass).


@pytest.fixture
def read_only_replica(routed) -> Iterator[None]:
    """The replica as a hot standby is: any write on it fails (a streaming replica refuses
    every INSERT/UPDATE/DELETE with "cannot execute ... in a read-only transaction")."""
    replica = connections["replica"]
    replica.ensure_connection()
    with replica.cursor() as cursor:
        if replica.vendor == "postgresql":
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        else:
            cursor.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        with replica.cursor() as cursor:
            if replica.vendor == "postgresql":
                cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            else:
                cursor.execute("PRAGMA query_only = OFF")


def writes_on(seen: list[tuple[str, str]], alias: str) -> list[str]:
    return [
        sql[:70]
        for where, sql in seen
        if where == alias and not sql.startswith("SELECT")
    ]


def test_request_kill_of_a_run_read_through_the_router_writes_to_the_primary(
    read_only_replica, make_run
):
    """A user's view does ``JobRun.objects.get(pk=pk).request_kill()`` (docs/tracking.md names
    ``JobRun.request_kill()`` as one of the ways to kill). With READ_DATABASE set the instance
    comes from the replica, and JobRun._db() sends the UPDATE to ``self._state.db`` — the
    replica: a hot standby refuses it (a 500), a writable one takes a write the primary
    never sees."""
    run = make_run("rt.kill")
    fetched = JobRun.objects.get(pk=run.pk)
    assert fetched._state.db == "replica"  # read where the router reads
    with statements() as seen:
        asked = fetched.request_kill()
    assert not writes_on(seen, "replica"), writes_on(seen, "replica")
    assert asked is True
    assert JobRun.objects.using("default").get(pk=run.pk).kill_requested_at is not None


def test_the_write_methods_of_a_run_read_through_the_router_write_to_the_primary(
    read_only_replica, make_run
):
    """``run.log()``, ``run.set_progress()``, ``run.mark_killed()`` on a run read with
    ``JobRun.objects.get()`` (e.g. a management script, a view) go to the replica: on a
    read-only standby each raises "cannot execute UPDATE/INSERT in a read-only transaction"."""
    run = make_run("rt.methods")
    fetched = JobRun.objects.get(pk=run.pk)
    failures = []
    for name, call in [
        ("log", lambda: fetched.log(logging.INFO, "hello")),
        ("set_progress", lambda: fetched.set_progress(1, 10)),
        ("mark_killed", lambda: fetched.mark_killed()),
    ]:
        with statements() as seen:
            try:
                call()
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
        if writes_on(seen, "replica"):
            failures.append(
                f"{name}: wrote on the replica {writes_on(seen, 'replica')}"
            )
    assert not failures, failures
    assert JobRun.objects.using("default").get(pk=run.pk).status == Status.KILLED


def test_request_kill_batch_of_a_parent_read_through_the_router_asks_on_the_primary(
    read_only_replica,
):
    """``request_kill_batch(JobRun.objects.get(pk=parent_id))`` (docs/tracking.md, Batches)
    builds its querysets on ``parent._state.db`` — the replica — and ``writing()`` keeps an
    explicit alias: the kill of the whole batch is written to the replica (an error on a
    standby; nothing asked on the primary)."""
    from django_jobstatus.batches import request_kill_batch, start_batch

    parent = start_batch("rt.batch", ["rt.child", "rt.child"])
    fetched = JobRun.objects.get(pk=parent.pk)
    assert fetched._state.db == "replica"
    with statements() as seen:
        asked = request_kill_batch(fetched)
    assert not writes_on(seen, "replica"), writes_on(seen, "replica")
    assert asked == 3
    assert (
        JobRun.objects.using("default").filter(kill_requested_at__isnull=False).count()
        == 3
    )


def test_a_forced_kill_of_a_run_its_worker_restarted_meanwhile_kills_it_on_the_primary(
    read_only_replica, make_run, monkeypatch
):
    """The worker restarted the run (attempt 2) between the forced kill's read and its end
    (tests/api/test_races.py::test_a_forced_kill_of_a_run_its_worker_moved_on_meanwhile_kills_it
    is the same race without a replica, and passes). ``querysets._killed`` reads the run
    again with ``run.refresh_from_db()``: the router sends that read to READ_DATABASE, and
    Django then sets ``run._state.db = "replica"``, so the second ``mark_killed()`` (through
    ``JobRun._db()``) writes to the replica. On a hot standby the admin's "Mark as killed
    (forced)", its force-kill button and POST /runs/<id>/kill/ {"force": true} fail with
    "cannot execute UPDATE in a read-only transaction" (a 500), and the run runs on; on a
    lagging replica (PostgreSQL, REPEATABLE READ snapshot) it is a serialization failure."""
    run = make_run("rt.race", status=Status.RUNNING)
    original = JobRun.mark_killed
    moved = []

    def worker_restarts_first(self, **fields):
        if not moved:
            moved.append(True)
            # Its worker restarts it on the primary meanwhile.
            JobRun.objects.using("default").get(pk=run.pk).mark_running()
        return original(self, **fields)

    monkeypatch.setattr(JobRun, "mark_killed", worker_restarts_first)
    result = JobRun.objects.filter(pk=run.pk).request_kill(force=True)
    current = JobRun.objects.using("default").get(pk=run.pk)
    assert (current.status, current.attempt) == (Status.KILLED, 2)
    assert result.killed == 1


@pytest.mark.postgres
def test_the_kill_of_a_run_just_recorded_is_no_404(routed, admin_client):
    """A client that enqueued a task and kills its run at once (its id came from the
    enqueue, written to DATABASE) gets 404 "Not found" from POST /runs/<id>/kill/: the view
    picks the run on the replica, which does not have it yet. The bulk kill picks its runs
    on the primary for exactly this reason (views.bulk_runs: "a replica may not have a run
    yet"), and the kill then writes and reads back on the primary anyway."""
    with lagging_replica():
        run = JobRun.objects.db_manager("default").enqueue("rt.fresh")
        response = admin_client.post(
            f"{BASE}{run.pk}/kill/", {"force": True}, content_type="application/json"
        )
    assert response.status_code == 202, (response.status_code, response.content)
    assert JobRun.objects.using("default").get(pk=run.pk).status == Status.KILLED


class _Backend:
    def kill(self, run, *, force=False):
        return None

    def retry(self, run):
        return JobRun.objects.db_manager("default").enqueue(
            run.job_name, source=run.source
        )


@pytest.mark.postgres
def test_the_retry_of_a_run_that_just_failed_is_not_refused_as_still_running(
    routed, admin_client, make_run
):
    """A client told a run failed (job_status_changed, sent once the primary committed)
    retries it at once: POST /runs/<id>/retry/ answers 409 "It is still running: only
    finished runs are retried." — the run has failed. The single retry judges the run as
    the replica has it; the bulk retry judges on the primary (views.bulk_runs)."""
    contrib.register("rt_db_backend", _Backend())
    try:
        run = make_run("rt.retry", status=Status.RUNNING, source="rt_db_backend")
        with lagging_replica():
            JobRun.objects.using("default").get(pk=run.pk).mark_failed(
                ValueError("boom")
            )
            response = admin_client.post(
                f"{BASE}{run.pk}/retry/", {}, content_type="application/json"
            )
    finally:
        contrib.unregister("rt_db_backend")
    assert response.status_code == 202, (response.status_code, response.content)


@pytest.mark.postgres
def test_the_delete_of_a_run_that_just_finished_is_not_refused_as_running(
    routed, admin_client, make_run
):
    """DELETE /runs/<id>/ of a run that has just succeeded answers 409 "Only finished runs
    can be deleted; this one is running." — read from the replica, while the bulk delete
    counts on the primary."""
    run = make_run("rt.delete", status=Status.RUNNING)
    with lagging_replica():
        JobRun.objects.using("default").get(pk=run.pk).mark_succeeded()
        response = admin_client.delete(f"{BASE}{run.pk}/")
    assert response.status_code == 204, (response.status_code, response.content)
    assert not JobRun.objects.using("default").filter(pk=run.pk).exists()


# A monitor picked and saved by a change; the runs that make its job known (found by a
# red-team pass).


def _failing_meanwhile(job_name, past_run):
    """The job's run that just failed: the next check turns its monitor failing."""
    past_run(job_name, ago=timedelta(minutes=1), status=Status.FAILED, error="boom")


def _stored_and_incidents(monitor):
    """The monitor's state on the primary after one more check, and its incidents."""
    stored = JobMonitor.objects.using("default").get(pk=monitor.pk).state
    health.check([monitor.job_name])
    incidents = JobMonitorIncident.objects.using("default").filter(monitor=monitor)
    return stored, list(incidents.values_list("state", "resolved_to"))


@pytest.mark.postgres
def test_a_monitor_changed_behind_a_lagging_replica_keeps_the_state_the_check_stored(
    routed, monitor_api, monitor, past_run
):
    """A check turned the monitor failing (an incident opened, an alert went out); a
    moment later a PATCH {"grace": 600} answered 200 and left it healthy with the
    incident open, and the next check resolved that incident and opened a second one for
    the same failure (a second alert). The view picked the monitor on the replica, which
    still had it healthy, and saved every column of it back to the primary."""
    m = monitor("tests.mon", every=timedelta(hours=1), max_failures=1)
    past_run("tests.mon", ago=timedelta(minutes=5))
    health.check(["tests.mon"])
    with lagging_replica():
        _failing_meanwhile("tests.mon", past_run)
        health.check(["tests.mon"])
        response = monitor_api.patch(
            f"{MONITORS}{m.pk}/", {"grace": 600}, format="json"
        )
    assert response.status_code == 200, response.content
    assert response.json()["state"] == MonitorState.FAILING
    assert _stored_and_incidents(m) == (
        MonitorState.FAILING,
        [(MonitorState.FAILING, "")],
    )


def test_a_monitor_change_keeps_the_state_a_check_stored_meanwhile(
    monitor_api, monitor, past_run, monkeypatch
):
    """The same without a replica: a check that stores the monitor failing between the
    PATCH's read and its save was overwritten (the serializer's save() wrote every
    column as read, the state too)."""
    m = monitor("tests.mon", every=timedelta(hours=1), max_failures=1)
    _failing_meanwhile("tests.mon", past_run)
    validate = JobMonitorSerializer.validate

    def a_check_meanwhile(self, attrs):
        health.check(["tests.mon"])
        return validate(self, attrs)

    monkeypatch.setattr(JobMonitorSerializer, "validate", a_check_meanwhile)
    response = monitor_api.patch(f"{MONITORS}{m.pk}/", {"grace": 600}, format="json")
    assert response.status_code == 200, response.content
    assert _stored_and_incidents(m) == (
        MonitorState.FAILING,
        [(MonitorState.FAILING, "")],
    )
    assert JobMonitor.objects.get(pk=m.pk).grace == timedelta(minutes=10)


@pytest.mark.postgres
def test_a_monitor_for_a_job_that_just_ran_is_created(routed, monitor_api):
    """A deploy script runs a job once, then creates its monitor: 400 {"job_name": ["No
    run of “tests.fresh” has been recorded; ..."]}. The model's clean() asked the replica,
    which did not have the run yet, whether the job had run."""
    with lagging_replica():
        JobRun.objects.db_manager("default").start("tests.fresh").mark_succeeded()
        response = monitor_api.post(
            MONITORS, {"job_name": "tests.fresh", "every": 3600}, format="json"
        )
    assert response.status_code == 201, response.content
    assert JobMonitor.objects.using("default").filter(job_name="tests.fresh").exists()


@pytest.mark.postgres
def test_a_monitor_just_created_can_be_changed_at_once(routed, monitor_api, past_run):
    """A client that creates a monitor and then disables it with the id the 201 gave got
    404 "No JobMonitor matches the given query.": the view picked the monitor on the
    replica, which did not have it yet."""
    past_run("tests.new")
    with lagging_replica():
        created = monitor_api.post(
            MONITORS, {"job_name": "tests.new", "every": 3600}, format="json"
        )
        assert created.status_code == 201, created.content
        url = f"{MONITORS}{created.json()['id']}/"
        changed = monitor_api.patch(url, {"enabled": False}, format="json")
        assert changed.status_code == 200, (changed.status_code, changed.content)
        assert not JobMonitor.objects.using("default").get().enabled
        deleted = monitor_api.delete(url)
    assert deleted.status_code == 204, (deleted.status_code, deleted.content)
    assert not JobMonitor.objects.using("default").exists()


@pytest.mark.postgres
def test_a_second_monitor_for_a_job_just_watched_is_a_400(
    routed, monitor_api, past_run
):
    """A client that sends its "watch this job" twice in a row: the second was a 500
    (an IntegrityError on the insert), the model's uniqueness check having asked the
    replica, which did not have the first monitor yet. It is a 400 naming job_name, as
    without a replica."""
    past_run("tests.new")
    with lagging_replica():
        body = {"job_name": "tests.new", "every": 3600}
        assert monitor_api.post(MONITORS, body, format="json").status_code == 201
        again = monitor_api.post(MONITORS, body, format="json")
    assert again.status_code == 400, (again.status_code, again.content)
    assert "job_name" in again.json()
    assert JobMonitor.objects.using("default").count() == 1
