"""With READ_DATABASE (a replica), what decides an admin write is read on DATABASE: the
monitor a change form saves, the runs that make a monitor's job known, the runs a retry
judges, the run a "Delete" deletes (tests/api/test_read_database.py for the API, whose
lagging replica this reuses).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages

from django_jobstatus import health
from django_jobstatus.admin.monitors import JobMonitorAdmin
from django_jobstatus.models import JobMonitor, JobRun, MonitorState, Status
from tests.admin.test_monitors import MONITORS, _form
from tests.api.test_read_database import (
    _failing_meanwhile,
    _stored_and_incidents,
    lagging_replica,
)
from tests.api.test_read_database import routed as routed  # the fixture

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

RUNS = "/admin/django_jobstatus/jobrun/"


@pytest.mark.postgres
def test_a_monitor_saved_behind_a_lagging_replica_keeps_the_state_the_check_stored(
    routed, admin_client, monitor, past_run
):
    """A check turned the monitor failing; a moment later an operator saved its change
    form to raise the grace: the monitor showed healthy with its incident open, and the
    next check opened a second incident for the same failure. The admin read the monitor
    from the replica (healthy) and saved every column of it, the state too."""
    m = monitor("tests.nightly", every=timedelta(hours=1), max_failures=1)
    past_run("tests.nightly", ago=timedelta(minutes=5))
    health.check(["tests.nightly"])
    with lagging_replica():
        _failing_meanwhile("tests.nightly", past_run)
        health.check(["tests.nightly"])
        response = admin_client.post(
            f"{MONITORS}{m.pk}/change/", _form(every="01:00:00", grace="00:10:00")
        )
    assert response.status_code == 302, response.content[:2000]
    assert JobMonitor.objects.using("default").get(pk=m.pk).grace == timedelta(
        minutes=10
    )
    assert _stored_and_incidents(m) == (
        MonitorState.FAILING,
        [(MonitorState.FAILING, "")],
    )


def test_a_monitor_saved_keeps_the_state_a_check_stored_meanwhile(
    admin_client, monitor, past_run, monkeypatch
):
    """The same without a replica: a check that stores the monitor failing between the
    form's read and its save was overwritten (save() wrote every column as read)."""
    m = monitor("tests.nightly", every=timedelta(hours=1), max_failures=1)
    _failing_meanwhile("tests.nightly", past_run)
    save_form = JobMonitorAdmin.save_form

    def a_check_meanwhile(self, request, form, change):
        health.check(["tests.nightly"])
        return save_form(self, request, form, change)

    monkeypatch.setattr(JobMonitorAdmin, "save_form", a_check_meanwhile)
    response = admin_client.post(
        f"{MONITORS}{m.pk}/change/", _form(every="01:00:00", grace="00:10:00")
    )
    assert response.status_code == 302, response.content[:2000]
    assert _stored_and_incidents(m) == (
        MonitorState.FAILING,
        [(MonitorState.FAILING, "")],
    )
    assert JobMonitor.objects.get(pk=m.pk).grace == timedelta(minutes=10)


@pytest.mark.postgres
def test_a_monitor_just_added_can_be_changed_at_once(
    routed, admin_client, monitor, past_run
):
    """A monitor added (its "Save and continue editing") and saved again at once: "job
    monitor with ID “1” doesn’t exist. Perhaps it was deleted?", and the change was lost.
    The admin looked the monitor up on the replica, which did not have it yet."""
    past_run("tests.nightly")
    with lagging_replica():
        m = monitor("tests.nightly", every=timedelta(hours=1))
        response = admin_client.post(
            f"{MONITORS}{m.pk}/change/", _form(every="01:00:00", enabled="")
        )
    said = [str(message) for message in get_messages(response.wsgi_request)]
    assert response.status_code == 302, response.content[:2000]
    assert not JobMonitor.objects.using("default").get(pk=m.pk).enabled, said


