"""Bulk actions: what each does, what it says, and who may run it."""

from __future__ import annotations

import re
from typing import Any
from unittest import mock

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.messages import get_messages
from django.db import connection
from django.test import override_settings

from django_jobstatus import contrib, retention, track
from django_jobstatus.batches import start_batch
from django_jobstatus.models import JobLog, JobRun, Status

URL = "/admin/django_jobstatus/jobrun/"


def act(client, action: str, *runs: JobRun, **extra: str):
    return client.post(
        URL,
        {"action": action, "_selected_action": [str(r.pk) for r in runs], **extra},
        follow=True,
    )


def said(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)] or [
        str(m) for m in response.context["messages"]
    ]


def action_names(client) -> set[str]:
    response = client.get(URL)
    form = response.context["action_form"]
    if form is None:  # no action at all
        return set()
    return {value for value, _label in form.fields["action"].choices if value}


def test_request_kill_skips_finished_runs(admin_client, make_run):
    running = make_run("a")
    queued = make_run("b", status=Status.QUEUED)
    done = make_run("c", status=Status.SUCCEEDED)
    response = act(admin_client, "request_kill", running, queued, done)
    messages = said(response)
    assert "Asked 2 runs to stop." in messages
    assert "Skipped 1 run: it is finished or was already asked to stop." in messages
    running.refresh_from_db()
    queued.refresh_from_db()
    done.refresh_from_db()
    assert running.kill_requested and queued.kill_requested and not done.kill_requested
    assert running.status == Status.RUNNING  # cooperative: the job stops itself


def test_request_kill_tells_the_integration(admin_client, make_run):
    killed: list[Any] = []

    class Backend:
        def kill(self, run, *, force=False):
            killed.append(run.pk)

        def retry(self, run):  # pragma: no cover - not used here
            raise AssertionError

    contrib.register("tests_backend", Backend())
    try:
        run = make_run("a", source="tests_backend")
        act(admin_client, "request_kill", run)
    finally:
        contrib.unregister("tests_backend")
    assert killed == [run.pk]


def test_mark_killed_counts_finished_runs_as_skipped(admin_client, make_run):
    running = make_run("a")
    done = make_run("b", status=Status.FAILED)
    messages = said(act(admin_client, "mark_killed", running, done))
    assert "Marked 1 run as killed." in messages
    assert "Skipped 1 run: it is already finished." in messages
    running.refresh_from_db()
    done.refresh_from_db()
    assert running.status == Status.KILLED
    assert done.status == Status.FAILED


def test_retry_with_and_without_an_integration(admin_client, make_run):
    retried: list[Any] = []

    class Backend:
        def kill(self, run, *, force=False):  # pragma: no cover - not used here
            pass

        def retry(self, run):
            retried.append(run.pk)
            return JobRun.objects.enqueue(run.job_name, source=run.source)

    contrib.register("tests_backend", Backend())
    try:
        can = make_run("a", status=Status.FAILED, source="tests_backend")
        cannot = make_run("b", status=Status.FAILED, source="command")
        messages = said(act(admin_client, "retry", can, cannot))
    finally:
        contrib.unregister("tests_backend")
    assert retried == [can.pk]
    assert "Enqueued 1 run again." in messages
    assert any("cannot be retried" in m and "command" in m for m in messages)
    assert JobRun.objects.for_job("a").queued().count() == 1


def test_retry_skips_active_runs(admin_client, make_run, retry_backend):
    done = make_run("a", status=Status.FAILED, source="tests_backend")
    running = make_run("b", status=Status.RUNNING, source="tests_backend")
    queued = make_run("c", status=Status.QUEUED, source="tests_backend")
    messages = said(act(admin_client, "retry", done, running, queued))
    assert retry_backend == [done.pk]
    assert "Enqueued 1 run again." in messages
    assert (
        "Skipped 2 runs: they are still active, and only finished runs are retried."
        in messages
    )
    assert JobRun.objects.count() == 4


