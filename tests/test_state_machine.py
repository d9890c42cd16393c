"""Property tests of the state machine: any sequence of moves by several actors.

Three actors hold their own copy of one run, each loaded at some point and acted on
while others move the run on: the way concurrent workers, reapers and admins write.
After every step the database must agree with an oracle written from the documented
legal moves (docs/tracking.md, not the code; plus the rule that a move applies only to
the status and attempt the actor saw, see ``Oracle.allows``), and keep the documented
invariants: an illegal move raises InvalidTransition and writes nothing; nothing
leaves a terminal state; first-entry stamps stay; ``attempt`` only grows and
``attempts`` holds one entry per earlier attempt; ``finished_at`` is set exactly when
the run is finished; and ``job_status_changed`` fires once per committed transition.

The machine runs on a transactional database (autocommit, as in production), so that
``on_commit`` callbacks run when each write commits; every example starts from an
empty table.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from django_jobstatus.exceptions import InvalidTransition
from django_jobstatus.models import JobLog, JobRun, Status
from django_jobstatus.signals import job_status_changed

# The oracle: the "Legal moves" of docs/tracking.md, copied by hand from the page (not from
# models.py), so a change of the code alone cannot change what the test expects.
QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, KILLED, LOST = "succeeded", "failed", "killed", "lost"
TERMINAL = frozenset({SUCCEEDED, FAILED, KILLED, LOST})
ACTIVE = frozenset({QUEUED, RUNNING, RETRYING})
LEGAL = {
    QUEUED: {RUNNING, KILLED},
    RUNNING: {SUCCEEDED, FAILED, RETRYING, KILLED, LOST, RUNNING},
    RETRYING: {QUEUED, RUNNING, KILLED},
    SUCCEEDED: set(),
    FAILED: set(),
    KILLED: set(),
    LOST: set(),
}

ACTORS = 3  # copies of the run, each loaded at its own time
SILENCE = timedelta(hours=1)  # how far back a silent worker's last heartbeat is put
REAP_TIMEOUT = 600  # seconds: a silent run is older than this, a beating one is not

actor = st.integers(min_value=0, max_value=ACTORS - 1)
# True two times in three: reloading before a move, and retrying after a failure, keep
# more runs going through retries instead of stopping at their first refused move.
often = st.sampled_from([True, True, False])


def row(pk: Any) -> dict[str, Any]:
    return JobRun.objects.filter(pk=pk).values().get()


@dataclasses.dataclass
class Oracle:
    """What the database should hold, from the documented legal moves alone."""

    status: str
    attempt: int = 1
    kill_requested: bool = False
    silent: bool = False  # the worker stopped beating: reap() must take it if running

    def allows(self, target: str, *, copy_status: str, copy_attempt: int) -> bool:
        """Whether an actor whose copy shows ``copy_status`` at ``copy_attempt`` may move the run to ``target`` now.

        The legal-moves table decides from the run's status. On top of it a move applies
        only to the state the actor saw (status and attempt):
        a worker finishing attempt 1 must not end attempt 2 that a restart opened
        meanwhile, a restart or retry writes the actor's attempt into the history, and
        the signal's ``previous`` is the status the actor saw. So running -> running is
        only ever a restart, by an actor that saw the run running.
        """
        return (
            target in LEGAL[self.status]
            and copy_status == self.status
            and copy_attempt == self.attempt
        )


class RunMachine(RuleBasedStateMachine):
    """One run, ACTORS stale copies of it, every public move and the bulk writes."""

    def __init__(self) -> None:
        super().__init__()
        JobLog.objects.all().delete()
        JobRun.objects.all().delete()
        self.signals: list[dict[str, Any]] = []
        self.done: dict[Any, dict[str, Any]] = {}  # finished runs, as they must stay
        job_status_changed.connect(
            self._received, sender=JobRun, dispatch_uid="test_state_machine"
        )

    def _received(self, sender: Any, **kwargs: Any) -> None:
        self.signals.append(kwargs)

    def teardown(self) -> None:
        job_status_changed.disconnect(sender=JobRun, dispatch_uid="test_state_machine")

    # Set up: a queued run (enqueue) or one started at once (start).

    @initialize(queued=st.booleans())
    def create(self, queued: bool) -> None:
        """The first run."""
        self._begin(queued=queued)

    @precondition(lambda self: self.oracle.status in TERMINAL)
    @rule(queued=st.booleans())
    def next_run(self, queued: bool) -> None:
        """The run is over (and stays so): the actors move on to a new run of the job."""
        self._begin(queued=queued)

    def _begin(self, *, queued: bool) -> None:
        if hasattr(self, "pk"):
            self.done[self.pk] = row(self.pk)
        run = (
            JobRun.objects.enqueue("fuzz.job")
            if queued
            else JobRun.objects.start("fuzz.job")
        )
        self.pk = run.pk
        self.oracle = Oracle(status=QUEUED if queued else RUNNING)
        self.actors = [JobRun.objects.get(pk=self.pk) for _ in range(ACTORS)]
        self.first = row(self.pk)
        self.last = self.first

    # Actors.

    @rule(who=actor)
    def reload(self, who: int) -> None:
        """An actor loads the run afresh."""
        self.actors[who] = JobRun.objects.get(pk=self.pk)

    def _move(
        self,
        who: int,
        target: str,
        call: Any,
        *,
        fresh: bool,
        new_attempt: bool = False,
    ) -> None:
        """Actor ``who`` calls ``call(copy)``; ``fresh``: it reloads the run first."""
        if fresh:
            self.reload(who)
        copy = self.actors[who]
        before = row(self.pk)
        legal = self.oracle.allows(
            target, copy_status=copy.status, copy_attempt=copy.attempt
        )
        sent = len(self.signals)
        try:
            call(copy)
        except InvalidTransition:
            assert not legal, f"{before['status']} -> {target} was refused"
            assert row(self.pk) == before, "a refused move wrote"
            assert len(self.signals) == sent, "a refused move sent a signal"
            return
        assert legal, f"{before['status']} -> {target} was allowed"
        after = row(self.pk)
        self._check_move(before, after, target, new_attempt=new_attempt)
        assert len(self.signals) == sent + 1, "one signal per transition"
        signal = self.signals[-1]
        assert signal["status"] == target
        # The run as this move left it: a copy of the one that moved.
        assert signal["run"].pk == copy.pk
        assert (signal["run"].status, signal["run"].attempt) == (target, copy.attempt)
        assert signal["previous"] == before["status"], (
            f"signal says previous={signal['previous']!r}, the run was {before['status']!r}"
        )
        assert copy.attempt == after["attempt"]
        assert copy.finished_at == after["finished_at"]
        self.oracle.status = target
        if new_attempt:
            self.oracle.attempt += 1
        if target == RUNNING:
            self.oracle.silent = False  # a start or restart beats

    def _check_move(
        self,
        before: dict[str, Any],
        after: dict[str, Any],
        target: str,
        *,
        new_attempt: bool,
    ) -> None:
        assert after["status"] == target
        if new_attempt:
            assert after["attempt"] == before["attempt"] + 1
            assert after["attempts"][:-1] == before["attempts"], "history rewritten"
            entry = after["attempts"][-1]
            assert entry["attempt"] == before["attempt"]
            recorded = entry["started_at"] and parse_datetime(entry["started_at"])
            assert recorded == before["started_at"], (
                f"attempt {before['attempt']} is recorded as started at {entry['started_at']!r};"
                f" it started at {before['started_at']!r}"
            )
        else:
            assert after["attempt"] == before["attempt"]
            assert after["attempts"] == before["attempts"]
            if before["started_at"] is not None:
                assert after["started_at"] == before["started_at"], "started_at moved"
        if target == RUNNING:
            assert after["started_at"] is not None
            assert after["heartbeat_at"] is not None
        if target == RETRYING:
            assert after["started_at"] is None  # the next attempt has not started
        if target == QUEUED:
            assert after["queued_at"] is not None
        for stamp in ("queued_at", "kill_requested_at"):
            if before[stamp] is not None:
                assert after[stamp] == before[stamp], f"{stamp} moved"

    @rule(who=actor, fresh=often)
    def mark_queued(self, who: int, fresh: bool = False) -> None:
        self._move(who, QUEUED, lambda run: run.mark_queued(), fresh=fresh)

    @rule(who=actor, fresh=often)
    def mark_running(self, who: int, fresh: bool = False) -> None:
        """A start, or a restart when the actor's copy shows the run running."""
        if fresh:
            self.reload(who)
        restart = self.actors[who].status == RUNNING
        self._move(
            who,
            RUNNING,
            lambda run: run.mark_running(worker=f"worker-{who}"),
            fresh=False,
            new_attempt=restart,
        )

    @rule(who=actor, result=st.none() | st.integers(), fresh=often)
    def mark_succeeded(self, who: int, result: int | None, fresh: bool = False) -> None:
        self._move(who, SUCCEEDED, lambda run: run.mark_succeeded(result), fresh=fresh)

    @rule(who=actor, retry=often, fresh=often)
    def mark_failed(self, who: int, retry: bool, fresh: bool = False) -> None:
        self._move(
            who,
            RETRYING if retry else FAILED,
            lambda run: run.mark_failed(ValueError(f"boom {who}"), retry=retry),
            fresh=fresh,
            new_attempt=retry,
        )

    @rule(who=actor, fresh=often)
    def mark_killed(self, who: int, fresh: bool = False) -> None:
        self._move(who, KILLED, lambda run: run.mark_killed(), fresh=fresh)

    @rule(who=actor, fresh=often)
    def mark_lost(self, who: int, fresh: bool = False) -> None:
        self._move(who, LOST, lambda run: run.mark_lost(), fresh=fresh)

    # Writes that are not transitions.

    def _request_kill(self, call: Any) -> None:
        before = row(self.pk)
        sent = len(self.signals)
        expected = self.oracle.status in ACTIVE and not self.oracle.kill_requested
        assert call() == expected
        after = row(self.pk)
        assert after["status"] == before["status"], "a kill request moved the run"
        if expected:
            assert before["kill_requested_at"] is None
            assert after["kill_requested_at"] is not None
            self.oracle.kill_requested = True
        else:
            assert after == before, "a refused kill request wrote"
        assert len(self.signals) == sent

    @rule(who=actor)
    def request_kill(self, who: int) -> None:
        copy = self.actors[who]
        self._request_kill(copy.request_kill)
        if self.oracle.kill_requested:
            assert JobRun.objects.get(pk=self.pk).kill_requested

    @rule()
    def request_kill_in_bulk(self) -> None:
        self._request_kill(
            lambda: bool(JobRun.objects.filter(pk=self.pk).request_kill())
        )

    @rule(who=actor)
    def heartbeat(self, who: int) -> None:
        self.actors[who].heartbeat()
        self.oracle.silent = False

    @rule()
    def worker_goes_silent(self) -> None:
        """The worker stops beating: its last heartbeat is far in the past."""
        JobRun.objects.filter(pk=self.pk).update(heartbeat_at=timezone.now() - SILENCE)
        self.oracle.silent = True

    @rule()
    def reap(self) -> None:
        before = row(self.pk)
        sent = len(self.signals)
        expected = self.oracle.status == RUNNING and self.oracle.silent
        result = JobRun.objects.reap(timeout=REAP_TIMEOUT)
        assert (result.reaped, result.finished) == (int(expected), 0)
        after = row(self.pk)
        if expected:
            assert after["status"] == LOST
            assert after["finished_at"] is not None
            assert after["started_at"] == before["started_at"]
            assert len(self.signals) == sent + 1
            assert self.signals[-1]["status"] == LOST
            assert self.signals[-1]["previous"] == RUNNING
            assert JobLog.objects.filter(run_id=self.pk, level=30).exists()
            self.oracle.status = LOST
        else:
            assert after == before
            assert len(self.signals) == sent

    # After every step.

    @invariant()
    def database_agrees_with_the_oracle(self) -> None:
        if not hasattr(self, "pk"):
            return
        now = row(self.pk)
        last, self.last = self.last, now
        assert now["status"] == self.oracle.status
        assert now["attempt"] == self.oracle.attempt
        assert len(now["attempts"]) == now["attempt"] - 1
        assert [entry["attempt"] for entry in now["attempts"]] == list(
            range(1, now["attempt"])
        )
        assert (now["finished_at"] is not None) == (now["status"] in TERMINAL)
        assert (now["kill_requested_at"] is not None) == self.oracle.kill_requested
        assert now["created_at"] == self.first["created_at"]
        if now["status"] != QUEUED:
            assert now["started_at"] is not None or now["status"] in (
                RETRYING,
                KILLED,
            ), f"{now['status']} run without started_at"
        # Nothing leaves a terminal state, and a finished run's stamps stay.
        if last["status"] in TERMINAL:
            assert now["status"] == last["status"]
            assert now["finished_at"] == last["finished_at"]
            assert now["started_at"] == last["started_at"]
            assert now["attempts"] == last["attempts"]
        assert now["attempt"] >= last["attempt"]
        for pk, finished in self.done.items():
            assert row(pk) == finished, "a finished run changed"


