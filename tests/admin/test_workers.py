"""The workers view, and the changelist's worker and queue filters."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings
from django.utils import timezone

from django_jobstatus.models import Status

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
