"""Experiment pages: the domain's leaderboard (also the domain page's Experiments tab), one
experiment, its artifacts, and the reproduce action."""

import difflib

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from dojo_site.errors import DojoError
from domains.models import Domain, Task
from domains.permissions import holdout_visible, web_domain_get, web_domain_require
from experiments.charts import Point, metric_chart_svg
from experiments.forms import ExperimentFilterForm
from experiments.models import Artifact, Experiment
from experiments.services import artifact_file, experiment_leaderboard, experiment_reproduce

PAGE_SIZE = 25
CHART_POINTS = 500


def _chart(domain: Domain, task: Task | None, *, holdout: bool = True) -> str:
    if task is None:
        return ""
    done = (
        Experiment.objects.filter(domain=domain, state=Experiment.State.COMPLETED, primary_value__isnull=False)
        .order_by("created_at", "pk")
        .values_list("pk", "primary_value", "holdout_primary_value")
    )
    rows = list(done)[-CHART_POINTS:]
    points = [Point(label=f"#{pk} {task.primary_metric}={value:.5g}", value=value, holdout=hv if holdout else None)
              for pk, value, hv in rows]
    return metric_chart_svg(points, metric=task.primary_metric, direction=task.direction)


@login_required
def experiment_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id)
    task = Task.objects.filter(domain=domain).first()
    show_holdout = holdout_visible(request.user, domain)
    form = ExperimentFilterForm(request.GET or None)
    sort, state, page = "validation", "", 1
    if form.is_valid():
        sort = form.cleaned_data["sort"] or "validation"
        state = form.cleaned_data["state"] or ""
        page = form.cleaned_data["page"] or 1
    if not show_holdout and sort == "holdout":
        sort = "validation"  # the order by holdout would tell what the values hide
    paginator = Paginator(experiment_leaderboard(domain=domain, sort=sort, state=state or None), PAGE_SIZE)
    page_obj = paginator.get_page(page)
    if not show_holdout:
        for exp in page_obj:
            exp.holdout_blanked()
    context = {
        "domain": domain, "task": task, "form": form, "sort": sort, "state": state, "page_obj": page_obj,
        "show_holdout": show_holdout,
        "chart": mark_safe(_chart(domain, task, holdout=show_holdout)),  # noqa: S308 - built by our helper, values escaped
        "states": Experiment.State.choices,
    }
    template = "experiments/partials/domain_experiments.html" if request.htmx else "experiments/domain_list.html"
    return render(request, template, context)


def _diff(parent: Experiment | None, exp: Experiment) -> list[tuple[str, str]]:
    if parent is None:
        return []
    lines = difflib.unified_diff(
        parent.train_code.splitlines(), exp.train_code.splitlines(),
        fromfile=f"#{parent.pk}", tofile=f"#{exp.pk}", lineterm="",
    )
    out = []
    for line in lines:
        kind = "add" if line.startswith("+") else "del" if line.startswith("-") else "hunk" if line.startswith("@@") else ""
        out.append((kind, line))
    return out


@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    exp = get_object_or_404(Experiment.objects.select_related("domain", "parent", "domain__task"), pk=pk)
    web_domain_require(request.user, exp.domain, "view")
    task = exp.domain.task_or_none
    show_holdout = holdout_visible(request.user, exp.domain)
    artifacts = list(exp.artifacts.all())
    if not show_holdout:
        exp.holdout_blanked()
        artifacts = [a for a in artifacts if not a.is_holdout]
    metric_rows = [
        {"key": key, "validation": exp.metrics.get(key), "holdout": exp.holdout_metrics.get(key),
         "primary": task is not None and key == task.primary_metric}
        for key in sorted(set(exp.metrics) | set(exp.holdout_metrics))
    ]
    context = {
        "exp": exp, "task": task, "metric_rows": metric_rows, "show_holdout": show_holdout,
        "code_html": mark_safe(highlight(  # noqa: S308 - pygments escapes the code
            exp.train_code, PythonLexer(),
            HtmlFormatter(noclasses=True, linenos="table", hl_lines=sorted({f.get("line") for f in exp.code_flags
                                                                             if isinstance(f.get("line"), int)})),
        )),
        "diff": _diff(exp.parent, exp),
        "images": [a for a in artifacts if a.content_type.startswith("image/")],
        "files": [a for a in artifacts if not a.content_type.startswith("image/")],
        "other_contract": task is not None and (exp.task_fingerprint != task.fingerprint
                                                or exp.data_fingerprint != task.data_fingerprint),
        "gap": None if exp.primary_value is None or exp.holdout_primary_value is None
        else exp.holdout_primary_value - exp.primary_value,
    }
    return render(request, "experiments/detail.html", context)


@login_required
def experiment_artifact(request: HttpRequest, pk: int, artifact_id: int) -> HttpResponse:
    artifact = get_object_or_404(Artifact.objects.select_related("experiment__domain"), experiment_id=pk, pk=artifact_id)
    domain = web_domain_require(request.user, artifact.experiment.domain, "view")
    if artifact.is_holdout and not holdout_visible(request.user, domain):
        raise Http404("no such artifact")
    try:
        path = artifact_file(artifact=artifact)
    except DojoError as exc:
        raise Http404(str(exc)) from None
    inline = request.GET.get("inline") == "1" and artifact.content_type.startswith("image/")
    response = FileResponse(open(path, "rb"), as_attachment=not inline, filename=path.name,  # noqa: SIM115
                            content_type=artifact.content_type or "application/octet-stream")
    # An artifact is untrusted content (train() wrote it): never let a browser run it as a page.
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def experiment_reproduce_view(request: HttpRequest, pk: int) -> HttpResponse:
    original = get_object_or_404(Experiment.objects.select_related("domain"), pk=pk)
    web_domain_require(request.user, original.domain, "edit")
    try:
        again = experiment_reproduce(experiment=original)
    except DojoError as exc:
        messages.error(request, f"Cannot reproduce #{original.pk}: {exc}")
        return redirect(original)
    if again.metrics == original.metrics and again.holdout_metrics == original.holdout_metrics:
        messages.success(request, f"Reproduced #{original.pk} as #{again.pk}: identical metrics.")
    elif again.state == Experiment.State.FAILED:
        messages.error(request, f"The reproduction #{again.pk} failed: {again.error}")
    else:
        messages.warning(request, f"Reproduced #{original.pk} as #{again.pk}: the metrics differ.")
    return redirect(again)
