"""The workers view, and the changelist's worker and queue filters."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings
from django.utils import timezone

from django_jobstatus.models import JobRun, Status

URL = "/admin/django_jobstatus/jobrun/workers/"
CHANGELIST = "/admin/django_jobstatus/jobrun/"


@override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": 60})
def test_each_worker_with_its_runs_and_silence(admin_client, make_run):
    now = timezone.now()
    make_run("a", worker="busy:1", heartbeat_at=now)
    make_run("b", worker="busy:1", heartbeat_at=now - timedelta(seconds=5))
    make_run("c", worker="busy:1", status=Status.SUCCEEDED)
    make_run("d", worker="busy:1", status=Status.FAILED)
    make_run("e", worker="quiet:2", heartbeat_at=now - timedelta(minutes=10))
    make_run("f", worker="idle:3", status=Status.SUCCEEDED, heartbeat_at=now)
    make_run(
        "g",
        worker="gone:4",
        status=Status.SUCCEEDED,
        heartbeat_at=now - timedelta(hours=3),
        finished_at=now - timedelta(hours=3),
    )
    response = admin_client.get(URL)
    assert response.status_code == 200
    rows = {w["worker"]: w for w in response.context["workers"]}
    assert set(rows) == {"busy:1", "quiet:2", "idle:3"}
    assert (rows["busy:1"]["running"], rows["busy:1"]["finished"]) == (2, 2)
    assert rows["busy:1"]["failed"] == 1
    assert rows["busy:1"]["silent"] is False
    assert rows["quiet:2"]["silent"] is True
    assert rows["idle:3"]["running"] == 0 and rows["idle:3"]["silent"] is False
    # Silent workers first.
    assert response.context["workers"][0]["worker"] == "quiet:2"
    assert "silent" in response.content.decode()


@override_settings(JOBSTATUS={"HEARTBEAT_TIMEOUT": 60})
def test_a_dead_worker_s_last_heartbeat_is_not_when_its_run_was_reaped_or_killed(
    admin_client, make_run
):
    """Worker ``dead:9`` beat last 20 minutes ago and died; the reaper marked its run lost
    now. The page said its last heartbeat was now, as if it were alive a moment ago: the
    reaper's ``finished_at`` was taken for a sign of life (a forced kill's too, the
    killer's clock: ``gone:8``, silent for two hours, was listed as seen this hour)."""
    now = timezone.now()
    beat = now - timedelta(minutes=20)
    make_run("nightly", worker="dead:9", heartbeat_at=beat, started_at=beat)
    old = now - timedelta(hours=2)
    make_run("hourly", worker="gone:7", heartbeat_at=old, started_at=old)
    killed = make_run("weekly", worker="gone:8", heartbeat_at=old, started_at=old)
    JobRun.objects.filter(pk=killed.pk).request_kill(force=True)
    assert JobRun.objects.reap().reaped == 2
    response = admin_client.get(URL)
    assert response.status_code == 200
    rows = {w["worker"]: w for w in response.context["workers"]}
    assert set(rows) == {"dead:9"}
    assert rows["dead:9"]["last_heartbeat"] == beat
    assert rows["dead:9"]["finished"] == 1


def test_workers_view_needs_the_view_permission(staff_client):
    assert staff_client().get(URL).status_code == 403
    assert staff_client("view_jobrun").get(URL).status_code == 200


def test_changelist_filters_by_worker_and_queue(admin_client, make_run):
    one = make_run("a", worker="w:1", queue="mail")
    make_run("b", worker="w:2", queue="mail")
    make_run("c", worker="w:1", queue="reports")
    response = admin_client.get(CHANGELIST + "?worker=w%3A1&queue=mail")
    assert response.status_code == 200
    assert [run.pk for run in response.context["cl"].result_list] == [one.pk]
    body = admin_client.get(CHANGELIST).content.decode()
    assert "?worker=w%3A2" in body and "?queue=reports" in body
