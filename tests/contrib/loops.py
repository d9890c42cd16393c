"""A job body every worker runs (Django tasks, Celery, RQ): the README's progress loop."""

from __future__ import annotations

import time


def count_slowly(n: int) -> int:
    """advance() for every item and no check_kill(): a kill must stop it at advance()."""
    from django_jobstatus import current_job

    job = current_job()
    assert job is not None, "current_job() is None inside the job"
    job.progress(0, total=n)
    for _ in range(n):
        time.sleep(0.01)
        job.advance()
    return n