def test_a_retry_refused_for_what_the_run_kept_is_a_warning_not_an_error(
    admin_client, make_run, retry_backend
):
    """Parameters cut to a preview cannot be sent again: a refusal, not a failure of the
    task system, said as the other refusals are, on the changelist and on the run's page."""
    cut = {"cut": True, "length": 2_000_000, "preview": "{"}
    run = make_run("a", status=Status.FAILED, source="tests_backend", params=cut)
    response = act(admin_client, "retry", run)
    [message] = get_messages(response.wsgi_request)
    assert message.level_tag == "warning"
    assert str(message).startswith(f"Did not retry {run}: This run cannot be retried")
    response = admin_client.post(f"{URL}{run.pk}/retry/", follow=True)
    [message] = get_messages(response.wsgi_request)
    assert message.level_tag == "warning"
    assert "too big to keep" in str(message)
    assert retry_backend == []
    assert list(JobRun.objects.all()) == [run]


def test_delete_shows_the_confirmation_then_deletes_finished_runs_only(
    admin_client, make_run
):
    done = make_run("a", status=Status.SUCCEEDED)
    for i in range(3):
        done.log(20, "line %d", i)
    active = make_run("b")
    response = act(admin_client, "delete_selected", done, active)
    html = response.content.decode()
    assert response.templates[0].name == (
        "admin/django_jobstatus/jobrun/delete_selected_confirmation.html"
    )
    assert "Refused to delete 1 active run: stop it first." in html
    assert "Job logs: 3" in html
    assert str(active.pk) not in html.split("<h2>Objects</h2>")[1]
    response = act(admin_client, "delete_selected", done, post="yes")
    assert "Successfully deleted 1 job run." in said(response)
    assert list(JobRun.objects.all()) == [active]
    assert not JobLog.objects.exists()


