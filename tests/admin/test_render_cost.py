"""The changelists' cheaper rendering: the same HTML as Django's, fewer links, a bounded number of queries."""

from __future__ import annotations

import re
import uuid
from unittest import mock

from django.contrib import admin
from django.contrib.admin.templatetags.admin_list import result_list
from django.db import connection
from django.utils import timezone
from django.utils.safestring import SafeString

from django_jobstatus.admin.filters import SAMPLED_CHOICES
from django_jobstatus.admin.rows import fast_result_list
from django_jobstatus.models import JobLog, Status

RUNS = "/admin/django_jobstatus/jobrun/"
LOGS = "/admin/django_jobstatus/joblog/"


def _rows(context: dict) -> list[str]:
    """Each row's HTML as the template writes it: its cells one after the other."""
    return ["".join(str(cell) for cell in row) for row in context["results"]]


def _where(cl) -> str:
    """The changelist query's own WHERE clause (not a column's subquery)."""
    return str(cl.queryset.query).rsplit(" WHERE ", 1)[1]


def _hostile_runs(make_run):
    make_run('<b>"a&b"</b>', message="  ", source="<i>x</i>")
    make_run("plain", status=Status.FAILED, error="Boom <script>\nmore", attempt=2)
    make_run("queued", status=Status.QUEUED, progress_total=10, progress_current=3)
    return make_run("done", status=Status.SUCCEEDED, message="all <done>")


def test_run_rows_are_djangos_rows(admin_client, make_run):
    _hostile_runs(make_run)
    response = admin_client.get(RUNS + "?status=active&o=1")
    cl = response.context["cl"]
    # One clock for both renders: a running run's duration grows in between.
    with mock.patch.object(timezone, "now", return_value=timezone.now()):
        ours, djangos = fast_result_list(cl), result_list(cl)
    assert len(ours["results"]) == 2
    assert _rows(ours) == _rows(djangos)
    assert ours["result_headers"] == djangos["result_headers"]
    assert ours["num_sorted_fields"] == djangos["num_sorted_fields"] == 1
    # The preserved filters reach the links as Django writes them.
    assert "_changelist_filters=status%3Dactive%26o%3D1" in _rows(ours)[0]
    body = response.content.decode()
    assert (
        "&lt;b&gt;&quot;a&amp;b&quot;&lt;/b&gt;" in body and '<b>"a&b"</b>' not in body
    )


def test_log_rows_are_djangos_rows(admin_client, make_run):
    run = _hostile_runs(make_run)
    JobLog.objects.create(run=run, level=40, message="<oops> & more")
    JobLog.objects.create(run=run, level=20, message="")
    cl = admin_client.get(LOGS).context["cl"]
    ours, djangos = fast_result_list(cl), result_list(cl)
    assert len(ours["results"]) == 2
    assert _rows(ours) == _rows(djangos)


def test_row_checkbox_is_djangos(rf, make_run, admin_user):
    from django_jobstatus.admin.runs import JobRunAdmin
    from django_jobstatus.models import JobRun

    run = make_run('<b>"x"</b>')
    model_admin = JobRunAdmin(JobRun, admin.site)
    assert model_admin.action_checkbox(run) == admin.ModelAdmin.action_checkbox(
        model_admin, run
    )


def test_popup_changelist_falls_back_to_djangos_rows(admin_client, make_run):
    make_run("a")
    response = admin_client.get(RUNS + "?_popup=1&_to_field=id")
    assert response.status_code == 200
    assert "data-popup-opener" in response.content.decode()


def test_sampled_filters_offer_a_bounded_number_of_values(admin_client, make_run):
    for i in range(SAMPLED_CHOICES + 15):
        make_run(f"job{i}", worker=f"host-{i:03d}:1", queue=f"q{i:03d}")
    response = admin_client.get(RUNS)
    body = response.content.decode()
    offered = {
        choice["display"]
        for spec in response.context["cl"].filter_specs
        if spec.parameter_name == "worker"
        for choice in spec.choices(response.context["cl"])
    }
    # "All" and the newest SAMPLED_CHOICES workers, not the 35 of them.
    assert len(offered) == SAMPLED_CHOICES + 1
    assert f"host-{SAMPLED_CHOICES + 14:03d}:1" in offered
    assert "host-000:1" not in offered
    # The value chosen is offered even when it is not among the newest.
    response = admin_client.get(RUNS + "?worker=host-000%3A1")
    assert "?worker=host-000%3A1" in response.content.decode()
    assert len(response.context["cl"].result_list) == 1
    assert "?queue=q034" in body


