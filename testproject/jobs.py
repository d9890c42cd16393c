"""Demo jobs: what a project's own jobs look like with django-jobstatus."""

from __future__ import annotations

import logging
import random
import time

from django_jobstatus import current_job, track, tracked

# Records of this logger land in the running job's log too (LOGGING in settings.py).
logger = logging.getLogger(__name__)

BOOKS = [
    "Dune",
    "Emma",
    "Ulysses",
    "Beloved",
    "Middlemarch",
    "Persuasion",
    "Solaris",
    "Kindred",
]


def import_books(count: int = 200, *, delay: float = 0.02) -> dict[str, int]:
    """An import with steps and progress: download, parse, save."""
    with track(
        "library.import_books",
        params={"count": count, "source": "https://example.org/books.csv"},
        source="command",
    ) as job:
        job.step("download", total=count)
        for _ in range(count):
            time.sleep(delay / 4)
            job.advance()
        job.step("parse", total=count)
        rows = []
        for n in range(count):
            rows.append(f"{random.choice(BOOKS)} #{n}")
            job.advance()
        logger.info("Parsed %d rows", len(rows))
        job.step("save", total=count)
        skipped = 0
        for n, title in enumerate(rows):
            time.sleep(delay)
            if n % 97 == 96:
                skipped += 1
                job.warning("Skipped %s: no ISBN", title)
            job.advance()
            job.check_kill()
        job.message(f"Imported {count - skipped} books")
        job.info("Imported %d books, skipped %d", count - skipped, skipped)
        job.result = {"imported": count - skipped, "skipped": skipped}
    return job.result


@tracked("reports.build_report", source="schedule")
def build_report(month: str = "2026-10", *, fail_rate: float = 0.3) -> dict[str, str]:
    """A report that sometimes fails, the way real ones do."""
    job = current_job()
    assert job is not None  # noqa: S101 (tracked() guarantees it)
    job.progress(0, total=3)
    for section in ("sales", "returns", "stock"):
        time.sleep(0.05)
        job.message(f"Building {section}")
        job.advance()
    if random.random() < fail_rate:
        job.error("The warehouse API answered 503 for %s", month)
        raise ConnectionError(
            f"warehouse API unavailable while building the {month} report"
        )
    return {"month": month, "url": f"/reports/{month}.pdf"}


def long_cleanup(seconds: float = 600, *, subject: str = "") -> None:
    """A long job that honours kill requests (check_kill) and beats while it waits."""
    with track(
        "maintenance.long_cleanup", params={"seconds": seconds}, subject=subject
    ) as job:
        steps = max(int(seconds * 4), 1)
        job.progress(0, total=steps)
        for _ in range(steps):
            time.sleep(0.25)
            job.advance()
            job.check_kill()
