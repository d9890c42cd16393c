"""Health: judge each JobMonitor by its job's newest runs, keep incidents, send alerts.

``check()`` (``manage.py check_jobstatus``) reads the monitors, then evaluates each with
at most four queries: its row lock, the job's newest finished runs (with its last start),
and, with a duration limit, its run running longest and (for a limit relative to the
job's p95) the durations of its recent successful runs. A finished run of a monitored job is also
evaluated as it happens, off the job's thread (a ``job_status_changed`` receiver).

Checks of one monitor take turns: each locks the monitor's row, then reads it and the runs,
so none stores a judgment of runs older than those the check before it judged. A state
change is one conditional UPDATE of the monitor (two processes never both win), then the
incident it closes or opens. At the end of the check, once committed,
``monitor_state_changed`` is sent and the alerts (email, webhooks) are queued to one
background thread: a slow or dead server costs that thread at most ``ALERT_TIMEOUT``
seconds a delivery, never a job or a check.

An alert has two stamps on its incident. Its queued stamp (``open_alert_queued_at``,
``resolve_alert_queued_at``) is set in the change's transaction: the process that set it
owns the alert, and renews the stamp just before it delivers. Its sent stamp
(``open_alert_at``, ``resolve_alert_at``) is set once a channel took it. An alert queued
and not sent (every channel failed; its process ended first, or was killed outright) is
queued again by a later ``check()``, once its queued stamp is older than a delivery can
take, for a day (``ALERT_RETRY_FOR``).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import logging
import os
import queue
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cronsim import CronSim
from django.core.mail import send_mail
from django.db import connections, transaction
from django.db.models import Count, OuterRef, Prefetch, Q, Subquery
from django.db.models.signals import post_delete, post_save, pre_delete
from django.urls import NoReverseMatch
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_jobstatus.conf import settings
from django_jobstatus.models import (
    JobMonitor,
    JobMonitorIncident,
    JobRun,
    MonitorState,
    Status,
    attempt_time,
)
from django_jobstatus.querysets import percentile
from django_jobstatus.signals import job_status_changed, monitor_state_changed

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable

    from django.db.models import QuerySet

logger = logging.getLogger(__name__)

# Failed runs in a row that count toward ``max_failures``: a lost worker is a failure; a kill
# is neither a failure nor a success (skipped).
_FAILURES = frozenset({Status.FAILED, Status.LOST})
_RUN_FIELDS = ("pk", "status", "created_at", "started_at", "finished_at", "error")
ALERT_WINDOW = timedelta(hours=1)  # ALERT_RATE_LIMIT counts alerts in this window
ALERT_RETRY_FOR = timedelta(days=1)  # an alert not sent is queued again for this long
# Each alert's stamps on its incident (queued, went out), and the time of its event.
_STAMPS = {
    "opened": ("open_alert_queued_at", "open_alert_at", "opened_at"),
    "resolved": ("resolve_alert_queued_at", "resolve_alert_at", "resolved_at"),
}


# Cadence.


def next_expected(monitor: JobMonitor, last_run_at: datetime | None) -> datetime | None:
    """When the job should start next: ``every`` after its newest run, or the cron's next time.

    A run counts for one cron time: the next one when it starts at most ``grace`` before
    it, and nearer to it than to the one before; else the one before (it ran late, or on
    time), and the next is then expected. Nothing is expected
    before the monitor was created, last turned on again (``enabled_at``) or given its
    cadence (``cadence_changed_at``): a run older than that counts from then. Cron expressions are read in TIME_ZONE (never the active time zone), and
    the time is returned in UTC, so that adding the grace is real time across a DST
    change. None when the monitor has no cadence.
    """
    since = max(
        moment
        for moment in (
            monitor.created_at,
            monitor.enabled_at,
            monitor.cadence_changed_at,
        )
        if moment is not None
    )
    if last_run_at is None or last_run_at < since:
        anchor, early = since, timedelta(0)
    else:
        anchor, early = last_run_at, monitor.grace
    if monitor.every is not None:
        return anchor + monitor.every
    if monitor.cron:
        after = _cron_times(monitor.cron, anchor)
        following = next(after, None)
        if following is None or not early:
            return following
        # A run: up to grace early for the next time, unless nearer the one before (a
        # grace longer than the cron's period let one run count for several times).
        before = next(_cron_times(monitor.cron, anchor, reverse=True), None)
        ahead = following - anchor
        if ahead <= early and (before is None or ahead < anchor - before):
            return next(after, None)
        return following
    return None


def _cron_times(
    expr: str, moment: datetime, *, reverse: bool = False
) -> Iterator[datetime]:
    """The cron's times after ``moment`` (``reverse``: at or before it), read in TIME_ZONE,
    in UTC and in real time: in the hour a DST change repeats, cronsim gives a time of the
    hour's first pass for a start in its second, an hour before the start."""
    zone = timezone.get_default_timezone()
    start = moment + timedelta(seconds=1) if reverse else moment
    for found in CronSim(expr, start.astimezone(zone), reverse=reverse):
        found = found.astimezone(UTC)
        if (found <= moment) if reverse else (found > moment):
            yield found


# A retry clears ``started_at`` and the next attempt sets it again: a run that was retried
# (or restarted) started at its first attempt's start, kept in ``attempts``.
_FIRST_START = "attempts__0__started_at"
# The job's newest runs that started, by creation, whose latest start is its last start: a
# run created before newer ones (queued behind a backlog, or for later) may start after
# them. Ordering the job's runs by their start would sort them all (no index holds a
# run's start, the first attempt's when it was retried); the newest few by creation are
# one range of the (job_name, created_at) index. A run is not seen once that many runs
# created after it have started.
_RECENT_STARTS = 5


def _started(job_name: str | OuterRef) -> QuerySet[JobRun]:
    """The job's runs that started, newest first by creation: a run queued but never
    started (or ended, killed, before a worker took it) is no sign of life; one waiting
    for its retry is."""
    return JobRun.objects.filter(
        Q(started_at__isnull=False) | Q(attempt__gt=1), job_name=job_name
    ).order_by("-created_at", "-id")