def test_changelist_queries_do_not_grow_with_rows(
    admin_client, make_run, django_assert_max_num_queries
):
    for i in range(60):
        make_run(f"job{i % 7}", worker=f"w{i}", status=Status.SUCCEEDED)
    admin_client.get(RUNS)
    with django_assert_max_num_queries(12):
        response = admin_client.get(RUNS)
    assert len(response.context["cl"].result_list) == 50


def test_a_log_page_reads_its_runs_after_it_is_cut(admin_client, make_run):
    """A search's matches are sorted and cut to a page before any run is read: joined, each
    match was joined to its run first (3,421 probes for a middling word among 10M lines)."""
    runs = [
        make_run(f"job{i}", status=Status.FAILED, traceback="Traceback\n" * 300)
        for i in range(3)
    ]
    for i in range(120):
        JobLog.objects.create(run=runs[i % 3], message=f"sent vip-{i} a note")
    statements = []

    def record(execute, sql, *args):
        statements.append(sql)
        return execute(sql, *args)

    with connection.execute_wrapper(record):
        response = admin_client.get(LOGS + "?q=vip")
    assert len(response.context["cl"].result_list) == 100
    lines = [sql for sql in statements if 'FROM "django_jobstatus_joblog"' in sql]
    assert lines and not any("django_jobstatus_jobrun" in sql for sql in lines)
    # The runs: only what a row shows, not their tracebacks.
    (read,) = [sql for sql in statements if 'FROM "django_jobstatus_jobrun"' in sql]
    assert '"job_name"' in read and '"traceback"' not in read
    body = response.content.decode()
    assert all(run.job_name in body for run in runs)


def test_status_label_is_djangos_in_each_language(make_run):
    from django.utils import translation

    run = make_run()
    for language in ("en", "fr", "de"):
        with translation.override(language):
            for value, label in Status.choices:
                run.status = value
                assert run.get_status_display() == str(label)
    with translation.override("de"):
        run.status = Status.FAILED
        assert run.get_status_display() == "Fehlgeschlagen"
    run.status = "unheard-of"
    assert run.get_status_display() == "unheard-of"


def test_search_by_a_job_name_also_finds_that_word_as_an_id_or_subject(
    admin_client, make_run
):
    ledger = make_run("billing.sync_ledger")
    other = make_run("mail.send", subject="sync_ledg")
    make_run("mail.send")
    response = admin_client.get(RUNS + "?q=sync_ledg")
    assert {run.pk for run in response.context["cl"].result_list} == {
        ledger.pk,
        other.pk,
    }
    response = admin_client.get(RUNS + "?q=billing.sync_ledger")
    assert [run.pk for run in response.context["cl"].result_list] == [ledger.pk]


def test_a_word_no_job_name_holds_is_not_asked_of_the_job_names(admin_client, make_run):
    # Every name is known and none holds the word: a job-name condition could match
    # nothing, and on PostgreSQL its trigram index returned every run of the names
    # sharing the word's trigrams, each rejected (200 ms among a million runs).
    make_run("reports.tasks.sync_ledger")
    said = make_run("mail.send", message="see reports.sync_ledger later")
    subject = make_run("mail.send", subject="reports.sync_ledger")
    response = admin_client.get(RUNS + "?q=reports.sync_ledger")
    cl = response.context["cl"]
    assert {run.pk for run in cl.result_list} == {said.pk, subject.pk}
    where = _where(cl)
    assert "job_name" not in where, where
    assert "message" in where


def test_with_too_many_names_to_know_a_word_still_finds_the_start_of_a_name(
    admin_client, make_run
):
    for i in range(3):
        make_run(f"a.job{i}")
    late = make_run("z.nightly_import")
    with mock.patch("django_jobstatus.admin.runs.JOB_NAME_CHOICES", 2):
        response = admin_client.get(RUNS + "?q=z.nightly")
    cl = response.context["cl"]
    assert [run.pk for run in cl.result_list] == [late.pk]
    assert "job_name" in _where(cl)


