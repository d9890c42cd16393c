"""runs/<id>/logs/, kill, bulk kill, delete, latest and stats."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from django_jobstatus import contrib, track
from django_jobstatus.batches import batch, refresh_batch, start_batch
from django_jobstatus.models import JobLog, JobRun, Status
from tests.api.conftest import BASE

pytestmark = pytest.mark.django_db


def results(response):
    assert response.status_code == 200, response.content
    return response.json()["results"]


# Logs.


@pytest.fixture
def logged(run):
    now = timezone.now()
    for minutes, level, text in [
        (50, 10, "debug line"),
        (40, 20, "info line"),
        (30, 30, "warning line"),
        (20, 40, "error line"),
        (10, 50, "critical line"),
    ]:
        JobLog.objects.create(
            run=run,
            level=level,
            message=text,
            created_at=now - timedelta(minutes=minutes),
            extra={"password": "x"} if level == 40 else {},
        )
    JobLog.objects.create(
        run=JobRun.objects.start("other"), level=40, message="other run"
    )
    return run


def messages(response):
    return [line["message"] for line in results(response)]


def test_logs_are_oldest_first_and_only_the_runs_own(api, logged):
    lines = results(api.get(f"{BASE}{logged.pk}/logs/"))
    assert [line["message"] for line in lines] == [
        "debug line",
        "info line",
        "warning line",
        "error line",
        "critical line",
    ]
    assert lines[3]["level_name"] == "ERROR"
    assert lines[3]["extra"] == {"password": "********"}


def test_logs_level_filters(api, logged):
    url = f"{BASE}{logged.pk}/logs/"
    assert messages(api.get(url, {"level": "ERROR"})) == ["error line", "critical line"]
    assert messages(api.get(url, {"level": "warning"})) == [
        "warning line",
        "error line",
        "critical line",
    ]
    assert messages(api.get(url, {"level": "45"})) == ["critical line"]
    assert messages(api.get(url, {"level_exact": "ERROR"})) == ["error line"]
    assert messages(api.get(url, {"level_exact": "20"})) == ["info line"]


def test_logs_message_date_and_period_filters(api, logged):
    url = f"{BASE}{logged.pk}/logs/"
    now = timezone.now()
    assert messages(api.get(url, {"message": "WARN"})) == ["warning line"]
    assert messages(
        api.get(url, {"after": (now - timedelta(minutes=25)).isoformat()})
    ) == ["error line", "critical line"]
    assert messages(
        api.get(
            url, {"before": str(int((now - timedelta(minutes=45)).timestamp() * 1000))}
        )
    ) == ["debug line"]
    assert messages(api.get(url, {"period": "15m"})) == ["critical line"]


def test_logs_are_paginated(api, logged):
    body = api.get(f"{BASE}{logged.pk}/logs/?page_size=2").json()
    assert [line["message"] for line in body["results"]] == ["debug line", "info line"]
    assert messages(api.get(body["next"])) == ["warning line", "error line"]


def test_logs_bad_input(api, logged):
    url = f"{BASE}{logged.pk}/logs/"
    for params, field in [
        ({"level": "LOUD"}, "level"),
        ({"level_exact": "-1"}, "level_exact"),
        ({"after": "soon"}, "after"),
        ({"period": "1y"}, "period"),
        ({"ordering": "level"}, "ordering"),  # logs have no ordering parameter
    ]:
        response = api.get(url, params)
        assert response.status_code == 400, params
        assert field in response.json()


def test_logs_of_an_unknown_run_are_404(api):
    assert (
        api.get(f"{BASE}0190b6f4-0000-7000-8000-000000000000/logs/").status_code == 404
    )


# Kill.


class Recorder:
    def __init__(self):
        self.killed = []

    def kill(self, run, *, force=False):
        self.killed.append(run.pk)

    def retry(self, run):
        raise NotImplementedError


@pytest.fixture
def recorder():
    backend = Recorder()
    contrib.register("tests.api", backend)
    yield backend
    contrib.unregister("tests.api")


def test_kill_an_active_run_is_202_with_the_run_and_tells_the_integration(
    api, make_run, recorder
):
    run = make_run(source="tests.api")
    response = api.post(f"{BASE}{run.pk}/kill/")
    assert response.status_code == 202
    assert response.json()["kill_requested"] is True
    assert response.json()["status"] == Status.RUNNING
    run.refresh_from_db()
    assert run.kill_requested_at is not None
    assert recorder.killed == [run.pk]


def test_kill_a_finished_run_is_409_with_the_reason(api, make_run):
    run = make_run(status=Status.SUCCEEDED)
    response = api.post(f"{BASE}{run.pk}/kill/")
    assert response.status_code == 409
    assert response.json()["status"] == "succeeded"
    assert "finished" in response.json()["detail"]
    run.refresh_from_db()
    assert run.kill_requested_at is None


def test_bulk_kill_by_ids(api, make_run):
    a, b = make_run(), make_run(status=Status.QUEUED)
    done = make_run(status=Status.FAILED)
    untouched = make_run()
    response = api.post(
        f"{BASE}kill/", {"ids": [str(a.pk), str(b.pk), str(done.pk)]}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {
        "matched": 3,
        "active": 2,
        "asked": 2,
        "killed": 0,
        "in_batches": 0,
        "not_stopped": [],
    }
    assert set(JobRun.objects.kill_requested().values_list("pk", flat=True)) == {
        a.pk,
        b.pk,
    }
    untouched.refresh_from_db()
    assert untouched.kill_requested_at is None
    # Asking again asks nobody new.
    assert api.post(f"{BASE}kill/", {"ids": [str(a.pk)]}, format="json").json() == {
        "matched": 1,
        "active": 1,
        "asked": 0,
        "killed": 0,
        "in_batches": 0,
        "not_stopped": [],
    }


def test_bulk_kill_by_list_filters(api, make_run):
    make_run("imports")
    make_run("imports", status=Status.QUEUED)
    make_run("exports")
    response = api.post(f"{BASE}kill/?job_name=imports")
    assert response.json() == {
        "matched": 2,
        "active": 2,
        "asked": 2,
        "killed": 0,
        "in_batches": 0,
        "not_stopped": [],
    }
    assert set(JobRun.objects.kill_requested().values_list("job_name", flat=True)) == {
        "imports"
    }


def test_bulk_kill_needs_ids_or_a_filter(api, run):
    for body in [{}, {"ids": []}]:
        response = api.post(f"{BASE}kill/", body, format="json")
        assert response.status_code == 400
        assert "ids" in response.json()
    run.refresh_from_db()
    assert run.kill_requested_at is None


def test_bulk_kill_bad_body(api):
    for body in [{"ids": ["nope"]}, {"ids": "x"}, {"ids": [None]}]:
        response = api.post(f"{BASE}kill/", body, format="json")
        assert response.status_code == 400
        assert "ids" in response.json()
    response = api.post(f"{BASE}kill/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


# Delete.


def test_delete_a_finished_run_deletes_its_logs(api, make_run):
    run = make_run(status=Status.SUCCEEDED)
    run.log(logging.INFO, "hello")
    assert api.delete(f"{BASE}{run.pk}/").status_code == 204
    assert not JobRun.objects.filter(pk=run.pk).exists()
    assert not JobLog.objects.filter(run_id=run.pk).exists()


def test_delete_an_active_run_is_409(api, run):
    response = api.delete(f"{BASE}{run.pk}/")
    assert response.status_code == 409
    assert response.json()["status"] == "running"
    assert JobRun.objects.filter(pk=run.pk).exists()


def _batch_with_a_killed_child():
    """A batch of three whose first child was killed: the batch still gathers the others."""
    parent = start_batch("imports.all", ["a", "b", "c"])
    a, b, c = parent.children.order_by("job_name")
    a.mark_running(worker="w1")
    a.mark_killed()
    refresh_batch(parent)  # as the signal does, on commit
    parent.refresh_from_db()
    assert parent.status == Status.RUNNING
    return parent, a, [b, c]


def test_delete_a_finished_child_of_a_batch_still_running_is_409(api):
    """The batch adds its children up until it ends: deleted, the killed child left it
    ending succeeded, 2 of 2 (the purge and the bulk delete already kept it)."""
    parent, killed, rest = _batch_with_a_killed_child()
    response = api.delete(f"{BASE}{killed.pk}/")
    assert response.status_code == 409
    assert response.json()["status"] == "killed"
    assert "batch" in response.json()["detail"]
    for child in rest:
        with track(child.job_name, run=child):
            pass
    refresh_batch(parent)
    parent.refresh_from_db()
    assert (parent.status, parent.progress_total) == (Status.KILLED, 3)
    # Once the batch has ended, its children go as any finished run.
    assert api.delete(f"{BASE}{killed.pk}/").status_code == 204


def test_bulk_delete_counts_a_finished_child_of_a_batch_still_running_as_held(
    api, make_run
):
    """The bulk delete keeps it, as the single delete refuses it: the answer says it is
    left (held), beside the run it deleted."""
    _parent, killed, _rest = _batch_with_a_killed_child()
    other = make_run("c", status=Status.SUCCEEDED)
    response = api.post(
        f"{BASE}delete/", {"ids": [str(killed.pk), str(other.pk)]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json() == {
        "matched": 2,
        "deleted": 1,
        "logs": 0,
        "not_finished": 0,
        "held": 1,
    }
    assert JobRun.objects.filter(pk=killed.pk).exists()


def test_kill_a_batch_s_parent_asks_its_children(api):
    """No worker runs a batch's parent: asked alone, nobody read its request, its children
    ran on and the batch ended succeeded."""
    parent = start_batch("imports.all", ["a", "b"])
    a, b = parent.children.order_by("job_name")
    a.mark_running(worker="w1")
    response = api.post(f"{BASE}{parent.pk}/kill/")
    assert response.status_code == 202
    assert response.json()["in_batches"] == 2
    assert set(JobRun.objects.kill_requested().values_list("job_name", flat=True)) == {
        "imports.all",
        "a",
        "b",
    }


@pytest.mark.parametrize("force", [False, True])
def test_bulk_kill_counts_the_runs_under_the_batches_it_took_along(api, force):
    """The answer counted the runs picked only: the children a batch's parent took along
    were in no figure, and a client saw "asked": 1 for a kill that asked three runs."""
    parent = start_batch("imports.all", ["a", "b"])
    a, _b = parent.children.order_by("job_name")
    a.mark_running(worker="w1")
    body = {"ids": [str(parent.pk)], "force": force}
    answer = api.post(f"{BASE}kill/", body, format="json").json()
    assert (answer["asked"], answer["killed"], answer["in_batches"]) == (
        (1, 1, 2) if force else (1, 0, 2)
    )
    assert JobRun.objects.kill_requested().count() == 3


@pytest.fixture
def alice_and_bob_s_batch(settings, make_user):
    """API_OWNER_SCOPED: Alice's batch with a child Bob owns (a child of start_batch()
    may name its own owner); Alice, who may act on her runs only, and Bob's run."""
    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}
    alice, bob = make_user(staff=False), make_user(staff=False)
    parent = start_batch(
        "imports.all",
        [{"job_name": "imports.alice"}, {"job_name": "imports.bob", "owner": bob}],
        owner=alice,
    )
    return alice, parent, JobRun.objects.get(job_name="imports.bob", owner=bob)


