"""Smoke tests of the demo project (testproject/), which the suite does not otherwise use."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.waiting import wait_for

pytestmark = pytest.mark.engine_agnostic

ROOT = Path(__file__).resolve().parent.parent


def _env(db: Path) -> dict[str, str]:
    """The demo project's settings, on the SQLite file ``db``."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{db}",
    }


def _run(args: list[str], db: Path) -> subprocess.CompletedProcess[str]:
    """Python with ``args``, in the demo project's settings, on the SQLite file ``db``."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(db),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _manage(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return _run(["manage.py", *args], db)


@pytest.fixture
def demo_db(tmp_path: Path) -> Path:
    """A migrated demo database of the test's own (the tests count what is in it)."""
    db = tmp_path / "demo.sqlite3"
    migrate = _manage("migrate", "--noinput", db=db)
    assert migrate.returncode == 0, migrate.stderr
    return db


def test_check_passes(demo_db: Path):
    result = _manage("check", "--fail-level", "WARNING", db=demo_db)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_command_seeds_history_and_an_admin(demo_db: Path):
    result = _manage("jobstatus_demo", "--admin", "--runs", "300", db=demo_db)
    assert result.returncode == 0, result.stderr
    assert "Seeded 300 runs" in result.stdout
    assert "password: admin" in result.stdout
    again = _manage("jobstatus_demo", db=demo_db)
    # 296 finished + 1 stuck + 3 queued, + 5 for the monitors (1 late, 3 failed, 1 healthy)
    assert "already has 305 runs" in again.stdout


def test_demo_seeds_exactly_the_runs_asked(demo_db: Path):
    result = _manage("jobstatus_demo", "--runs", "0", db=demo_db)
    assert result.returncode == 0, result.stderr
    assert "Seeded 0 runs" in result.stdout
    count = _python(
        "from django_jobstatus.models import JobRun; print(JobRun.objects.count())",
        demo_db,
    )
    assert count.stdout.split()[-1] == "0"
    _manage("jobstatus_demo", "--runs", "2", "--no-monitors", db=demo_db)
    count = _python(
        "from django_jobstatus.models import JobRun; print(JobRun.objects.count())",
        demo_db,
    )
    assert count.stdout.split()[-1] == "2"