def test_names_and_samples_are_read_once_per_request(
    admin_client, make_run, django_assert_max_num_queries
):
    for i in range(5):
        make_run(f"billing.job{i}", worker=f"w{i}", queue="q", source="celery")
    admin_client.get(RUNS + "?q=billing.job1")
    with django_assert_max_num_queries(10) as captured:
        response = admin_client.get(RUNS + "?q=billing.job1")
    assert len(response.context["cl"].result_list) == 1
    sql = [query["sql"] for query in captured.captured_queries]
    assert sum("WITH RECURSIVE" in text for text in sql) == 1
    assert sum(bool(re.search(r"LIMIT 1000\b", text)) for text in sql) == 1


def test_run_url_is_reverse_under_any_script_prefix(make_run):
    from django.urls import reverse, set_script_prefix

    from django_jobstatus.admin.display import run_url

    run = make_run()
    assert run_url(run.pk) == reverse(
        "admin:django_jobstatus_jobrun_change", args=[run.pk]
    )
    try:
        set_script_prefix("/mounted/")
        assert (
            run_url(run.pk)
            == f"/mounted/admin/django_jobstatus/jobrun/{run.pk}/change/"
        )
    finally:
        set_script_prefix("/")
    assert run_url(run.pk).startswith("/admin/")


def test_shorten_is_truncatechars():
    from django.template.defaultfilters import truncatechars

    from django_jobstatus.admin.display import shorten

    for text in ("", "short", "x" * 80, "y" * 81, "a <b> & c " * 30):
        for length in (1, 10, 80, 200):
            assert shorten(text, length) == truncatechars(text, length)


def test_filters_are_djangos_filters(admin_client, make_run):
    from django.template.loader import get_template

    _hostile_runs(make_run)
    make_run("über/job?x=1&y=2", worker="wörker 1", queue="q&<1>")
    response = admin_client.get(RUNS + '?q="a b"&job_name=plain&o=1')
    cl = response.context["cl"]
    ours = get_template("admin/django_jobstatus/filter.html")
    djangos = get_template("admin/filter.html")
    rendered = 0
    for spec in cl.filter_specs:
        if not spec.has_output():
            continue
        context = {"title": spec.title, "choices": list(spec.choices(cl)), "spec": spec}
        assert spec.template == "admin/django_jobstatus/filter.html"
        assert ours.render(context) == djangos.render(context), spec.title
        rendered += 1
    assert rendered >= 8
    body = response.content.decode()
    assert 'class="selected"' in body
    assert "?job_name=%C3%BCber%2Fjob%3Fx%3D1%26y%3D2&amp;o=1&amp;q=%22a+b%22" in body


def test_format_cell_is_format_html():
    from django.utils.html import format_html
    from django.utils.safestring import mark_safe
    from django.utils.translation import gettext_lazy

    from django_jobstatus.admin.display import format_cell

    values = (
        "<b>\"a\" & 'b'</b>",
        mark_safe("<i>safe</i>"),
        gettext_lazy("Failed"),
        mark_safe(gettext_lazy("Running")),  # noqa: S308 (a lazy safe string)
        None,
        3.5,
        uuid.UUID(int=7),
    )
    template = "<span>{}</span>" * len(values)
    ours, djangos = format_cell(template, *values), format_html(template, *values)
    assert ours == djangos
    assert isinstance(ours, SafeString)
    assert "&lt;b&gt;&quot;a&quot; &amp; &#x27;b&#x27;&lt;/b&gt;" in ours
    assert "<i>safe</i>" in ours


# The log table's loop as the run page's template wrote it before its rows were built in Python.
_LOG_LOOP = """{% for line in logs %}
      <tr class="jobstatus-log-row" data-level="{{ line.level }}">
        <td class="nowrap"><time datetime="{{ line.created_at.isoformat }}">{{ line.created_at|date:"Y-m-d H:i:s" }}</time></td>
        <td><span class="jobstatus-level jobstatus-level-{% if line.level >= 40 %}error{% elif line.level >= 30 %}warning{% elif line.level < 20 %}debug{% else %}info{% endif %}">{{ line.level_name }}</span></td>
        <td class="jobstatus-log-message">{{ line.message }}</td>
      </tr>
    {% endfor %}"""