@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_owner_scoped_kill_of_a_batch_leaves_another_owner_s_run_under_it(
    alice_and_bob_s_batch, client_for
):
    """Alice's kill of her batch's parent asked Bob's run to stop and counted it in
    ``in_batches``: a run she may neither see nor kill."""
    alice, parent, bobs = alice_and_bob_s_batch
    client = client_for(alice)
    assert client.get(f"{BASE}{bobs.pk}/").status_code == 404
    response = client.post(f"{BASE}{parent.pk}/kill/", {}, format="json")
    assert response.status_code == 202, response.content
    bobs.refresh_from_db()
    assert bobs.kill_requested_at is None
    assert response.json()["in_batches"] == 1


@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_owner_scoped_bulk_forced_kill_of_a_batch_leaves_another_owner_s_run_under_it(
    alice_and_bob_s_batch, client_for
):
    """The same through the bulk kill with force: Bob's run ended killed by Alice."""
    alice, _parent, bobs = alice_and_bob_s_batch
    response = client_for(alice).post(
        f"{BASE}kill/?job_name=imports.all", {"force": True}, format="json"
    )
    assert response.status_code == 200, response.content
    bobs.refresh_from_db()
    assert bobs.status != Status.KILLED
    assert response.json()["in_batches"] == 1


@pytest.mark.parametrize("bulk", [False, True])
@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_owner_scoped_forced_kill_of_a_batch_ends_it_only_as_the_run_left_ends(
    alice_and_bob_s_batch, client_for, bulk
):
    """The forced kill left Bob's running run alone, but ended the batch killed: the
    batch said its work had stopped while Bob's run went on, and that run's end could no
    longer move it. The batch is asked, and ends as its runs do."""
    alice, parent, bobs = alice_and_bob_s_batch
    bobs.mark_running(worker="celery@w:4242")
    client = client_for(alice)
    response = (
        client.post(f"{BASE}kill/?job_name=imports.all", {"force": True}, format="json")
        if bulk
        else client.post(f"{BASE}{parent.pk}/kill/", {"force": True}, format="json")
    )
    assert response.status_code in (200, 202), response.content
    assert response.json()["in_batches"] == 1  # Alice's run, ended killed
    parent.refresh_from_db()
    bobs.refresh_from_db()
    assert bobs.status == Status.RUNNING
    assert parent.status != Status.KILLED, "the batch ended while a run under it ran"
    assert parent.kill_requested_at is not None
    bobs.mark_succeeded()
    parent.refresh_from_db()
    assert parent.status == Status.KILLED  # Alice's run was killed: the batch stopped


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_owner_scoped_kill_of_a_batch_block_takes_the_runs_an_integration_recorded_in_it(
    settings, make_user, client_for, force
):
    """Alice's ``batch()`` block enqueued tasks that an integration recorded: they had no
    owner, so her kill of her batch left them running (and hidden from her), and a forced
    kill only asked the batch, which then ran on to its end. They are hers, as
    ``start_batch()``'s children are."""
    from django_jobstatus.contrib._execution import record_queued

    settings.JOBSTATUS = {"API_OWNER_SCOPED": True}
    alice = make_user(staff=False)
    with batch("imports.all", owner=alice) as parent:
        record_queued("celery", "task-1", "imports.one")
        with batch("imports.inner"):  # a batch inside hers, and its task
            record_queued("rq", "job-1", "imports.two")
    children = JobRun.objects.exclude(pk=parent.pk)
    assert set(children.values_list("owner", flat=True)) == {alice.pk}
    children.filter(source="celery").get().mark_running(worker="celery@w:1")
    client = client_for(alice)
    assert len(results(client.get(BASE))) == 4  # her batch and each run under it
    response = client.post(f"{BASE}{parent.pk}/kill/", {"force": force}, format="json")
    assert response.status_code in (200, 202), response.content
    assert response.json()["in_batches"] == 3
    parent.refresh_from_db()
    if force:
        assert parent.status == Status.KILLED
        assert set(children.values_list("status", flat=True)) == {Status.KILLED}
    else:
        assert not children.filter(kill_requested_at__isnull=True).exists()


