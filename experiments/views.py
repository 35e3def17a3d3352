"""Experiment pages: the domain's leaderboard (also the domain page's Experiments tab), compare,
the lineage tree, chart data, one experiment, its artifacts, and reproduce (in the background)."""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from dojo_site.errors import DojoError, NotFound
from domains.models import Domain
from domains.permissions import domain_may, holdout_visible, web_domain_get
from experiments import analysis, ranking
from experiments.forms import ExperimentFilterForm
from experiments.models import Artifact, Experiment
from experiments.quarantine import quarantine_review
from experiments.services import artifact_open, experiment_reproduce_enqueue

PAGE_SIZE = 25


# --- Access -------------------------------------------------------------------------------------


def _domain_for(request: HttpRequest, pk: int | str, action: str = "view") -> Domain:
    """The domain if the user may `action` on it: 404 when they cannot see it, 403 when they see it
    but may not act (domains.permissions decides)."""
    return web_domain_get(request.user, pk, action)


def _may(request: HttpRequest, domain: Domain, action: str) -> bool:
    if action == "view_holdout":
        return holdout_visible(request.user, domain)
    return domain_may(request.user, domain, action)


def _experiment_for(request: HttpRequest, pk: int, action: str = "view") -> Experiment:
    exp = get_object_or_404(Experiment.objects.only("id", "domain_id"), pk=pk)
    domain = _domain_for(request, exp.domain_id, action)
    exp = get_object_or_404(Experiment.objects.select_related("parent", "reproduction_of"), pk=pk)
    exp.domain = domain
    return exp


def _url(request: HttpRequest, base: str, **changes) -> str:
    """`base` with the request's GET params, `changes` applied (None removes a param)."""
    params: QueryDict = request.GET.copy()
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        elif isinstance(value, list):
            params.setlist(key, value)
        else:
            params[key] = str(value)
    encoded = params.urlencode()
    return f"{base}?{encoded}" if encoded else base


# --- The leaderboard ----------------------------------------------------------------------------


@login_required
def experiment_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = _domain_for(request, domain_id)
    task = domain.task_or_none
    holdout = _may(request, domain, "view_holdout")
    form = ExperimentFilterForm(request.GET)
    values = form.values()
    ignored = sorted(form.errors)
    sort = values.get("sort") or "best"
    if sort not in ("best", *analysis.sort_keys()) or (sort == "holdout" and not holdout):
        ignored.append("sort")
        sort = "best"
    query = analysis.LeaderboardQuery(
        sort=sort, direction=values.get("dir") or "", state=values.get("state") or "", run=values.get("run"),
        family=values.get("family") or "", q=values.get("q") or "",
    )
    keys = [k for k in request.GET.getlist("cols") if analysis.column_for(k, task=task)][: analysis.MAX_COLUMNS]
    chosen = bool(keys) or "cols_set" in request.GET
    columns = [analysis.column_for(k, task=task) for k in (keys if chosen else analysis.default_columns(task))]
    if not holdout:
        columns = [c for c in columns if not c.key.startswith("hold:") and c.key != "gap"]
    base = reverse("experiments:domain_list", args=[domain.pk])
    natural = {}
    for column in [*columns, analysis.Column("created", "created", "created"), analysis.Column("id", "#", "id")]:
        if not column.sort:
            continue
        current = query.direction or analysis.natural_direction(sort, task=task)
        if column.sort == sort:
            flip = "asc" if current == "desc" else "desc"
            natural[column.key] = (_url(request, base, sort=column.sort, dir=flip, page=None), current)
        else:
            natural[column.key] = (_url(request, base, sort=column.sort, dir=None, page=None), "")
    ordered = analysis.leaderboard_query(domain=domain, query=query, task=task)
    paginator = Paginator(ordered.values_list("id", flat=True), PAGE_SIZE)
    page_obj = paginator.get_page(values.get("page") or 1)
    exps = analysis.leaderboard_rows(ids=list(page_obj.object_list), task=task)
    if not holdout:
        for exp in exps:
            exp.holdout_blanked()
    # Noise marks (experiments/ranking.py): #1, and rows indistinguishable from it (CI overlap or
    # seed spread), with the primary metric's bootstrap intervals.
    best = ranking.best_experiment(domain) if task is not None else None
    metric = task.primary_metric if task is not None else ""
    for e in exps:
        e.is_top = best is not None and e.pk == best.pk
        e.noise_of_top = (best is not None and not e.is_top and e.state == Experiment.State.COMPLETED
                          and e.quarantine_state not in ranking.UNRANKED_STATES
                          and ranking.within_noise(e, best, metric=metric))
        e.val_ci = (e.validation_ci or {}).get(metric)
        e.hold_ci = (e.holdout_ci or {}).get(metric) if holdout else None
    rows = [{"exp": e, "cells": [analysis.cell(e, c.key) for c in columns]} for e in exps]
    params = analysis.recent_params(domain=domain)
    context = {
        "domain": domain, "task": task, "query": query, "sort": sort, "columns": columns, "rows": rows,
        "page_obj": page_obj, "holdout": holdout, "ignored": ignored,
        "val_key": f"val:{metric}", "hold_key": f"hold:{metric}",
        "page_range": list(paginator.get_elided_page_range(page_obj.number, on_each_side=2, on_ends=1)),
        "page_url": _url(request, base, page=None), "headers": natural,
        "available": [c for c in analysis.available_columns(task, params)
                      if holdout or not (c.key.startswith("hold:") or c.key == "gap")],
        "chosen_keys": [c.key for c in columns],
        "keep_params": [(k, v) for k, v in request.GET.lists() for v in v if k not in ("page",)],
        "states": Experiment.State.choices, "sort_keys": analysis.sort_keys(),
        # The charts follow the run filter (a run's history); other filters are the table's own.
        "history_url": reverse("experiments:chart_data", args=[domain.pk, "history"])
        + (f"?run={query.run}" if query.run else ""),
        "history_title": f"Optimisation history of run {query.run}" if query.run else "Optimisation history",
    }
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "experiments/partials/domain_experiments.html", context)
    return render(request, "experiments/domain_list.html", context)