def test_run_page_log_rows_are_the_template_loops_rows(make_run, settings):
    from datetime import UTC, datetime

    from django.template import Context, Template

    from django_jobstatus.templatetags.jobstatus import jobstatus_log_rows

    run = make_run()
    moment = datetime(
        2026, 3, 29, 0, 59, 58, 123456, tzinfo=UTC
    )  # a DST change in Paris
    for level in (5, 10, 19, 20, 25, 30, 39, 40, 50, 60):
        JobLog.objects.create(
            run=run,
            level=level,
            message=f"<b>\"{level}\" & 'x'</b>\n  more",
            created_at=moment,
        )
    logs = list(JobLog.objects.for_run(run).order_by("level"))
    loop = Template(_LOG_LOOP)
    for zone in ("UTC", "Europe/Paris", "America/St_Johns"):
        with timezone.override(zone):
            expected = loop.render(Context({"logs": logs}))
            assert jobstatus_log_rows(logs) == expected, zone
    with timezone.override("Europe/Paris"):
        assert "2026-03-29 01:59:58" in jobstatus_log_rows(logs)  # CET, 2 s before CEST
    assert (
        "&lt;b&gt;&quot;40&quot; &amp; &#x27;x&#x27;&lt;/b&gt;"
        in jobstatus_log_rows(logs)
    )
    assert jobstatus_log_rows([]) == ""


# The dashboard's job table loop as its template wrote it before its rows were built in Python.
_JOB_LOOP = """{% load jobstatus %}{% for job in jobs %}
        <tr>
          <td><a href="{{ job.url }}">{{ job.job_name }}</a></td>
          <td class="num">{{ job.total }}</td>
          <td class="num">{% if job.failed %}<a href="{{ job.failed_url }}" class="jobstatus-failed-link">{{ job.failed }}</a>{% else %}0{% endif %}</td>
          <td class="num">{% if job.failure_pct is not None %}<span class="jobstatus-rate{% if job.failure_pct >= 10 %} jobstatus-rate-bad{% elif job.failure_pct > 0 %} jobstatus-rate-warn{% endif %}">{{ job.failure_pct }}%</span>{% else %}—{% endif %}</td>
          <td class="num">{{ job.p50|default:"—" }}</td>
          <td class="num">{{ job.p95|default:"—" }}</td>
          <td>{% if job.latest %}<a href="{{ job.latest_url }}"><span class="jobstatus-badge jobstatus-{{ job.latest.status }}">{{ job.latest.get_status_display }}</span></a> <span class="jobstatus-sub">{{ job.latest.created_at|jobstatus_ago }}</span>{% endif %}</td>
        </tr>
      {% endfor %}"""


def test_dashboard_job_rows_are_the_template_loops_rows(make_run, settings):
    from datetime import timedelta

    from django.template import Context, Template
    from django.utils import translation

    from django_jobstatus.admin.dashboard import job_table
    from django_jobstatus.rollups import figures
    from django_jobstatus.templatetags.jobstatus import jobstatus_job_rows

    failed = make_run('<b>"a&b"</b>', status=Status.FAILED)
    done = make_run("plain", status=Status.SUCCEEDED)
    done.created_at = timezone.now() - timedelta(hours=5)
    jobs = [
        {
            "job_name": failed.job_name,
            "url": "/runs/?job_name=%3Cb%3E&x=1",
            "failed_url": "/runs/?status=failed&job_name=a",
            "total": 12345,
            "failed": 1234,
            "failure_pct": 10.0,
            "p50": "1.5 s",
            "p95": "3 min 04 s",
            "latest": failed,
            "latest_url": "/run/1/",
        },
        {
            "job_name": "plain",
            "url": "/runs/?job_name=plain",
            "failed_url": "/f/",
            "total": 7,
            "failed": 0,
            "failure_pct": 0.0,
            "p50": "",
            "p95": "",
            "latest": done,
            "latest_url": "/run/2/",
        },
        {
            "job_name": "warn",
            "url": "/u/",
            "failed_url": "/f/",
            "total": 3,
            "failed": 1,
            "failure_pct": 33.3,
            "p50": "",
            "p95": "",
            "latest": None,
            "latest_url": None,
        },
        {
            "job_name": "none",
            "url": "/u/",
            "failed_url": "/f/",
            "total": 0,
            "failed": 0,
            "failure_pct": None,
            "p50": "",
            "p95": "",
            "latest": None,
            "latest_url": None,
        },
    ]
    now = timezone.now()
    jobs += job_table(
        figures(now - timedelta(hours=24), now, timedelta(hours=1)), "24h"
    )
    loop = Template(_JOB_LOOP)
    settings.USE_THOUSAND_SEPARATOR = True
    for language in ("en", "fr", "de"):
        with translation.override(language):
            expected = loop.render(Context({"jobs": jobs}))
            assert jobstatus_job_rows(jobs) == expected, language
    with translation.override("fr"):
        rows = jobstatus_job_rows(jobs)
    assert "12\xa0345" in rows  # French thousands, a no-break space
    assert "33,3%" in rows and "Échoué" in rows
    assert "&lt;b&gt;&quot;a&amp;b&quot;&lt;/b&gt;" in jobstatus_job_rows(jobs)


