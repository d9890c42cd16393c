"""A forced kill of batches counts and says what it ended, parents included (found by a review)."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from django_jobstatus.batches import start_batch
from django_jobstatus.models import JobRun, Status

URL = "/admin/django_jobstatus/jobrun/"


def said(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.mark.django_db(transaction=True)  # the batches follow their children on commit
def test_forced_kill_of_an_outer_batch_counts_the_inner_batch_it_killed() -> None:
    """Killing the outer batch by force ends killed: a, the inner batch's parent, b and c.
    ``in_batches`` is documented as the runs under the parent that the kill ended killed:
    4. The inner parent must be killed by the kill (before its children), not left to
    end as its children add up, and counted."""
    outer = start_batch("outer", ["a"])
    inner = start_batch("inner", ["b", "c"], parent=outer)
    result = JobRun.objects.filter(pk=outer.pk).request_kill(force=True)
    statuses = dict(JobRun.objects.values_list("job_name", "status"))
    assert statuses == dict.fromkeys(["outer", "a", "inner", "b", "c"], Status.KILLED)
    inner.refresh_from_db()
    assert (result.killed, result.in_batches) == (1, 4)
    assert inner.message == "Killed by force."


@pytest.mark.django_db(transaction=True)
def test_forced_kill_page_button_on_outer_batch_says_how_many_it_killed(
    admin_client,
) -> None:
    outer = start_batch("outer", ["a"])
    start_batch("inner", ["b", "c"], parent=outer)
    response = admin_client.post(f"{URL}{outer.pk}/force-kill/", follow=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    assert said(response) == ["Killed the run.", "Killed 4 runs under this batch."]


@pytest.mark.django_db(transaction=True)
def test_forced_kill_of_a_batch_with_its_children_selected_counts_the_parent() -> None:
    """Every active run picked (a batch's parent and its children) and killed by force:
    the three end killed through this kill, and ``killed`` (the runs picked it ended
    killed) says 3. The children were killed first (newest first), the parent then
    ended as they added up and the kill's own move on it was refused: 2."""
    parent = start_batch("imports.all", ["a", "b"])
    result = JobRun.objects.active().request_kill(force=True)
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    parent.refresh_from_db()
    assert result.killed == 3
    assert parent.message == "Killed by force."


@pytest.mark.django_db(transaction=True)
def test_admin_mark_as_killed_on_a_batch_and_its_children_says_no_run_was_skipped(
    admin_client,
) -> None:
    """The bulk "Mark as killed (forced)" on a batch's parent and its children (all active):
    all three end killed by it; the admin said "Marked 2 runs as killed." and "Skipped 1
    run: it is already finished." of a run that was active when picked."""
    parent = start_batch("imports.all", ["a", "b"])
    picked = [parent, *parent.children.all()]
    response = admin_client.post(
        URL,
        {"action": "mark_killed", "_selected_action": [str(r.pk) for r in picked]},
        follow=True,
    )
    assert set(JobRun.objects.values_list("status", flat=True)) == {Status.KILLED}
    assert said(response) == ["Marked 3 runs as killed."]
