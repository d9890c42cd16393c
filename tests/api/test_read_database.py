"""With READ_DATABASE (a replica), what an action answers after its write is read back from
the database it wrote to, as the dashboard's roll-ups are (tests/test_routers.py).

The first tests check the order of the statements (any engine); the PostgreSQL ones make the
replica lag with a REPEATABLE READ snapshot taken before the request, as a streaming replica
would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from django.db import connections, transaction

from django_jobstatus.models import JobRun, Status
from tests.api.conftest import BASE

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