SETTINGS = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    database=None,  # no .hypothesis/ example database in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.django_db(transaction=True)
def test_any_sequence_of_moves_keeps_the_invariants() -> None:
    run_state_machine_as_test(RunMachine, settings=SETTINGS)


def test_the_oracle_is_the_models_table() -> None:
    """The hand-written table above and Status.LEGAL_MOVES say the same."""
    assert set(Status.TERMINAL) == TERMINAL
    assert set(Status.ACTIVE) == ACTIVE
    assert {
        source: set(Status.LEGAL_MOVES.get(source, ())) for source in Status.values
    } == LEGAL


# The shortest failing sequences Hypothesis found before 285f72d, replayed as printed:
# an actor that loaded the run while queued acts after another actor started it.


def _replay(*steps: tuple[str, dict[str, Any]], queued: bool = True) -> RunMachine:
    """Run ``steps`` on a fresh RunMachine, checking the invariants after each; the machine."""
    state = RunMachine()
    try:
        state.create(queued=queued)
        state.database_agrees_with_the_oracle()
        for name, arguments in steps:
            getattr(state, name)(**arguments)
            state.database_agrees_with_the_oracle()
    finally:
        state.teardown()
    return state


@pytest.mark.django_db(transaction=True)
def test_signal_previous_is_the_status_the_run_had() -> None:
    """Was: the signal said previous="queued" for a run that was running."""
    _replay(("mark_running", {"who": 0}), ("mark_failed", {"retry": False, "who": 1}))