def _start(started: datetime | None, first: Any) -> datetime | None:
    """A run's start: its first attempt's (``first``, from ``attempts``) when it was
    retried or restarted, else ``started_at``."""
    return attempt_time(first) or started


def _latest(starts: Iterable[tuple[datetime | None, Any]]) -> datetime | None:
    """The latest start of the runs whose ``started_at`` and first attempt's start are ``starts``."""
    found = [_start(started, first) for started, first in starts]
    return max((start for start in found if start is not None), default=None)


def _last_start_columns(job_name: str | OuterRef, prefix: str) -> dict[str, Subquery]:
    """The ``started_at`` and first attempt's start of each of the job's
    ``_RECENT_STARTS`` newest runs that started, named ``{prefix}started_{i}`` and
    ``{prefix}first_{i}`` (read back by ``_last_start_of()``)."""
    runs = _started(job_name)
    columns = {}
    for index in range(_RECENT_STARTS):
        run = runs[index : index + 1]
        columns[f"{prefix}started_{index}"] = Subquery(run.values("started_at"))
        columns[f"{prefix}first_{index}"] = Subquery(run.values(_FIRST_START))
    return columns


def _last_start_of(row: Any, prefix: str) -> datetime | None:
    """The job's last start, from the columns of ``_last_start_columns()`` on ``row``."""
    return _latest(
        (
            getattr(row, f"{prefix}started_{index}"),
            getattr(row, f"{prefix}first_{index}"),
        )
        for index in range(_RECENT_STARTS)
    )


_ANNOTATED = "last_start_"  # the prefix of the columns of with_last_start()


def with_last_start(monitors: QuerySet[JobMonitor]) -> QuerySet[JobMonitor]:
    """Monitors with their job's last start in columns that ``last_start()`` reads."""
    return monitors.annotate(**_last_start_columns(OuterRef("job_name"), _ANNOTATED))


def last_start(monitor: JobMonitor, *, using: str | None = None) -> datetime | None:
    """When the job last started a run: the latest start of its newest runs that started
    (see ``_RECENT_STARTS``), annotated by ``with_last_start()``, else one query."""
    if hasattr(monitor, f"{_ANNOTATED}started_0"):
        return _last_start_of(monitor, _ANNOTATED)
    return _latest(
        _started(monitor.job_name)
        .using(using or settings.DATABASE)
        .values_list("started_at", _FIRST_START)[:_RECENT_STARTS]
    )


def expected_at(monitor: JobMonitor, *, using: str | None = None) -> datetime | None:
    """When the monitor expects its job's next start, as ``assess()`` judges it (the admin,
    the API): never while it is off."""
    if not monitor.enabled:
        return None
    return next_expected(monitor, last_start(monitor, using=using))


# Reading monitors with their job's newest run.


def _newest(field: str) -> Subquery:
    """The newest run's ``field`` of the row's job: one probe of the (job_name, created_at) index."""
    runs = JobRun.objects.filter(job_name=OuterRef("job_name")).order_by(
        "-created_at", "-id"
    )
    return Subquery(runs.values(field)[:1])


def open_incidents() -> Prefetch[Any]:
    """Prefetch each monitor's open incident (a list of at most one) into ``open_incidents``."""
    return Prefetch(
        "incidents",
        queryset=JobMonitorIncident.objects.filter(resolved_at__isnull=True),
        to_attr="open_incidents",
    )


def with_last_run(monitors: QuerySet[JobMonitor]) -> QuerySet[JobMonitor]:
    """Monitors with their job's newest run (``last_run_id/_at/_status``), last start (``with_last_start()``) and ``open_incidents``."""
    return (
        with_last_start(monitors)
        .annotate(
            last_run_id=_newest("pk"),
            last_run_at=_newest("created_at"),
            last_run_status=_newest("status"),
        )
        .prefetch_related(open_incidents())
    )


def open_incident(monitor: JobMonitor) -> JobMonitorIncident | None:
    """The monitor's open incident (prefetched by ``open_incidents()`` when it was)."""
    found = getattr(monitor, "open_incidents", None)
    if found is None:
        return monitor.incidents.filter(resolved_at__isnull=True).first()
    return found[0] if found else None


# Judging one monitor.


@dataclasses.dataclass(frozen=True)
class Assessment:
    """A monitor's state as its runs show it now, why, and the run that shows it."""

    state: str
    detail: str = ""
    run_id: uuid.UUID | None = None
    next_expected_at: datetime | None = None


def recent_p95(
    job_name: str, *, using: str | None = None, excluding: uuid.UUID | None = None
) -> float | None:
    """Seconds: the p95 duration of the job's newest ``MONITOR_DURATION_SAMPLE`` successful runs (one query).

    ``excluding``: a run left out, the one being judged (it must not raise its own limit).
    """
    sample = settings.MONITOR_DURATION_SAMPLE
    return _p95(_recent_durations(job_name, using, sample + 1), excluding, sample)


def _recent_durations(
    job_name: str, using: str | None, count: int
) -> list[tuple[uuid.UUID, float]]:
    """The ids and seconds of the job's newest ``count`` successful runs, newest first."""
    rows = (
        JobRun.objects.using(using or settings.DATABASE)
        .for_job(job_name)
        .succeeded()
        .filter(started_at__isnull=False, finished_at__isnull=False)
        .order_by("-created_at", "-id")
        .values_list("pk", "started_at", "finished_at")[:count]
    )
    return [
        (pk, (finished - started).total_seconds())
        for pk, started, finished in rows
        if started is not None and finished is not None
    ]


def _p95(
    rows: list[tuple[uuid.UUID, float]], excluding: uuid.UUID | None, sample: int
) -> float | None:
    """The p95 of the newest ``sample`` of ``rows`` but ``excluding``."""
    kept = [seconds for pk, seconds in rows if pk != excluding][:sample]
    return percentile(sorted(kept), 0.95)