# --- Charts -------------------------------------------------------------------------------------


def _finite(values: list) -> list:
    return [v if isinstance(v, int | float) and math.isfinite(v) else None for v in values]


@login_required
def experiment_chart_data(request: HttpRequest, domain_id: int, kind: str) -> JsonResponse:
    """Chart data as compact arrays: kind "history" (optimisation history, with holdout when the
    user may see it) or "parallel" (params → primary metric); `?run=ID` narrows to one run."""
    domain = _domain_for(request, domain_id)
    run = request.GET.get("run")
    try:
        run_id = int(run) if run else None
    except ValueError:
        return JsonResponse({"error": "run must be a number"}, status=422)
    if kind == "history":
        data = analysis.history_data(domain=domain, run=run_id)
        if not _may(request, domain, "view_holdout"):
            data["holdout"] = []
        data["url"] = reverse("experiments:detail", args=[0]).replace("/0/", "/{id}/")
        return JsonResponse(data)
    if kind == "parallel":
        data = analysis.parallel_data(domain=domain, run=run_id)
        data["values"] = _finite(data["values"])
        return JsonResponse(data)
    raise Http404("no such chart")


# --- Compare ------------------------------------------------------------------------------------


@login_required
def experiment_compare(request: HttpRequest) -> HttpResponse:
    """`?ids=1,2,3` (or ids repeated) → metrics, variables, facts side by side; `a`/`b` pick the
    two whose code is diffed (the first two by default); `diff_only=1` hides equal rows."""
    try:
        ids = analysis.parse_ids(request.GET.getlist("ids"))
        first = get_object_or_404(Experiment.objects.only("id", "domain_id"), pk=ids[0])
        domain = _domain_for(request, first.domain_id)
        exps = analysis.experiments_for_compare(ids=ids)
    except NotFound as exc:
        raise Http404(str(exc)) from None
    except DojoError as exc:
        return render(request, "experiments/compare.html", {"error": str(exc)}, status=422)
    holdout = _may(request, domain, "view_holdout")
    data = analysis.experiments_compare(experiments=exps, holdout=holdout)
    diff_only = request.GET.get("diff_only") == "1"
    by_id = {e.pk: e for e in exps}

    def pick(name: str, default: Experiment) -> Experiment:
        try:
            return by_id.get(int(request.GET.get(name, "")), default)
        except ValueError:
            return default

    a = pick("a", exps[0])
    b = pick("b", exps[1] if len(exps) > 1 else exps[0])
    base = reverse("experiments:compare")
    context = {
        "domain": domain, "task": domain.task_or_none, "exps": exps, "data": data, "diff_only": diff_only,
        "a": a, "b": b, "diff": analysis.code_diff(a, b) if a.pk != b.pk else [],
        "artifacts": [(e, [a for a in e.artifacts.all() if holdout or not a.is_holdout]) for e in exps],
        "holdout": holdout,
        "toggle_url": _url(request, base, diff_only=None if diff_only else "1"),
        "ids_param": ",".join(str(i) for i in ids),
    }
    return render(request, "experiments/compare.html", context)