def _with_templates(settings, tmp_path, files: dict[str, str]) -> None:
    """The test project's templates, plus ``files`` in a project directory (overrides)."""
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [tmp_path]},
        *settings.TEMPLATES[1:],
    ]


def test_a_projects_own_filter_template_is_used(
    admin_client, make_run, settings, tmp_path
):
    make_run("a.job")
    _with_templates(
        settings,
        tmp_path,
        {"admin/filter.html": "<p class=mine>{{ title }}: {{ choices|length }}</p>"},
    )
    body = admin_client.get(RUNS).content.decode()
    assert "<p class=mine>job name: 2</p>" in body
    assert "<p class=mine>status: 10</p>" in body


def test_a_projects_own_results_template_gets_each_cell(
    admin_client, make_run, settings, tmp_path
):
    for i in range(3):
        make_run(f"job{i}")
    loop = (
        "{% for result in results %}<tr>{% for item in result %}<x>{{ item }}</x>"
        "{% endfor %}</tr>{% endfor %}"
    )
    _with_templates(settings, tmp_path, {"admin/change_list_results.html": loop})
    response = admin_client.get(RUNS)
    body = response.content.decode()
    columns = len(response.context["cl"].list_display)
    assert body.count("<x>") == 3 * columns
    assert body.count("<x><td") >= 3 and "<x><th" in body


def _action_forms(data=None, choices=()):
    from django.contrib.admin import helpers

    from django_jobstatus.admin.forms import ActionForm

    forms = ActionForm(data, auto_id=None), helpers.ActionForm(data, auto_id=None)
    for form in forms:
        form.fields["action"].choices = choices
    return forms


def test_the_action_form_is_djangos():
    choices = [
        ("", "---------"),
        ("kill", '<b>"Kill" & more</b>'),
        ("retry", SafeString("<i>Retry</i>")),
        ("Groups", [("a&b", "A & B"), (3, "three")]),
    ]
    for data in (None, {"action": "kill", "select_across": "1"}, {"action": "3"}):
        ours, djangos = _action_forms(data, choices)
        for name in ("action", "select_across"):
            assert str(ours[name]) == str(djangos[name]), (data, name)
        assert "&lt;b&gt;&quot;Kill&quot; &amp; more&lt;/b&gt;" in str(ours["action"])


def test_the_changelist_s_actions_are_djangos(admin_client, make_run):
    from django.contrib.admin import helpers

    from django_jobstatus.admin.runs import JobRunAdmin

    make_run("a.job")

    def actions(body: str) -> str:
        return re.search(r'<div class="actions">.*?</div>', body, re.S).group(0)

    ours = admin_client.get(RUNS).content.decode()
    with mock.patch.object(JobRunAdmin, "action_form", helpers.ActionForm):
        djangos = admin_client.get(RUNS).content.decode()
    assert 'name="action"' in actions(ours) and 'class="select-across"' in actions(ours)
    assert actions(ours) == actions(djangos)


def test_a_projects_form_renderer_renders_the_action_form(settings):
    """A renderer other than Django's own may hold a project's widget templates: used."""
    settings.FORM_RENDERER = f"{__name__}.MarkingRenderer"
    from django.forms.renderers import get_default_renderer

    get_default_renderer.cache_clear()
    try:
        ours, _djangos = _action_forms(None, [("kill", "Kill")])
        assert str(ours["action"]) == "<mine django/forms/widgets/select.html>"
        assert str(ours["select_across"]) == "<mine django/forms/widgets/hidden.html>"
    finally:
        get_default_renderer.cache_clear()


from django.forms.renderers import DjangoTemplates  # noqa: E402


class MarkingRenderer(DjangoTemplates):
    def render(self, template_name, context, request=None):
        return f"<mine {template_name}>"