# Latest.


def test_latest_is_the_newest_run_of_the_job(api, make_run):
    now = timezone.now()
    make_run("nightly", created_at=now - timedelta(days=1))
    newest = make_run("nightly", created_at=now)
    make_run("other", created_at=now + timedelta(seconds=1))
    response = api.get(f"{BASE}latest/", {"job_name": "nightly"})
    assert response.status_code == 200
    assert response.json()["id"] == str(newest.pk)


def test_latest_404_without_runs_and_400_without_job_name(api):
    assert api.get(f"{BASE}latest/", {"job_name": "never"}).status_code == 404
    response = api.get(f"{BASE}latest/")
    assert response.status_code == 400
    assert "job_name" in response.json()


# Stats.


@pytest.fixture
def history(make_run):
    now = timezone.now()
    for minutes, status, seconds in [
        (10, Status.SUCCEEDED, 10),
        (20, Status.SUCCEEDED, 30),
        (70, Status.FAILED, 20),
        (100, Status.RUNNING, None),
    ]:
        started = now - timedelta(minutes=minutes)
        make_run(
            "imports",
            status=status,
            created_at=started,
            started_at=started,
            finished_at=started + timedelta(seconds=seconds) if seconds else None,
        )
    old = now - timedelta(days=3)
    make_run(
        "imports",
        status=Status.FAILED,
        created_at=old,
        started_at=old,
        finished_at=old + timedelta(seconds=5),
    )
    make_run("exports", status=Status.SUCCEEDED, created_at=now - timedelta(minutes=5))
    return now


