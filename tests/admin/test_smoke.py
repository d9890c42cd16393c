from __future__ import annotations

from django.urls import reverse


def test_pages_render(admin_client, make_run):
    run = make_run(
        "a.job", progress_current=3, progress_total=10, params={"password": "x"}
    )
    run.log(20, "hello")
    for url in [
        reverse("admin:django_jobstatus_jobrun_changelist"),
        reverse("admin:django_jobstatus_jobrun_change", args=[run.pk]),
        reverse("admin:django_jobstatus_joblog_changelist"),
        reverse("admin:django_jobstatus_jobrun_dashboard"),
        reverse("admin:django_jobstatus_jobrun_dashboard_data"),
        reverse("admin:index"),
    ]:
        response = admin_client.get(url)
        assert response.status_code == 200, (url, response.content[:2000])