def _limits(
    monitor: JobMonitor, using: str | None, excluding: list[uuid.UUID | None]
) -> list[timedelta | None]:
    """The duration over which a run is slow (fixed, or a multiple of the job's p95),
    leaving out each of ``excluding`` in turn, from one read of the durations: a run is
    judged against the others, never against itself."""
    if monitor.max_duration is not None:
        return [monitor.max_duration for _run in excluding]
    factor = monitor.max_duration_p95_factor
    if factor is None:
        return [None for _run in excluding]
    sample = settings.MONITOR_DURATION_SAMPLE
    rows = _recent_durations(monitor.job_name, using, sample + 1)
    limits = []
    for run in excluding:
        p95 = _p95(rows, run, sample)
        limits.append(None if p95 is None else timedelta(seconds=p95 * factor))
    return limits


def _finished_runs(
    monitor: JobMonitor, db: str
) -> tuple[list[JobRun], datetime | None]:
    """The job's last runs to finish, the last first, and its last start (one query).

    Killed runs are left out, but for the last to finish (a stuck run killed still took
    too long): a kill says neither that the job works nor that it fails, so it must not
    break a failing streak (``_failing()`` skips that one).
    Active runs are not read, so that any number of them cannot hide the finished ones.
    The runs are read by finish, so that a run created before any number of newer ones
    that ended before it is still the last (one range of the index of migration 0017).
    The last start is read in the same statement, so that it and the runs are of one
    moment (one more query when the job has no finished run).
    """
    finished = (
        JobRun.objects.using(db)
        .for_job(monitor.job_name)
        .finished()
        .filter(finished_at__isnull=False)  # the index's condition (SQLite needs it)
        .order_by("-finished_at", "-id")
    )
    last = Subquery(finished.values("pk")[:1])
    runs = list(
        finished.filter(~Q(status=Status.KILLED) | Q(pk=last))
        .only(*_RUN_FIELDS)
        .annotate(**_last_start_columns(monitor.job_name, "job_last_"))[
            : monitor.max_failures + 1
        ]
    )
    if runs:
        return runs, _last_start_of(runs[0], "job_last_")
    return runs, last_start(monitor, using=db)


def _longest_running(monitor: JobMonitor, db: str) -> JobRun | None:
    """The job's run that has been running longest (one query; the few running rows of the job)."""
    return (
        JobRun.objects.using(db)
        .for_job(monitor.job_name)
        .running()
        .filter(started_at__isnull=False)
        .only(*_RUN_FIELDS)
        .order_by("started_at", "id")
        .first()
    )


def _failing(monitor: JobMonitor, finished: list[JobRun]) -> Assessment | None:
    wanted = monitor.max_failures
    finished = [run for run in finished if run.status != Status.KILLED][:wanted]
    if not wanted or len(finished) < wanted:
        return None
    if any(run.status not in _FAILURES for run in finished):
        return None
    newest = finished[0]
    detail = ngettext(
        "The last run failed.", "The last %(count)d runs failed.", wanted
    ) % {"count": wanted}
    lines = (newest.error or "").strip().splitlines()  # none: an error of blanks only
    if lines:
        detail = f"{detail} {lines[-1][:300]}"
    return Assessment(MonitorState.FAILING, detail, newest.pk)


def _slow(monitor: JobMonitor, finished: list[JobRun], db: str) -> Assessment | None:
    """The run running longest, or the last to finish, over the duration limit."""
    newest = next(iter(finished), None)
    if monitor.max_duration is None and monitor.max_duration_p95_factor is None:
        return None
    # The running run against every finished one; the last to finish against the others.
    running_limit, last_limit = _limits(
        monitor, db, [None, newest.pk if newest is not None else None]
    )
    running = _longest_running(monitor, db)
    duration = running.duration if running is not None else None
    if (
        running is not None
        and duration is not None
        and running_limit is not None
        and duration > running_limit
    ):
        text = _("A run has been running for %(duration)s, longer than %(limit)s.")
        return Assessment(
            MonitorState.SLOW, text % _over(duration, running_limit), running.pk
        )
    if (
        newest is not None
        and newest.duration is not None
        and last_limit is not None
        and newest.duration > last_limit
    ):
        text = _("The last run took %(duration)s, longer than %(limit)s.")
        return Assessment(
            MonitorState.SLOW, text % _over(newest.duration, last_limit), newest.pk
        )
    return None


def _over(duration: timedelta, limit: timedelta) -> dict[str, str]:
    """A duration over its limit and the limit, as the detail shows them: to the second,
    else with as many decimals as it takes to tell them apart ("took 30.4s, longer than
    30.0s", never "took 30s, longer than 30s")."""
    figures = {"duration": _seconds(duration), "limit": _seconds(limit)}
    for digits in range(1, 7):  # at 6 (microseconds) they differ
        if figures["duration"] != figures["limit"]:
            break
        figures = {
            "duration": _seconds(duration, digits),
            "limit": _seconds(limit, digits),
        }
    return figures


def _seconds(value: timedelta, digits: int | None = None) -> str:
    """``value`` to the second, or to 3 figures under 10 s (a sub-second job's figures:
    "took 0s, longer than 0s" said nothing); with ``digits``, seconds with that many
    decimals."""
    if digits is None and value < timedelta(seconds=10):
        return f"{value.total_seconds():.3g}s"
    total = round(value.total_seconds(), digits or 0)
    minutes, second = divmod(total, 60)
    hours, minute = divmod(int(minutes), 60)
    width = digits + 3 if digits else 2  # zero-padded after the minutes: 1m05.5s
    text = f"{second:.{digits or 0}f}"
    if hours:
        return f"{hours}h{minute:02d}m{text:0>{width}}s"
    return f"{minute}m{text:0>{width}}s" if minute else f"{text}s"