def test_stats_default_to_the_last_24_hours(api, history):
    body = api.get(f"{BASE}stats/").json()
    jobs = {job["job_name"]: job for job in body["jobs"]}
    assert set(jobs) == {"imports", "exports"}
    imports = jobs["imports"]
    assert imports["total"] == 4
    assert imports["counts"]["succeeded"] == 2
    assert imports["counts"]["failed"] == 1
    assert imports["counts"]["running"] == 1
    assert imports["failure_rate"] == pytest.approx(1 / 3)
    assert imports["p50_duration"] == pytest.approx(20.0)
    assert imports["p95_duration"] == pytest.approx(29.0)
    assert body["until"] is None
    assert datetime.fromisoformat(body["since"]) == pytest.approx(
        history - timedelta(hours=24), abs=timedelta(minutes=1)
    )
    assert "buckets" not in body


def test_stats_over_a_period_or_a_range(api, history):
    assert {
        job["job_name"]: job["total"]
        for job in api.get(f"{BASE}stats/?period=1h").json()["jobs"]
    } == {"imports": 2, "exports": 1}
    body = api.get(
        f"{BASE}stats/",
        {
            "created_after": (history - timedelta(days=4)).isoformat(),
            "created_before": (history - timedelta(days=2)).isoformat(),
        },
    ).json()
    assert body["jobs"][0]["job_name"] == "imports"
    assert body["jobs"][0]["counts"]["failed"] == 1
    assert {
        job["job_name"]
        for job in api.get(f"{BASE}stats/?period=7d&job_name=exports").json()["jobs"]
    } == {"exports"}