@override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=50)
def test_select_all_then_delete_posts_back_the_filters_not_every_id(
    admin_client, make_run
):
    """Django's confirmation page posted one hidden field per selected run back: past
    DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000) the confirming request was refused, and the page
    read every run whole (6 s and 8 MB for the 80,000 failed runs of a million)."""
    failed = [make_run("a", status=Status.FAILED) for _ in range(60)]
    failed[0].log(40, "boom")
    other, succeeded = make_run("b", status=Status.FAILED), make_run("a")
    url = f"{URL}?status=failed&job_name=a"
    picked = {"action": "delete_selected", "select_across": "1"}
    picked["_selected_action"] = [str(failed[0].pk)]
    response = admin_client.post(url, {**picked, "index": "0"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('name="_selected_action"') == 1
    assert '<input type="hidden" name="select_across" value="1">' in html
    assert "Job runs: 60" in html and "Job logs: 1" in html
    response = admin_client.post(url, {**picked, "post": "yes"}, follow=True)
    assert "Successfully deleted 60 job runs." in said(response)
    assert set(JobRun.objects.all()) == {other, succeeded}
    assert not JobLog.objects.exists()
    logged = LogEntry.objects.filter(action_flag=DELETION)
    assert sorted(logged.values_list("object_id", flat=True)) == sorted(
        str(run.pk) for run in failed
    )


def test_delete_confirmation_reads_a_hundred_runs_and_caps_its_counts(
    admin_client, make_run
):
    runs = [make_run("a", status=Status.SUCCEEDED) for _ in range(160)]
    for run in runs:
        run.log(20, "a line")
    statements: list[str] = []

    def record(execute, sql, *args):
        statements.append(sql)
        return execute(sql, *args)

    with (
        mock.patch("django_jobstatus.admin.runs.COUNT_CAP", 150),
        mock.patch("django_jobstatus.admin.runs.SUMMARY_LINES", 120),
        connection.execute_wrapper(record),
    ):
        response = admin_client.post(
            URL,
            {
                "action": "delete_selected",
                "select_across": "1",
                "index": "0",
                "_selected_action": [str(runs[0].pk)],
            },
        )
    html = response.content.decode()
    assert "Job runs: 150+" in html and "Job logs: 120+" in html
    assert "… and 50+ more runs" in html
    assert html.count("/change/") >= 100
    # Runs are read whole only a page at a time (the changelist's own 100), never all.
    whole = [sql for sql in statements if '"traceback"' in sql]
    assert whole and all("LIMIT" in sql for sql in whole)
    assert any("LIMIT 100" in sql and '"traceback"' not in sql for sql in statements)
    assert JobRun.objects.count() == 160  # nothing deleted before it is confirmed


def _select_all_notes(html: str) -> tuple[str, str]:
    offered = re.search(r'<span class="question hidden">\s*<a [^>]*>([^<]+)</a>', html)
    selected = re.search(r'<span class="all hidden">([^<]+)</span>', html)
    assert offered and selected, "no 'Select all' in the action bar"
    return offered.group(1).strip(), selected.group(1).strip()


@pytest.mark.parametrize("action", ["request_kill", "mark_killed"])
def test_select_all_past_the_count_cap_says_at_least_the_cap(
    admin_client, make_run, monkeypatch, action
):
    """Past the count's cap "Select all" acts on every matching run, with no confirmation
    page: the action bar says "3+" (not "3", the capped count), and the result message
    says how many runs it touched."""
    from django_jobstatus.admin import paginator

    monkeypatch.setattr(paginator.CappedCountPaginator, "cap", 3)
    monkeypatch.setattr("django_jobstatus.admin.runs.JobRunAdmin.list_per_page", 2)
    runs = [make_run("etl.load") for _ in range(6)]
    make_run("etl.load", status=Status.SUCCEEDED)

    html = admin_client.get(URL, {"status": "running"}).content.decode()
    assert _select_all_notes(html) == ("Select all 3+ job runs", "All 3+ selected")

    response = admin_client.post(
        f"{URL}?status=running",
        {
            "action": action,
            "select_across": "1",
            "index": "0",
            "_selected_action": [str(runs[0].pk)],
        },
        follow=True,
    )
    assert {
        "request_kill": "Asked 6 runs to stop.",
        "mark_killed": "Marked 6 runs as killed.",
    }[action] in said(response)
    assert JobRun.objects.kill_requested().count() == 6


def test_select_all_below_the_count_cap_says_the_count(
    admin_client, make_run, monkeypatch
):
    """Below the cap the count is exact: Django's own "Select all 6 job runs"."""
    monkeypatch.setattr("django_jobstatus.admin.runs.JobRunAdmin.list_per_page", 2)
    for _ in range(6):
        make_run("etl.load")
    html = admin_client.get(URL, {"status": "running"}).content.decode()
    assert _select_all_notes(html) == ("Select all 6 job runs", "All 6 selected")


def test_delete_of_active_runs_only_is_refused(admin_client, make_run):
    active = make_run("b")
    response = act(admin_client, "delete_selected", active)
    assert "Refused to delete 1 active run: stop it first." in said(response)
    assert JobRun.objects.filter(pk=active.pk).exists()


def test_run_page_has_no_delete_for_an_active_run(admin_client, make_run):
    active = make_run("b")
    assert admin_client.get(f"{URL}{active.pk}/delete/").status_code == 403


@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_run_page_has_no_delete_for_a_finished_child_of_a_batch_still_running(
    admin_client,
):
    """The batch adds its children up until it ends: deleted, its killed child left it
    ending succeeded, 2 of 2 (the purge and the bulk delete already kept it)."""
    parent = start_batch("imports.all", ["a", "b", "c"])
    killed, *rest = parent.children.order_by("job_name")
    killed.mark_running(worker="w1")
    killed.mark_killed()
    page = admin_client.get(f"{URL}{killed.pk}/change/").content.decode()
    assert f"{killed.pk}/delete/" not in page
    response = admin_client.post(f"{URL}{killed.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    for child in rest:
        with track(child.job_name, run=child):
            pass
    parent.refresh_from_db()
    assert (parent.status, parent.progress_total) == (Status.KILLED, 3)
    # Once the batch has ended, its children go as any finished run.
    assert admin_client.get(f"{URL}{killed.pk}/delete/").status_code == 200


@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_delete_selected_says_why_the_finished_runs_of_a_running_batch_stay(
    admin_client, make_run
):
    """The bulk delete keeps a finished child of a batch still running (the batch counts
    it), and said only "Successfully deleted 1 job run." of the two selected."""
    parent = start_batch("imports.all", ["a", "b"])
    child = parent.children.get(job_name="a")
    with track(child.job_name, run=child):
        pass
    other = make_run("c", status=Status.SUCCEEDED)
    response = act(admin_client, "delete_selected", child, other, post="yes")
    assert said(response) == [
        "Successfully deleted 1 job run.",
        "Kept 1 finished run: a batch that has not ended still counts it, or another"
        " process held it while the deletes ran. Delete it again later.",
    ]
    assert JobRun.objects.filter(pk=child.pk).exists()
    assert not JobRun.objects.filter(pk=other.pk).exists()


def _while_deleting(monkeypatch, then) -> None:
    """Another process (a worker) acts once the deletion's batches ran."""
    original = retention.delete_finished

    def deleting(runs, deleted=None):
        result = original(runs, deleted=deleted)
        then()
        return result

    monkeypatch.setattr(retention, "delete_finished", deleting)


@pytest.mark.django_db(transaction=True)
def test_a_refused_active_run_that_ends_during_the_delete_is_not_said_kept(
    admin_client, make_run, monkeypatch
):
    """A finished run and a running one selected: the running one is refused ("stop it
    first"); its job ends while the deletion runs. The message then also said "Kept 1
    finished run: a batch that has not ended still counts it, or another process held
    it" of that same run: counted twice, with a reason that is not so."""
    done = make_run("etl.load", status=Status.SUCCEEDED)
    live = make_run("etl.load")  # running
    _while_deleting(
        monkeypatch, lambda: JobRun.objects.get(pk=live.pk).mark_succeeded()
    )
    response = admin_client.post(
        URL,
        {
            "action": "delete_selected",
            "_selected_action": [str(done.pk), str(live.pk)],
            "post": "yes",
        },
        follow=True,
    )
    messages = said(response)
    assert "Refused to delete 1 active run: stop it first." in messages
    assert "Successfully deleted 1 job run." in messages
    assert not JobRun.objects.filter(pk=done.pk).exists()
    assert not [m for m in messages if m.startswith("Kept ")], messages


@pytest.mark.django_db(transaction=True)
def test_select_all_delete_does_not_count_runs_that_finished_after_it_as_kept(
    admin_client, make_run, monkeypatch
):
    """Select all across "succeeded runs of etl.load": every one is deleted. Meanwhile
    the job ran again and succeeded (a busy job always does during a long delete): the
    message said that run was kept because a batch counts it or another process held it,
    and told the user to delete it again later."""
    for _ in range(3):
        make_run("etl.load", status=Status.SUCCEEDED)
    _while_deleting(monkeypatch, lambda: make_run("etl.load", status=Status.SUCCEEDED))
    url = f"{URL}?status=succeeded&job_name=etl.load"
    first = JobRun.objects.first()
    response = admin_client.post(
        url,
        {
            "action": "delete_selected",
            "select_across": "1",
            "index": "0",
            "_selected_action": [str(first.pk)],
            "post": "yes",
        },
        follow=True,
    )
    messages = said(response)
    assert "Successfully deleted 3 job runs." in messages
    assert JobRun.objects.count() == 1  # the new run, never selected
    assert not [m for m in messages if m.startswith("Kept ")], messages


@pytest.mark.django_db(transaction=True)  # the batch follows its children on commit
def test_request_kill_on_a_batch_s_page_stops_the_batch(admin_client):
    """No worker runs a batch's parent: the button asked it alone, nobody read its request,
    its children ran on and the batch ended succeeded."""
    parent = start_batch("imports.all", ["a", "b"])
    response = admin_client.post(f"{URL}{parent.pk}/kill/", follow=True)
    assert said(response) == [
        "Asked the run to stop.",
        "Asked 2 runs under this batch to stop.",
    ]
    ran = []
    for child in parent.children.order_by("job_name"):
        with track(child.job_name, run=child) as job:  # a worker's loop
            job.check_kill()
            ran.append(child.job_name)
    parent.refresh_from_db()
    assert (ran, parent.status) == ([], Status.KILLED)


@pytest.mark.django_db(transaction=True)
def test_a_forced_kill_on_a_batch_s_page_ends_its_children_killed(admin_client):
    """ "Kill now (forced)" on a batch's parent said "Killed the run." and left its queued
    children to the workers, which ran them all: the batch said killed, its work done."""
    parent = start_batch("imports.all", ["a", "b"])
    response = admin_client.post(f"{URL}{parent.pk}/force-kill/", follow=True)
    assert said(response) == ["Killed the run.", "Killed 2 runs under this batch."]
    assert set(parent.children.values_list("status", flat=True)) == {Status.KILLED}
    parent.refresh_from_db()
    assert parent.status == Status.KILLED


# Permissions.


def test_actions_offered_per_permission(staff_client):
    # Exporting only reads: the view permission is enough.
    exports = {"export_matching_csv", "export_matching_jsonl"}
    assert action_names(staff_client("view_jobrun")) == exports
    assert action_names(staff_client("view_jobrun", "change_jobrun")) == {
        "request_kill",
        "mark_killed",
        "retry",
        *exports,
    }
    assert action_names(staff_client("view_jobrun", "delete_jobrun")) == {
        "delete_selected",
        *exports,
    }


@pytest.mark.parametrize("action", ["request_kill", "mark_killed", "retry"])
def test_without_change_permission_nothing_is_killed(staff_client, make_run, action):
    client = staff_client("view_jobrun", "delete_jobrun")
    run = make_run("a")
    response = act(client, action, run)
    assert "No action selected." in said(response)
    run.refresh_from_db()
    assert run.status == Status.RUNNING and not run.kill_requested


def test_without_delete_permission_nothing_is_deleted(staff_client, make_run):
    client = staff_client("view_jobrun", "change_jobrun")
    run = make_run("a", status=Status.SUCCEEDED)
    act(client, "delete_selected", run, post="yes")
    assert JobRun.objects.filter(pk=run.pk).exists()
    assert client.get(f"{URL}{run.pk}/delete/").status_code == 403


def test_without_change_permission_the_kill_button_is_refused(staff_client, make_run):
    client = staff_client("view_jobrun")
    run = make_run("a")
    page = client.get(f"{URL}{run.pk}/change/").content.decode()
    assert "Request kill" not in page
    assert client.post(f"{URL}{run.pk}/kill/").status_code == 403
    run.refresh_from_db()
    assert not run.kill_requested


@pytest.mark.django_db(transaction=True)
def test_forced_kill_page_button_on_a_running_batch_does_not_say_it_could_not_stop_it(
    admin_client,
) -> None:
    """The run page's Kill (forced) button on a batch whose child had started warned
    "Could not stop imports.all (…): no enabled integration can stop a run from source
    “manual”", though the batch and every run under it ended killed: no worker runs a
    batch's parent, and the kill ended its runs themselves."""
    parent = start_batch("imports.all", ["a", "b"])
    parent.children.get(job_name="a").mark_running(worker="host:1")
    response = admin_client.post(f"{URL}{parent.pk}/force-kill/", follow=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    messages = said(response)
    assert not [m for m in messages if m.startswith("Could not stop imports.all")], (
        messages
    )