# --- Lineage ------------------------------------------------------------------------------------


@login_required
def experiment_quarantine_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    """The domain's Quarantine tab: every experiment a rule held back, its reasons and verdict,
    with the trust figures (quarantined count, validation→holdout rank correlation)."""
    domain = _domain_for(request, domain_id)
    held = (
        Experiment.objects.filter(domain=domain).exclude(quarantine_state="")
        .only("id", "state", "hypothesis", "primary_value", "holdout_primary_value", "quarantine_state",
              "quarantine_reasons", "quarantine_review", "probe_of_id", "probe_rows", "run_id", "created_at")
        .order_by("-pk")
    )
    page_obj = Paginator(held, PAGE_SIZE).get_page(request.GET.get("page") or 1)
    context = {"domain": domain, "task": domain.task_or_none, "page_obj": page_obj,
               "trust": ranking.trust_summary(domain), "may_review": _may(request, domain, "own"),
               "show_holdout": _may(request, domain, "view_holdout")}
    template = "experiments/partials/quarantine.html" if request.htmx else "experiments/quarantine.html"
    return render(request, template, context)


@login_required
@require_POST
def experiment_quarantine_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Clear or confirm a quarantined experiment (owner), with a reason that is recorded."""
    exp = _experiment_for(request, pk, "own")
    try:
        quarantine_review(experiment=exp, decision=request.POST.get("decision", ""),
                          reason=request.POST.get("reason", ""), by=request.user.get_username())
    except DojoError as exc:
        messages.error(request, f"#{exp.pk}: {exc}")
    else:
        messages.info(request, f"#{exp.pk} {exp.quarantine_state}.")
    return redirect(reverse("experiments:quarantine", args=[exp.domain_id]))


@login_required
def experiment_lineage_tree(request: HttpRequest, domain_id: int) -> HttpResponse:
    """The domain's lineage tree, 50 roots a page, the best path open; `?node=ID` returns the
    children of one node (loaded by htmx when the node is opened)."""
    domain = _domain_for(request, domain_id)
    best = analysis.best_experiment_for(domain)
    forest = analysis.lineage_forest(domain=domain, best_id=best.pk if best else None)
    node_id = request.GET.get("node")
    if node_id is not None:
        node = forest.nodes.get(int(node_id)) if node_id.isdigit() else None
        if node is None:
            raise Http404("no such experiment in this lineage")
        children = analysis.lineage_children(node.children, 200)
        hidden = len(node.children) - len(children)
        return render(request, "experiments/partials/lineage_rows.html",
                      {"domain": domain, "rows": analysis.lineage_rows(children), "parent": node, "hidden": hidden,
                       "lineage_url": request.path})
    paginator = Paginator(forest.roots, 50)
    page_obj = paginator.get_page(request.GET.get("page") or 1)
    context = {"domain": domain, "task": domain.task_or_none, "best": best, "page_obj": page_obj,
               "count": forest.count, "rows": analysis.lineage_rows(list(page_obj)), "lineage_url": request.path}
    return render(request, "experiments/lineage.html", context)


# --- One experiment -----------------------------------------------------------------------------


def _code_html(code: str, *, hl_lines: list[int] | None = None) -> str:
    # A table formatter keeps each line number in the row of its line, so they cannot drift;
    # the code cell scrolls sideways inside the box (CSS), never the page.
    formatter = HtmlFormatter(noclasses=True, linenos="table", lineanchors="L", anchorlinenos=True, wrapcode=True,
                              hl_lines=hl_lines or [])
    return highlight(code, PythonLexer(), formatter)


@login_required
def experiment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    exp = _experiment_for(request, pk)
    task = exp.domain.task_or_none
    holdout = _may(request, exp.domain, "view_holdout")
    artifacts = list(exp.artifacts.all())
    if not holdout:
        exp.holdout_blanked()
        artifacts = [a for a in artifacts if not a.is_holdout]
    metric_rows = [
        {"key": key, "validation": exp.metrics.get(key), "holdout": exp.holdout_metrics.get(key) if holdout else None,
         "primary": task is not None and key == task.primary_metric}
        for key in sorted(set(exp.metrics) | (set(exp.holdout_metrics) if holdout else set()))
    ]
    variables = analysis.flat_variables(exp.variables)
    lineage = analysis.experiment_lineage(experiment=exp)
    context = {
        "exp": exp, "task": task, "metric_rows": metric_rows, "holdout": holdout,
        "code_html": mark_safe(_code_html(  # noqa: S308 - pygments escapes the code
            exp.train_code, hl_lines=sorted({f.get("line") for f in exp.code_flags if isinstance(f.get("line"), int)}),
        )),
        "diff": analysis.code_diff(exp.parent, exp) if exp.parent else [],
        "images": [a for a in artifacts if a.content_type.startswith("image/")],
        "files": [a for a in artifacts if not a.content_type.startswith("image/")],
        "other_contract": task is not None and (exp.task_fingerprint != task.fingerprint
                                                or exp.data_fingerprint != task.data_fingerprint),
        "gap": None if not holdout or exp.primary_value is None or exp.holdout_primary_value is None
        else exp.holdout_primary_value - exp.primary_value,
        "variables": sorted(variables.items()),
        "lineage": lineage,
        "reproductions_active": any(r.state in (Experiment.State.PENDING, Experiment.State.RUNNING)
                                    for r in lineage["reproductions"]),
        "may_edit": _may(request, exp.domain, "edit"),
    }
    for r in lineage["reproductions"]:
        r.same = r.metrics == exp.metrics and r.holdout_metrics == exp.holdout_metrics
    return render(request, "experiments/detail.html", context)


@login_required
def experiment_artifact(request: HttpRequest, pk: int, artifact_id: int) -> HttpResponse:
    exp = _experiment_for(request, pk)
    artifact = get_object_or_404(Artifact, experiment_id=pk, pk=artifact_id)
    if artifact.is_holdout and not _may(request, exp.domain, "view_holdout"):
        raise Http404("no such artifact")
    try:
        content = artifact_open(artifact=artifact)
    except DojoError as exc:
        raise Http404(str(exc)) from None
    inline = request.GET.get("inline") == "1" and artifact.content_type.startswith("image/")
    response = FileResponse(content, as_attachment=not inline, filename=artifact.filename,
                            content_type=artifact.content_type or "application/octet-stream")
    # An artifact is untrusted content (train() wrote it): never let a browser run it as a page.
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_POST
def experiment_reproduce_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a reproduction (django-q2) and come back to the original, whose page polls it."""
    original = _experiment_for(request, pk, "edit")
    try:
        copy = experiment_reproduce_enqueue(experiment=original)
    except DojoError as exc:
        messages.error(request, f"Cannot reproduce #{original.pk}: {exc}")
        return redirect(original)
    messages.info(request, f"Reproduction #{copy.pk} of #{original.pk} queued; it appears below when it runs.")
    if request.htmx:
        return _reproductions(request, original)
    return redirect(original)


def _reproductions(request: HttpRequest, original: Experiment) -> HttpResponse:
    lineage = analysis.experiment_lineage(experiment=original, children_limit=0)
    reproductions = lineage["reproductions"]
    active = any(r.state in (Experiment.State.PENDING, Experiment.State.RUNNING) for r in reproductions)
    for r in reproductions:
        r.same = r.metrics == original.metrics and r.holdout_metrics == original.holdout_metrics
    return render(request, "experiments/partials/reproductions.html",
                  {"exp": original, "reproductions": reproductions, "active": active,
                   "task": original.domain.task_or_none, "may_edit": _may(request, original.domain, "edit"),
                   "holdout": _may(request, original.domain, "view_holdout")})


@login_required
def experiment_reproductions(request: HttpRequest, pk: int) -> HttpResponse:
    """The reproductions panel, polled by htmx while one is pending or running."""
    # The panel carries hx-trigger only while a reproduction is pending or running; once none is,
    # it comes back without one and polling ends (as the live run page does).
    return _reproductions(request, _experiment_for(request, pk))