def assess(
    monitor: JobMonitor, *, now: datetime | None = None, using: str | None = None
) -> Assessment:
    """The monitor's state now, from the job's runs (none when disabled).

    At most three queries: the newest finished runs with the last start (one more when
    the job has no finished run, unless the monitor comes from ``with_last_start()``),
    then for a duration limit the run running longest and, for a multiple of the p95, the
    recent durations.

    Worst first: failing (``max_failures`` finished runs in a row failed or were lost),
    late (no run started by the expected time plus ``grace``), slow (a run running, or
    the newest finished one, took longer than the limit), else healthy.
    """
    if not monitor.enabled:
        return Assessment(MonitorState.DISABLED)
    now = now or timezone.now()
    db = using or settings.DATABASE
    finished, started = _finished_runs(monitor, db)
    expected = next_expected(monitor, started)
    found = _failing(monitor, finished)
    if found is None and expected is not None and now > expected + monitor.grace:
        text = _("No run since %(last)s; one was expected by %(expected)s.")
        found = Assessment(
            MonitorState.LATE,
            text
            % {
                "last": _when(started) if started else _("the monitor began"),
                "expected": _when(expected),
            },
            finished[0].pk if finished else None,
        )
    if found is None:
        found = _slow(monitor, finished, db)
    found = found or Assessment(MonitorState.HEALTHY)
    return dataclasses.replace(found, next_expected_at=expected)