@pytest.mark.django_db(transaction=True)
def test_retry_records_when_the_attempt_started() -> None:
    """Was: the retry recorded attempt 1 in the history as never started."""
    _replay(("mark_running", {"who": 0}), ("mark_failed", {"retry": True, "who": 1}))


@pytest.mark.django_db(transaction=True)
def test_one_walk_through_every_kind_of_move() -> None:
    """Each legal move the random walks reach only now and then, once, by fresh actors."""
    fresh = {"fresh": True}
    state = _replay(
        ("mark_running", {"who": 0, **fresh}),  # queued -> running
        ("mark_failed", {"who": 1, "retry": True, **fresh}),  # -> retrying, attempt 2
        ("mark_running", {"who": 2, **fresh}),  # retrying -> running
        ("mark_running", {"who": 0, **fresh}),  # running -> running, attempt 3
        ("mark_failed", {"who": 1, "retry": True, **fresh}),  # attempt 4
        ("mark_queued", {"who": 2, **fresh}),  # retrying -> queued
        ("request_kill", {"who": 0}),
        ("mark_running", {"who": 1, **fresh}),  # a kill request does not stop a start
        ("worker_goes_silent", {}),
        ("reap", {}),  # running -> lost
        ("next_run", {"queued": False}),
        ("mark_failed", {"who": 0, "retry": True, **fresh}),
        ("mark_killed", {"who": 1, **fresh}),  # retrying -> killed
    )
    assert state.oracle.status == KILLED
    first, second = JobRun.objects.order_by("created_at", "id")
    assert (first.status, first.attempt, second.status, second.attempt) == (
        LOST,
        4,
        KILLED,
        2,
    )
    assert [entry["status"] for entry in first.attempts] == [
        RETRYING,
        "restarted",
        RETRYING,
    ]
    assert first.kill_requested
