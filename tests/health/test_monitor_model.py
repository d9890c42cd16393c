"""JobMonitor validation: bad input is a ValidationError naming the field, and nothing is saved."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from django_jobstatus.models import JobMonitor, JobRun, MonitorState


def _errors(**fields) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        JobMonitor.objects.create(**fields)
    assert JobMonitor.objects.count() == 0  # nothing half-saved
    return caught.value.message_dict


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"every": timedelta(seconds=-5)}, "every"),
        ({"every": timedelta(0)}, "every"),
        ({"grace": timedelta(minutes=-1)}, "grace"),
        ({"max_duration": timedelta(seconds=-1)}, "max_duration"),
        ({"max_duration_p95_factor": 0.5}, "max_duration_p95_factor"),
        ({"every": timedelta(days=40000)}, "every"),
        ({"grace": timedelta(days=40000)}, "grace"),
        ({"max_failures": 101}, "max_failures"),
        ({"every": timedelta(hours=1), "cron": "0 * * * *"}, "cron"),
        (
            {"max_duration": timedelta(hours=1), "max_duration_p95_factor": 3},
            "max_duration_p95_factor",
        ),
    ],
)
def test_bad_values_name_their_field(past_run, fields, field):
    past_run("tests.nightly")
    errors = _errors(job_name="tests.nightly", **fields)
    assert list(errors) == [field]


def test_unknown_job_name_is_refused(db):
    errors = _errors(job_name="tests.never_ran", every=timedelta(hours=1))
    assert list(errors) == ["job_name"]
    assert "tests.never_ran" in errors["job_name"][0]


def test_a_second_monitor_for_the_same_job_is_refused(monitor):
    monitor("tests.nightly")
    with pytest.raises(ValidationError) as caught:
        JobMonitor.objects.create(job_name="tests.nightly")
    assert list(caught.value.message_dict) == ["job_name"]
    assert JobMonitor.objects.count() == 1


def test_good_monitors_save(monitor):
    hourly = monitor("tests.nightly", every=timedelta(hours=1))
    nightly = monitor("tests.other", cron="0 2 * * *", max_failures=3)
    seconds = monitor("tests.third", cron="*/30 * * * * *")
    assert hourly.state == MonitorState.HEALTHY
    assert {m.pk for m in JobMonitor.objects.all()} == {
        hourly.pk,
        nightly.pk,
        seconds.pk,
    }
    assert str(nightly) == "tests.other"


def test_enabled_at_is_stamped_when_a_monitor_is_turned_on_again(monitor):
    m = monitor()
    m.save()
    assert m.enabled_at is None  # on since its creation
    m.enabled = False
    m.save()
    assert m.enabled_at is None
    m.enabled = True
    m.save(update_fields=["enabled"])
    m.refresh_from_db()
    assert m.enabled_at is not None
    first = m.enabled_at
    m.max_failures = 3
    m.save()  # on already: no new stamp
    m.refresh_from_db()
    assert m.enabled_at == first
    # Loaded while it was on, turned off elsewhere since: saving it turns it on again.
    stale = JobMonitor.objects.get(pk=m.pk)
    JobMonitor.objects.filter(pk=m.pk).update(enabled=False)
    stale.save()
    stale.refresh_from_db()
    assert stale.enabled and stale.enabled_at > first
    # A queryset update() bypasses save(): it stamps nothing (docs/health.md says so).
    second = stale.enabled_at
    JobMonitor.objects.filter(pk=m.pk).update(enabled=False)
    JobMonitor.objects.filter(pk=m.pk).update(enabled=True)
    stale.refresh_from_db()
    assert stale.enabled_at == second


def test_cadence_changed_at_is_stamped_when_every_or_cron_changes(monitor):
    m = monitor(every=timedelta(hours=1))
    assert m.cadence_changed_at is None  # its cadence since its creation
    m.max_failures = 3
    m.every = timedelta(hours=1)  # the same value again
    m.save()
    m.refresh_from_db()
    assert m.cadence_changed_at is None
    m.every = timedelta(hours=2)
    m.save(update_fields=["every"])
    m.refresh_from_db()
    first = m.cadence_changed_at
    assert first is not None
    m.every, m.cron = None, "0 2 * * *"
    m.save()
    m.refresh_from_db()
    assert m.cadence_changed_at > first
    second = m.cadence_changed_at
    m.grace = timedelta(minutes=30)  # not the cadence
    m.save()
    m.refresh_from_db()
    assert m.cadence_changed_at == second


def test_a_monitor_whose_runs_were_purged_can_still_be_edited(monitor):
    """The runs of a job that stopped are purged in time: its monitor (late, say) must
    still be editable, to turn it off or delete its alerts. save() refused it ("No run
    has been recorded"), in the admin and the API too."""
    m = monitor("tests.nightly", every=timedelta(hours=1))
    JobMonitor.objects.filter(pk=m.pk).update(state=MonitorState.LATE)
    JobRun.objects.all().delete()
    m.enabled = False
    m.save()
    m.refresh_from_db()
    assert not m.enabled
    # Moved to another job, it watches a job that must have run.
    m.job_name = "tests.never_ran"
    with pytest.raises(ValidationError) as caught:
        m.save()
    assert list(caught.value.message_dict) == ["job_name"]
    assert JobMonitor.objects.get(pk=m.pk).job_name == "tests.nightly"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_p95_factor_that_is_no_number_is_refused(past_run, value):
    """NaN passed both bounds of the p95 factor: the monitor was saved, and each check of
    it raised (a duration of NaN seconds) once the job had a successful run."""
    past_run("tests.nightly")
    errors = _errors(job_name="tests.nightly", max_duration_p95_factor=value)
    assert list(errors) == ["max_duration_p95_factor"]