def _when(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


# Changing state: the monitor, its incidents, then (after commit) the signal and the alerts.


@dataclasses.dataclass
class Change:
    """A monitor's move from one state to another, with the incidents it resolved and opened."""

    monitor: JobMonitor
    previous: str
    state: str
    detail: str = ""
    resolved: JobMonitorIncident | None = None
    opened: JobMonitorIncident | None = None


def apply(
    monitor: JobMonitor,
    assessment: Assessment,
    *,
    now: datetime | None = None,
    using: str | None = None,
) -> Change | None:
    """Store a new state: resolve the open incident, open one for an unhealthy state.

    None when the state is the same, when another process changed it first, or when the
    stored state was judged after ``now`` (by a check that began later and got there
    first): an older judgment never undoes a newer one. The caller announces the change
    once it is committed (``_announce()``).
    """
    previous = monitor.state
    if assessment.state == previous:
        return None
    db = using or settings.DATABASE
    now = now or timezone.now()
    change = Change(monitor, previous, assessment.state, assessment.detail)
    with transaction.atomic(using=db):
        won = (
            JobMonitor.objects.using(db)
            .filter(_not_after("state_changed_at", now), pk=monitor.pk, state=previous)
            .update(state=assessment.state, state_changed_at=now)
        )
        if not won:
            return None
        monitor.state, monitor.state_changed_at = assessment.state, now
        open_incident = (
            JobMonitorIncident.objects.using(db)
            .filter(monitor=monitor, resolved_at__isnull=True)
            .first()
        )
        if open_incident is not None:
            open_incident.resolved_at, open_incident.resolved_to = now, assessment.state
            open_incident.save(using=db, update_fields=["resolved_at", "resolved_to"])
            change.resolved = open_incident
        if assessment.state in MonitorState.UNHEALTHY:
            change.opened = JobMonitorIncident.objects.using(db).create(
                monitor=monitor,
                state=assessment.state,
                opened_at=now,
                detail=assessment.detail,
                run_id=assessment.run_id,
            )
        _stamp_alerts(change, now, db)
    return change


def _not_after(field: str, now: datetime) -> Q:
    """Rows whose ``field`` is ``now`` or before, or empty: a judgment made at ``now`` may
    replace what they hold."""
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lte": now})


def _stamp_alerts(change: Change, now: datetime, db: str) -> None:
    """Mark which alerts go out: openings within ALERT_RATE_LIMIT a monitor an hour, and the
    resolution of every incident whose opening was queued (and of no other).

    A move from one unhealthy state to another is announced once, by the new incident;
    when the limit drops that opening, by the end of the old one ("is Slow (was
    Failing)"), else the last word said would be the old state, for good."""
    if not (settings.ALERT_EMAILS or settings.ALERT_WEBHOOKS):
        return
    since = now - ALERT_WINDOW
    queued = JobMonitorIncident.objects.using(db).filter(monitor=change.monitor)
    counts = queued.aggregate(
        opened=Count("pk", filter=Q(open_alert_queued_at__gte=since)),
        resolved=Count("pk", filter=Q(resolve_alert_queued_at__gte=since)),
    )
    budget = settings.ALERT_RATE_LIMIT - counts["opened"] - counts["resolved"]
    resolved, opened = change.resolved, change.opened
    if opened is not None:
        if budget > 0:
            opened.open_alert_queued_at = now
            opened.save(using=db, update_fields=["open_alert_queued_at"])
        else:
            _suppressed(change)
    if (
        resolved is not None
        and _announced(resolved)
        and (opened is None or opened.open_alert_queued_at is None)
    ):
        # Never limited: the end of an announced incident is never left unsaid (it counts).
        resolved.resolve_alert_queued_at = now
        resolved.save(using=db, update_fields=["resolve_alert_queued_at"])
        if opened is not None:
            # That end ("is Slow (was Failing)") announces the new incident: its own end
            # is announced in turn, and its opening never goes out.
            opened.open_alert_at = now
            opened.save(using=db, update_fields=["open_alert_at"])


def _announced(incident: JobMonitorIncident) -> bool:
    """Whether the incident's opening was queued, or said by the end of the incident
    before it (``_stamp_alerts()``)."""
    return (
        incident.open_alert_queued_at is not None or incident.open_alert_at is not None
    )


def _suppressed(change: Change) -> None:
    logger.warning(
        "Alert for the opening of a %s incident of %r not sent: more than ALERT_RATE_LIMIT=%d alerts in an hour.",
        change.state,
        change.monitor.job_name,
        settings.ALERT_RATE_LIMIT,
    )


# Held while a change is announced: this process's signals come in the order of the
# changes (the thread of an earlier change may get to its signal later).
_ANNOUNCING = threading.Lock()


def _announce(change: Change, db: str) -> None:
    """After commit: the signal, then the alerts that were stamped, off this thread.

    No signal for a change a newer one already replaced (stored by a check that began
    later, and announced by it): it came after that one and said a state the monitor had
    left. Its alerts still go: its incident opened (or ended) all the same.
    """
    with _ANNOUNCING:
        newest = (
            JobMonitor.objects.using(db)
            .filter(pk=change.monitor.pk)
            .values_list("state_changed_at", flat=True)
            .first()
        )
        stamped = change.monitor.state_changed_at
        if newest is None or stamped is None or newest <= stamped:
            try:
                monitor_state_changed.send(
                    sender=JobMonitor,
                    monitor=change.monitor,
                    previous=change.previous,
                    state=change.state,
                    opened=change.opened,
                    resolved=change.resolved,
                )
            except Exception:
                logger.exception("A monitor_state_changed receiver failed")
    for alert, incident in _alerts(change):
        _queue(alert, incident.pk, _queued_stamp(incident, alert), db)


def _queue(alert: Alert, incident_pk: int, claim: datetime, db: str) -> None:
    outbox.put(
        _send,
        alert,
        _targets(),
        incident_pk,
        claim,
        db,
        dropped=functools.partial(_not_sent, alert),
    )


def _queued_stamp(incident: JobMonitorIncident, alert: Alert) -> datetime:
    stamp: datetime = getattr(incident, _STAMPS[alert.event][0])
    return stamp


# Evaluating monitors.


@dataclasses.dataclass
class CheckResult:
    """What ``check()`` found: each monitor's assessment, and the changes it stored."""

    assessments: dict[str, Assessment] = dataclasses.field(default_factory=dict)
    changes: list[Change] = dataclasses.field(default_factory=list)
    resent: int = 0  # alerts queued again (see resend())

    @property
    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(MonitorState.values, 0)
        for assessment in self.assessments.values():
            found[assessment.state] += 1
        return found


def check(
    job_names: Iterable[str] | None = None,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    using: str | None = None,
) -> CheckResult:
    """Evaluate every monitor (or those of ``job_names``) and store their new states.

    One query for the monitors, at most four per monitor (its row lock, then what
    ``assess()`` reads), then writes only for the monitors whose state changed, and one
    UPDATE of ``checked_at``. A check of every monitor (no ``job_names``) then queues
    again the alerts not sent (``resend()``: two queries when there are none).
    ``dry_run`` takes no lock, writes nothing and sends nothing.
    """
    db = using or settings.DATABASE
    now = now or timezone.now()
    monitors = JobMonitor.objects.using(db).order_by("job_name")
    if job_names is not None:
        monitors = monitors.filter(job_name__in=list(job_names))
    result = CheckResult()
    checked = []
    try:
        for monitor in monitors:
            if dry_run:
                result.assessments[monitor.job_name] = assess(
                    monitor, now=now, using=db
                )
                continue
            found = _check_locked(monitor, now, db)
            if found is None:
                continue  # deleted since it was listed
            assessment, change = found
            result.assessments[monitor.job_name] = assessment
            checked.append(monitor.pk)
            if change is not None:
                result.changes.append(change)
        if checked and not dry_run:
            # A check that began earlier than the last one to stamp a monitor leaves it.
            stamp = JobMonitor.objects.using(db).filter(_not_after("checked_at", now))
            if job_names is not None:
                stamp = stamp.filter(pk__in=checked)
            stamp.update(checked_at=now)
        if job_names is None and not dry_run:
            result.resent = resend(now=now, using=db)
    finally:
        # Once committed, and once this check wrote all it writes: the alerts' thread
        # then writes (each alert's stamps) while this one does not.
        for change in result.changes:
            transaction.on_commit(functools.partial(_announce, change, db), using=db)
    return result


def _check_locked(
    monitor: JobMonitor, now: datetime, db: str
) -> tuple[Assessment, Change | None] | None:
    """Judge one monitor and store its state under its row lock (None: it was deleted).

    The monitor is read again once locked, and its runs after, so each check judges what
    the check before it committed and runs committed by then. Without the lock, a check
    that read the runs before a newer run was committed could store its state after a
    later check had judged that run: the compare-and-set on the state it read cannot tell,
    when the state stayed the same or changed and came back.

    A database without row locks (SQLite) judges and stores as before, the reads outside
    a transaction: held across them, a finish written meanwhile made the check fail
    ("database is locked", in WAL mode) or made the job's write wait for the check.
    """
    if not connections[db].features.has_select_for_update:
        assessment = assess(monitor, now=now, using=db)
        return assessment, apply(monitor, assessment, now=now, using=db)
    with transaction.atomic(using=db, savepoint=False):
        locked = (
            JobMonitor.objects.using(db)
            .select_for_update()
            .filter(pk=monitor.pk)
            .first()
        )
        if locked is None:
            return None
        assessment = assess(locked, now=now, using=db)
        return assessment, apply(locked, assessment, now=now, using=db)


# The receiver: a finished run of a monitored job is judged at once, off the job's thread.


class _MonitoredNames:
    """The job names that have an enabled monitor, kept MONITOR_CACHE_TIMEOUT seconds a process."""

    def __init__(self) -> None:
        self._names: frozenset[str] = frozenset()
        self._expires = 0.0
        self._cleared = 0  # clear() calls so far: a refresh they overlap is not kept

    def known(self) -> frozenset[str] | None:
        """The cached names, or None when they must be read again."""
        return self._names if time.monotonic() < self._expires else None

    def refresh(self, using: str | None = None) -> frozenset[str]:
        """Read the names (through the connection ``using``, by default the app's database's);
        keep them unless a monitor was saved or deleted while they were read."""
        cleared = self._cleared
        names = self._read(using or settings.DATABASE)
        if cleared == self._cleared:
            self._names = names
            self._expires = time.monotonic() + settings.MONITOR_CACHE_TIMEOUT
        return names

    @staticmethod
    def _read(using: str) -> frozenset[str]:
        monitors = JobMonitor.objects.using(using).filter(enabled=True)
        return frozenset(monitors.values_list("job_name", flat=True))

    def clear(self, **kwargs: Any) -> None:
        self._cleared += 1
        self._expires = 0.0


monitored = _MonitoredNames()


def _check_if_monitored(job_name: str) -> None:
    names = monitored.known()
    if names is None:
        names = monitored.refresh()
    if job_name in names:
        check([job_name])


def on_job_status_changed(*, run: JobRun, status: str, **kwargs: Any) -> None:
    """A finished run of a monitored job: queue its monitor's evaluation (no query on this thread).

    With the names cached and this job not among them, nothing at all happens.
    """
    if status not in Status.TERMINAL:
        return
    names = monitored.known()
    if names is not None and run.job_name not in names:
        return
    outbox.put(_check_if_monitored, run.job_name)


def before_fork(using: str | None = None) -> None:
    """In a process about to fork a child for one job (RQ's worker): read the monitored job
    names now, through the connection ``using``, unless they are cached.

    The child inherits them. For a job that no monitor watches it then queues no check,
    which would cost it a thread and a connection of their own, and a wait before it
    ends (``finish()``).
    """
    if monitored.known() is None:
        monitored.refresh(using)


def connect() -> None:
    """Connect the receivers (``JobStatusConfig.ready()``)."""
    job_status_changed.connect(
        on_job_status_changed, sender=JobRun, dispatch_uid="django_jobstatus.health"
    )
    for signal in (post_save, post_delete):
        signal.connect(
            monitored.clear,
            sender=JobMonitor,
            dispatch_uid=f"django_jobstatus.health.{signal is post_save}",
        )
    pre_delete.connect(
        on_monitor_deleted,
        sender=JobMonitor,
        dispatch_uid="django_jobstatus.health.deleted",
    )


def on_monitor_deleted(*, instance: JobMonitor, using: str, **kwargs: Any) -> None:
    """A monitor deleted: the ends of its incidents still to be said go out once the
    delete is committed, since its incidents go with it and nothing could send them later.

    - The end of an incident queued and not gone out (a channel refused it, or it waits
      in an outbox) goes out as it was. The delete takes it over (``_take()``), so the
      process that queued it leaves it: without that, it was never sent at all.
    - An announced incident still open ends as a disabled monitor's does ("no longer
      monitored").

    Nothing records these alerts: each is tried once (``_send_once()``), never again by
    a later check, and no ``monitor_state_changed`` is sent. An end whose delivery was
    already under way as the delete began may go out twice, never zero times.
    """
    targets = _targets()
    if not targets:
        return
    now = timezone.now()
    incidents = JobMonitorIncident.objects.using(using).filter(monitor=instance)
    unsent = incidents.filter(
        _unsent("resolved"),
        resolve_alert_queued_at__isnull=False,
        resolved_at__gte=now - ALERT_RETRY_FOR,  # as resend() would still send it
    )
    alerts = [
        _resolution(incident, instance.job_name, _resolved_to(incident, instance), "")
        for incident in unsent.order_by("resolved_at", "pk")
        if _take(incidents, incident, "resolved", now)
    ]
    incident = incidents.filter(
        Q(open_alert_queued_at__isnull=False) | Q(open_alert_at__isnull=False),
        resolved_at__isnull=True,
    ).first()
    if incident is not None:
        incident.resolved_at = now
        incident.detail = "\n".join(
            filter(None, [_("The monitor was deleted."), incident.detail])
        )
        alerts.append(
            _resolution(incident, instance.job_name, MonitorState.DISABLED, "")
        )
    for alert in alerts:
        transaction.on_commit(
            functools.partial(
                outbox.put,
                _send_once,
                alert,
                targets,
                dropped=functools.partial(_not_sent, alert, again=False),
            ),
            using=using,
        )


# Alerts.


@dataclasses.dataclass(frozen=True)
class Alert:
    """One message about an incident: ``opened`` (in ``state``) or ``resolved`` (``previous`` ended)."""

    event: str  # "opened" or "resolved"
    job_name: str
    state: str  # the monitor's new state
    previous: str  # the state it left
    detail: str
    opened_at: datetime
    resolved_at: datetime | None
    url: str

    @property
    def subject(self) -> str:
        values = {
            # One line: a header holds no line break (Django refuses one, and the alert was lost).
            "job": " ".join(self.job_name.split()),
            "state": MonitorState(self.state).label,
            "previous": MonitorState(self.previous).label,
        }
        # A move between unhealthy states, said by the new incident's opening, or by the
        # old one's end when the rate limit dropped that opening (_stamp_alerts()).
        if (
            self.previous in MonitorState.UNHEALTHY
            and self.state in MonitorState.UNHEALTHY
        ):
            return _("[jobstatus] %(job)s is %(state)s (was %(previous)s)") % values
        if self.event == "opened":
            return _("[jobstatus] %(job)s is %(state)s") % values
        if self.state == MonitorState.DISABLED:
            return (
                _("[jobstatus] %(job)s is no longer monitored (was %(previous)s)")
                % values
            )
        return _("[jobstatus] %(job)s is healthy again (was %(previous)s)") % values

    @property
    def text(self) -> str:
        lines = [self.subject, ""]
        if self.detail:
            lines.append(self.detail)
        lines.append(_("Since: %(when)s") % {"when": _when(self.opened_at)})
        if self.resolved_at is not None:
            lines.append(_("Resolved: %(when)s") % {"when": _when(self.resolved_at)})
        if self.url:
            lines.append(self.url)
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "job_name": self.job_name,
            "state": self.state,
            "previous": self.previous,
            "detail": self.detail,
            "opened_at": self.opened_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "url": self.url,
            "text": self.text,
        }

    def slack_payload(self) -> dict[str, Any]:
        link = f" <{self.url}|{_slack_text(_('open'))}>" if self.url else ""
        detail = f"\n{_slack_text(self.detail)}" if self.detail else ""
        return {"text": f"*{_slack_text(self.subject)}*{link}{detail}"}