def test_demo_without_redis_has_no_broken_link_nor_a_button_that_can_only_fail(
    demo_db: Path,
):
    """Without Redis the demo shows what runs without it: no Django-RQ link, Retry only where it works."""
    _manage("jobstatus_demo", "--admin", "--runs", "200", db=demo_db)
    script = (
        "import os\n"
        "from django.test import Client\n"
        "from django_jobstatus import contrib\n"
        "from django_jobstatus.models import JobRun\n"
        "c = Client(); assert c.login(username='admin', password='admin')\n"
        "index = c.get('/admin/').content.decode()\n"
        "print('rq link', 'django_rq' in index or '/admin/django-rq' in index)\n"
        "for source in ('celery', 'rq', 'django_tasks'):\n"
        "    for run in JobRun.objects.filter(source=source).finished()[:20]:\n"
        "        page = c.get(f'/admin/django_jobstatus/jobrun/{run.pk}/change/').content.decode()\n"
        "        if '/retry/' not in page: continue\n"
        "        r = c.post(f'/admin/django_jobstatus/jobrun/{run.pk}/retry/', follow=True)\n"
        "        said = r.content.decode()\n"
        "        print('retry', source, r.status_code, 'Enqueued the job again.' in said)\n"
        "        assert 'Enqueued the job again.' in said, (source, said[-3000:])\n"
        "print('retryable', sorted(contrib.sources()))\n"
        "print('unfingerprinted', JobRun.objects.failed().filter(error_fingerprint='').count())\n"
    )
    result = _python(script, demo_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rq link False" in result.stdout
    if "'django_tasks'" in result.stdout.split("retryable", 1)[1].splitlines()[0]:
        assert "retry django_tasks 200 True" in result.stdout
    # Without a tasks framework (the core suite) no run offers a Retry at all.
    assert "retry celery" not in result.stdout and "retry rq" not in result.stdout
    # The failures view groups the seeded failures by cause.
    assert "unfingerprinted 0" in result.stdout


def _python(script: str, db: Path) -> subprocess.CompletedProcess[str]:
    return _run(["-c", "import django; django.setup()\n" + script], db)


def test_demo_import_records_its_steps_and_its_logger_lines(demo_db: Path):
    script = (
        "from testproject.jobs import import_books\n"
        "from django_jobstatus.models import JobRun\n"
        "result = import_books(100, delay=0)\n"
        "run = JobRun.objects.latest_for('library.import_books')\n"
        "print(run.status, run.step, run.progress_current, run.progress_total, result)\n"
        "print(sorted(run.logs.values_list('message', flat=True)))\n"
    )
    result = _python(script, demo_db)
    assert result.returncode == 0, result.stdout + result.stderr
    status_line, logs_line = result.stdout.splitlines()[-2:]
    assert status_line.startswith("succeeded save 100 100 {'imported': 99")
    assert "'Parsed 100 rows'" in logs_line  # through LOGGING's JobLogHandler
    assert "'Imported 99 books, skipped 1'" in logs_line


def test_demo_pages_render(demo_db: Path):
    script = (
        "from django.test import Client\n"
        "from django.conf import settings\n"
        "c = Client(); assert c.login(username='admin', password='admin')\n"
        "urls = ['/admin/', '/admin/django_jobstatus/jobrun/', '/admin/django_jobstatus/jobrun/dashboard/']\n"
        "if settings.HAS_API:\n"
        "    urls += ['/api/jobstatus/runs/', '/api/jobstatus/runs/stats/', '/api/schema/', '/api/docs/']\n"
        "for url in urls:\n"
        "    r = c.get(url); print(url, r.status_code); assert r.status_code == 200, (url, r.status_code)\n"
    )
    _manage("jobstatus_demo", "--admin", "--runs", "50", db=demo_db)
    result = _python(script, demo_db)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_health_panel_shows_a_late_a_failing_and_a_slow_job(demo_db: Path):
    script = (
        "import re\n"
        "from django.test import Client\n"
        "c = Client(); assert c.login(username='admin', password='admin')\n"
        "html = c.get('/admin/django_jobstatus/jobrun/dashboard/').content.decode()\n"
        'rows = re.findall(r\'<tr class="jobstatus-health-(\\w+)" data-job="([^"]+)"\', html)\n'
        "print([(name, state) for state, name in rows])\n"
        "print(html.index('id=\"jobstatus-health\"') < html.index('jobstatus-tabs'))\n"
    )
    seeded = _manage("jobstatus_demo", "--admin", "--runs", "50", db=demo_db)
    assert "Created 4 job monitors" in seeded.stdout, seeded.stderr
    result = _python(script, demo_db)
    assert result.returncode == 0, result.stdout + result.stderr
    rows, first = result.stdout.splitlines()[-2:]
    assert rows == str(
        [
            ("billing.charge_subscriptions", "failing"),
            ("exports.nightly_export", "late"),
            ("search.reindex", "slow"),
        ]
    )
    assert first == "True"  # the panel is at the top


def test_demo_says_how_many_runs_the_monitors_add(demo_db: Path):
    """``--runs N`` seeds N runs; the monitors (on by default) add theirs, and say how many."""
    count = "from django_jobstatus.models import JobRun; print(JobRun.objects.count())"
    result = _manage("jobstatus_demo", "--runs", "10", db=demo_db)
    assert result.returncode == 0, result.stderr
    assert "Seeded 10 runs" in result.stdout
    # 1 late export, 3 failed charges, 1 healthy import (the slow reindex is seeded).
    assert "Created 4 job monitors and 5 runs for them" in result.stdout
    assert _python(count, demo_db).stdout.split()[-1] == "15"
    again = _manage("jobstatus_demo", "--reset", "--runs", "2", db=demo_db)
    # Under 4 runs none is the stuck reindex: the slow monitor gets a run of its own.
    assert "Created 4 job monitors and 6 runs for them" in again.stdout, again.stderr
    assert _python(count, demo_db).stdout.split()[-1] == "8"
    helped = _manage("help", "jobstatus_demo", db=demo_db)
    assert "plus the 5 runs" in " ".join(helped.stdout.split())
    docs = " ".join((ROOT / "docs" / "getting-started.md").read_text().split())
    assert "plus the 5 runs the four monitors need" in docs
    assert "--no-monitors" in docs


def test_demo_reset_forgets_the_dashboard_figures_of_the_deleted_runs(demo_db: Path):
    """--reset deletes the hourly roll-ups and their cached sums with the runs."""
    script = (
        "import json\n"
        "from django.core.management import call_command\n"
        "from django.test import Client\n"
        "from django_jobstatus.models import JobRunHour\n"
        "call_command('jobstatus_demo', '--admin', '--runs', '300')\n"
        "c = Client(); assert c.login(username='admin', password='admin')\n"
        "def total():\n"
        "    r = c.get('/admin/django_jobstatus/jobrun/dashboard/data/?window=7d')\n"
        "    return json.loads(r.content)['total']\n"
        "print('before', total() > 0, JobRunHour.objects.exists())\n"
        "call_command('jobstatus_demo', '--reset', '--runs', '0')\n"
        "print('after', JobRunHour.objects.count(), total())\n"
    )
    result = _python(script, demo_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "before True True" in result.stdout  # the week was rolled up and cached
    assert "after 0 0" in result.stdout


def _live(db: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``jobstatus_demo --live`` on ``db`` (seeded with 5 runs), its output in ``log``."""
    seeded = _manage("jobstatus_demo", "--runs", "5", "--no-monitors", db=db)
    assert seeded.returncode == 0, seeded.stderr
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "jobstatus_demo", "--live", *args],
            cwd=ROOT,
            env=_env(db),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _live_runs(db: Path) -> list[tuple[str, str]]:
    """(job name, status) of the runs the live demo made (the seeded ones left out)."""
    with sqlite3.connect(db) as con:
        return con.execute(
            "select job_name, status from django_jobstatus_jobrun where job_name in "
            "('maintenance.long_cleanup', 'library.import_books') order by job_name"
        ).fetchall()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_live_demo_stops_its_runs_when_interrupted(
    demo_db: Path, tmp_path: Path, signum: signal.Signals
):
    """Ctrl-C (SIGINT), or the SIGTERM of `make demo`'s trap: the live runs end killed."""
    log = tmp_path / "live.log"
    proc = _live(demo_db, "--for", "600", log=log)
    try:
        wait_for(
            lambda: (
                [status for _name, status in _live_runs(demo_db)]
                == ["running", "running"]
            ),
            timeout=60,
            what="the long cleanup and the import to run",
            process=proc,
            log=log,
        )
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert _live_runs(demo_db) == [
        ("library.import_books", "killed"),
        ("maintenance.long_cleanup", "killed"),
    ], log.read_text()


def test_live_demo_stops_its_runs_at_the_end_of_for_seconds(
    demo_db: Path, tmp_path: Path
):
    """`--for 2` ends the live jobs after 2 s, the 120 s cleanup too, and then the command."""
    log = tmp_path / "live.log"
    start = time.monotonic()
    proc = _live(demo_db, "--for", "2", log=log)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--for 2 still running after 30 s:\n{log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - start
    assert proc.returncode == 0, log.read_text()
    assert took < 20, took  # a few seconds to start Django and stop the jobs
    assert ("maintenance.long_cleanup", "killed") in _live_runs(demo_db)
    assert "running" not in {status for _name, status in _live_runs(demo_db)}