def test_stats_buckets_count_finished_runs_per_hour_and_day(api, make_run):
    base = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    for minutes, status in [
        (5, Status.SUCCEEDED),
        (15, Status.FAILED),
        (70, Status.SUCCEEDED),
        (80, Status.KILLED),
    ]:
        moment = base + timedelta(minutes=minutes)
        make_run(
            "x", status=status, created_at=moment, started_at=moment, finished_at=moment
        )
    make_run("x", status=Status.RUNNING, created_at=base)
    range_ = {"created_after": "2026-01-05", "created_before": "2026-01-06"}
    hours = api.get(f"{BASE}stats/", {**range_, "bucket": "hour"}).json()["buckets"]
    assert [
        (b["start"], b["finished"], b["succeeded"], b["failed"], b["killed"])
        for b in hours
    ] == [
        ("2026-01-05T10:00:00Z", 2, 1, 1, 0),
        ("2026-01-05T11:00:00Z", 2, 1, 0, 1),
    ]
    days = api.get(f"{BASE}stats/", {**range_, "bucket": "day"}).json()["buckets"]
    assert [(b["start"], b["finished"]) for b in days] == [("2026-01-05T00:00:00Z", 4)]


def test_stats_bad_input(api):
    for params, field in [
        ({"bucket": "week"}, "bucket"),
        ({"period": "soon"}, "period"),
        ({"created_after": "x"}, "created_after"),
        ({"status": "done"}, "status"),
    ]:
        response = api.get(f"{BASE}stats/", params)
        assert response.status_code == 400, params
        assert field in response.json()