def _slack_text(text: str) -> str:
    """``text`` as Slack shows it literally: Slack reads ``<!channel>`` as a mention and
    ``<url|label>`` as a link, and a job's error often quotes user input. Slack's own
    escapes, the only three it asks for."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _monitor_url(monitor: JobMonitor) -> str:
    try:
        path = monitor.get_absolute_url()
    except NoReverseMatch:
        return ""
    base = settings.ALERT_BASE_URL
    return f"{base.rstrip('/')}{path}" if base else path


def _alerts(change: Change) -> list[tuple[Alert, JobMonitorIncident]]:
    """The alerts queued for this change, each with its incident."""
    url = _monitor_url(change.monitor)
    name = change.monitor.job_name
    found = []
    resolved, opened = change.resolved, change.opened
    if resolved is not None and resolved.resolve_alert_queued_at is not None:
        found.append((_resolution(resolved, name, change.state, url), resolved))
    if opened is not None and opened.open_alert_queued_at is not None:
        found.append((_opening(opened, name, change.previous, url), opened))
    return found


def _opening(incident: JobMonitorIncident, name: str, previous: str, url: str) -> Alert:
    return Alert(
        "opened",
        name,
        incident.state,
        previous,
        incident.detail,
        incident.opened_at,
        None,
        url,
    )


def _resolution(incident: JobMonitorIncident, name: str, state: str, url: str) -> Alert:
    return Alert(
        "resolved",
        name,
        state,
        incident.state,
        incident.detail,
        incident.opened_at,
        incident.resolved_at,
        url,
    )


def _targets() -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    if settings.ALERT_EMAILS:
        targets.append({"email": list(settings.ALERT_EMAILS)})
    for hook in settings.ALERT_WEBHOOKS:
        targets.append({"url": hook} if isinstance(hook, str) else dict(hook))
    return targets


def _send(
    alert: Alert,
    targets: list[dict[str, Any]],
    incident_pk: int,
    claim: datetime,
    db: str,
) -> None:
    """Deliver one alert to every target, each failure logged, and stamp it sent when one
    took it.

    ``claim`` is the queued stamp this process set. It is renewed first: when it changed
    meanwhile (a check queued the alert again, its claim being old, or it went out), when
    its incident is gone (its monitor's delete sent what was left to say), or when it is
    an opening whose incident's end went out (``_unsent()``), this process leaves the
    alert alone. When no target took it, its queued stamp stays, and a later
    check queues it again.
    """
    queued, sent, _ = _STAMPS[alert.event]
    unsent = JobMonitorIncident.objects.using(db).filter(
        pk=incident_pk, **{f"{sent}__isnull": True}
    )
    due = unsent.filter(_unsent(alert.event), **{queued: claim})
    if not due.update(**{queued: timezone.now()}):
        return
    if _deliver_each(alert, targets):
        unsent.update(**{sent: timezone.now()})
    else:
        logger.warning(
            "django-jobstatus: the %s alert of %r went to no target; check_jobstatus sends it again.",
            alert.event,
            alert.job_name,
        )


def _deliver_each(alert: Alert, targets: list[dict[str, Any]]) -> bool:
    """Deliver ``alert`` to every target, each failure logged; whether one took it."""
    delivered = False
    for target in targets:
        try:
            _deliver(target, alert)
        except Exception:
            logger.exception(
                "django-jobstatus: _deliver failed: the %s alert of %r by %s",
                alert.event,
                alert.job_name,
                "email" if "email" in target else "webhook",
            )
        else:
            delivered = True
    return delivered


def _send_once(alert: Alert, targets: list[dict[str, Any]]) -> None:
    """Deliver an alert that nothing records (its monitor was deleted): tried once, and
    when no target took it, the log says it is lost rather than that a check sends it."""
    if not _deliver_each(alert, targets):
        logger.warning(
            "django-jobstatus: the %s alert of %r went to no target; its monitor was deleted, so it is not sent again.",
            alert.event,
            alert.job_name,
        )


def _not_sent(alert: Alert, *, again: bool = True) -> None:
    """An alert dropped because the process is ending: logged (a later check sends it,
    unless its incident is gone: ``again=False``)."""
    logger.warning(
        "django-jobstatus: the %s alert of %r was not sent: the process ended first%s",
        alert.event,
        alert.job_name,
        "; check_jobstatus sends it again." if again else ".",
    )


# Alerts queued and not sent: queued again by a check.


def _unsent(event: str) -> Q:
    """The incidents whose ``event`` alert is still to go: it has not gone out, nor, for an
    opening, has the incident's end (sent after it, the opening would be the last word,
    saying a state the monitor has left)."""
    found = Q(**{f"{_STAMPS[event][1]}__isnull": True})
    if event == "opened":
        found &= Q(resolve_alert_at__isnull=True)
    return found


def _claim_lease() -> timedelta:
    """How long an alert's queued stamp keeps it to its process: longer than one delivery
    to every target takes (the stamp is renewed just before), and at least a minute."""
    return timedelta(seconds=max(60, settings.ALERT_TIMEOUT * (len(_targets()) + 1)))


def resend(*, now: datetime | None = None, using: str | None = None) -> int:
    """Queue again each alert that was queued and has not gone out, once its queued stamp
    is older than ``_claim_lease()``, for ``ALERT_RETRY_FOR`` after its incident opened
    (resolved): openings first, and never an opening once its incident's end went out
    (``_unsent()``). Each is taken by a compare-and-set of that stamp, so two
    checks never both queue it, and queued once committed. Two queries, then at most two an alert queued again.
    Returns how many were queued.
    """
    if not _targets():
        return 0
    db = using or settings.DATABASE
    now = now or timezone.now()
    taken, since = now - _claim_lease(), now - ALERT_RETRY_FOR
    incidents = JobMonitorIncident.objects.using(db)
    taken_alerts = []
    for event, (queued, _sent, moment) in _STAMPS.items():
        pending = incidents.filter(
            _unsent(event), **{f"{queued}__lte": taken, f"{moment}__gte": since}
        )
        for incident in pending.select_related("monitor").order_by(moment, "pk"):
            if _take(incidents, incident, event, now):
                taken_alerts.append((_again(incident, event, db), incident.pk))
    # Queued once committed, and once all are taken (this thread writes no more).
    for alert, pk in taken_alerts:
        transaction.on_commit(functools.partial(_queue, alert, pk, now, db), using=db)
    return len(taken_alerts)


def _take(
    incidents: QuerySet[JobMonitorIncident],
    incident: JobMonitorIncident,
    event: str,
    now: datetime,
) -> bool:
    """Take ``incident``'s ``event`` alert to send it: a compare-and-set of its queued
    stamp as read, so that of two processes one does, and none once it went out. The
    process that held it sees its claim changed (``_send()``) and leaves it."""
    queued = _STAMPS[event][0]
    claim = incidents.filter(
        _unsent(event), pk=incident.pk, **{queued: getattr(incident, queued)}
    )
    return bool(claim.update(**{queued: now}))


def _again(incident: JobMonitorIncident, event: str, db: str) -> Alert:
    """The alert of ``incident``'s ``event``, rebuilt from the stored history.

    The state before an opening is that of the incident that ended as it opened (else
    healthy); the state a resolution moved to, ``_resolved_to()``.
    """
    monitor = incident.monitor
    url = _monitor_url(monitor)
    if event == "resolved":
        state = _resolved_to(incident, monitor)
        return _resolution(incident, monitor.job_name, state, url)
    before = (
        JobMonitorIncident.objects.using(db)
        .filter(monitor=monitor, resolved_at=incident.opened_at)
        .values_list("state", flat=True)
        .first()
    )
    return _opening(incident, monitor.job_name, before or MonitorState.HEALTHY, url)


def _resolved_to(incident: JobMonitorIncident, monitor: JobMonitor) -> str:
    """The state ``incident``'s end moved ``monitor`` to: stored with it (an incident
    resolved before 0024 has none: the monitor's while it has not changed since, else
    healthy)."""
    if incident.resolved_to:
        return incident.resolved_to
    if monitor.state_changed_at == incident.resolved_at:
        return MonitorState(monitor.state)
    return MonitorState.HEALTHY


def _deliver(target: dict[str, Any], alert: Alert) -> None:
    if "email" in target:
        send_mail(alert.subject, alert.text, None, target["email"])
        return
    url = target["url"]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"ALERT_WEBHOOKS: {url!r} is not an http(s) URL")
    body = alert.slack_payload() if target.get("format") == "slack" else alert.payload()
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "django-jobstatus",
            **target.get("headers", {}),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.ALERT_TIMEOUT) as response:  # noqa: S310
        response.read(1024)


class _Outbox:
    """One daemon thread that runs queued calls in order: alert deliveries and monitor checks.

    A call that fails is logged; the thread's database connections are closed after each.
    The thread is started on first use (again after a fork). A daemon thread dies with its
    process, so ``close()`` is called before the process ends: the calls get a while to
    finish, then those left are dropped, each running its ``dropped`` (an alert's logs
    it; a later check sends it).
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[_Call] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closing = False
        self._current: _Call | None = None
        self._dropped = 0

    def put(
        self,
        function: Callable[..., Any],
        *args: Any,
        dropped: Callable[[], Any] | None = None,
    ) -> None:
        with self._lock:
            if (
                self._thread is None
                or not self._thread.is_alive()
                or self._pid != os.getpid()
            ):
                if self._pid != os.getpid():
                    self._queue = queue.Queue()
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._work, name="jobstatus-health", daemon=True
                )
                try:
                    self._thread.start()
                except RuntimeError:
                    # No thread can start once the interpreter shuts down (Python 3.12),
                    # where a thread that outlives the main one may still end its runs:
                    # the call runs here, rather than raising into that job.
                    self._thread = None
            if self._thread is not None:
                self._queue.put(_Call(function, args, dropped))
                return
        self._run_here(function, *args)

    @staticmethod
    def _run_here(function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            logger.exception(
                "django-jobstatus: %s failed", getattr(function, "__name__", "call")
            )

    def _work(self) -> None:
        jobs = self._queue
        while True:
            call = jobs.get()
            self._current = call
            try:
                if self._closing:
                    self._drop(call)
                else:
                    call.function(*call.args)
            except Exception:
                logger.exception(
                    "django-jobstatus: %s failed",
                    getattr(call.function, "__name__", "call"),
                )
            finally:
                self._current = None
                connections.close_all()
                jobs.task_done()

    def _drop(self, call: _Call) -> None:
        if call.dropped is not None:
            with self._lock:
                self._dropped += 1
            call.dropped()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queued calls; False when some are left."""
        deadline = time.monotonic() + timeout
        jobs = self._queue
        with jobs.all_tasks_done:
            while jobs.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # threading's waits stop at TIMEOUT_MAX (some 292 years), below what
                # --wait accepts: past it they raise OverflowError.
                jobs.all_tasks_done.wait(min(remaining, threading.TIMEOUT_MAX))
        return True

    def close(self, timeout: float, grace: float) -> int:
        """Before the process ends: wait up to ``timeout`` seconds for the queued calls,
        then drop those not started once the one under way has ended (up to ``grace``
        seconds more; past that, it is dropped too). Returns how many calls that had a
        ``dropped`` were dropped.
        """
        if self._pid != os.getpid() or self.join(timeout):
            return 0  # nothing queued in this process, or all of it done
        with self._lock:
            self._closing = True
            before = self._dropped
        if self.join(grace):
            self._closing = False  # each call ended or was dropped
        else:
            # The call under way is stuck: drop it and the rest from this thread, and
            # stay closed (what it may still queue is dropped too).
            current = self._current
            if current is not None:
                self._drop(current)
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._drop(call)
                self._queue.task_done()
        return self._dropped - before


@dataclasses.dataclass(frozen=True)
class _Call:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    dropped: Callable[[], Any] | None = None


outbox = _Outbox()


def finish(wait: float | None = None) -> int:
    """Before this process ends: its queued checks and alerts get ``wait`` seconds (twice
    ALERT_TIMEOUT by default), then the alerts not sent are dropped: their incidents do
    not read as announced, and a later check sends them. Returns how many were dropped.

    Run at the exit of every process (``atexit``); by ``check_jobstatus`` with its
    ``--wait``; and where a process ends without atexit: an RQ work horse, a Celery
    pool process (``worker_process_shutdown``).
    """
    if wait is None:
        wait = settings.ALERT_TIMEOUT * 2
    return outbox.close(wait, grace=settings.ALERT_TIMEOUT * (len(_targets()) + 1))


atexit.register(finish)