@pytest.mark.postgres
def test_a_monitor_for_a_job_that_just_ran_is_added(routed, admin_client):
    """A job run once, then its monitor added in the admin: the form said "No run of
    “tests.nightly” has been recorded": the model's clean() asked the replica."""
    with lagging_replica():
        JobRun.objects.db_manager("default").start("tests.nightly").mark_succeeded()
        response = admin_client.post(f"{MONITORS}add/", _form(every="01:00:00"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert JobMonitor.objects.using("default").filter(job_name="tests.nightly").exists()


@pytest.mark.postgres
def test_the_retry_action_of_a_run_that_just_failed_retries_it(
    routed, admin_client, make_run, retry_backend
):
    """An operator told a run failed picks "Retry (enqueue again)" for it: "Skipped 1 run:
    it is still active, and only finished runs are retried.", and nothing was enqueued.
    The action judged the run as the replica had it (running)."""
    run = make_run("tests.job", status=Status.RUNNING, source="tests_backend")
    with lagging_replica():
        JobRun.objects.using("default").get(pk=run.pk).mark_failed(ValueError("boom"))
        response = admin_client.post(
            RUNS, {"action": "retry", "_selected_action": [str(run.pk)], "index": 0}
        )
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert response.status_code == 302, (response.status_code, said)
    assert retry_backend == [run.pk], said
    assert said == ["Enqueued 1 run again."]


@pytest.mark.postgres
def test_the_retry_of_a_failure_group_retries_a_run_that_just_failed(
    routed, admin_client, make_run, retry_backend
):
    """The failures page's "Retry" of a group (the same action over the group's runs)
    left out a run that had just failed: on the replica it was still running, not in the
    group."""
    run = make_run("tests.job", status=Status.RUNNING, source="tests_backend")
    with lagging_replica():
        JobRun.objects.using("default").get(pk=run.pk).mark_failed(ValueError("boom"))
        response = admin_client.post(
            f"{RUNS}failures/retry/",
            {"job_name": "tests.job", "fingerprint": "ValueError: boom"},
        )
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert response.status_code == 302, (response.status_code, said)
    assert retry_backend == [run.pk], said


@pytest.mark.postgres
def test_the_delete_action_of_a_run_that_just_finished_is_not_refused(
    routed, admin_client, make_run
):
    """An operator picks "Delete selected finished runs" for a run that has just
    succeeded: "Refused to delete 1 active run: stop it first.", and no confirmation page.
    The action judged the run as the replica had it (running); its confirmation page and
    deletion now read DATABASE, as the API's bulk delete does."""
    run = make_run("tests.job", status=Status.RUNNING)
    with lagging_replica():
        JobRun.objects.using("default").get(pk=run.pk).mark_succeeded()
        form = {"action": "delete_selected", "_selected_action": [str(run.pk)]}
        response = admin_client.post(RUNS, {**form, "index": 0})
        said = [str(m) for m in get_messages(response.wsgi_request)]
        assert response.status_code == 200, (response.status_code, said)  # the page
        assert not [text for text in said if "Refused" in text], said
        response = admin_client.post(RUNS, {**form, "index": 0, "post": "yes"})
    assert response.status_code == 302
    assert not JobRun.objects.using("default").filter(pk=run.pk).exists()


@pytest.mark.postgres
def test_the_delete_button_of_a_run_that_just_finished_deletes_it(
    routed, admin_client, make_run
):
    """An operator told a run succeeded clicks its page's "Delete": the confirmation page
    and the confirmed POST were 403, and the run stayed. Django's delete_view read the run
    from the replica (still running there), and has_delete_permission() refuses an active
    run; the run a deletion acts on is now read on DATABASE, as the buttons read theirs."""
    run = make_run("tests.job", status=Status.RUNNING)
    with lagging_replica():
        JobRun.objects.using("default").get(pk=run.pk).mark_succeeded()
        page = admin_client.get(f"{RUNS}{run.pk}/delete/")
        assert page.status_code == 200
        response = admin_client.post(f"{RUNS}{run.pk}/delete/", {"post": "yes"})
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert response.status_code == 302, (response.status_code, said)
    assert not JobRun.objects.using("default").filter(pk=run.pk).exists()
