"""bench/bench_api.py's list of URLs works on a small history too."""

from __future__ import annotations

from typing import Any


def test_bench_urls_on_a_history_smaller_than_its_offset(make_run: Any) -> None:
    # --runs 2000 seeds 40 runs of bench.job_3: the URL list took the 501st (IndexError).
    from bench.bench_api import urls

    runs = [make_run("bench.job_3", status="succeeded") for _ in range(3)]
    make_run("bench.job_8", status="succeeded", parent=runs[0])

    listed = dict(urls())

    picked = listed["detail"].rstrip("/").rsplit("/", 1)[-1]
    assert picked in {str(run.pk) for run in runs}
    assert listed["q (run id)"].endswith(f"?q={picked}")
