"""Who may see and do what with a domain: the one place that decides it.

The story:
1. Every domain has an owner (``Domain.owner``) and members (``DomainMember``), each a viewer or an
   editor. Staff (and superusers) act as the owner of every domain. A domain without an owner is
   visible to staff only (that is where domains made before owners existed went when no staff user
   was around to receive them; see docs/decisions.md).
2. A role allows a set of actions:
   - ``view``: read the domain, its task, experiments, runs and knowledge (viewer, editor, owner);
   - ``view_holdout``: see holdout values; a viewer loses it when the owner sets
     ``hide_holdout_from_viewers``;
   - ``edit``: edit PROGRAM.md, start and stop runs, run experiments, write knowledge (editor, owner);
   - ``own``: workspace, interpreter, env vars, task tools, freeze/unfreeze, members, delete (owner).
3. Whoever may not ``view`` a domain is told it does not exist (NotFound, 404), so ids cannot be probed;
   whoever may view it but not act gets Forbidden (403).
4. Lists use ``domains_for_user``; a single object goes through ``domain_get_for_user`` (by id or
   name) or ``domain_require`` (a domain already fetched through an experiment, a run, an atom).
   Web views, the API, the admin querysets and the agent tools all call these; management commands
   act as a local administrator and do not.
"""

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from dojo_site.errors import Forbidden, NotFound
from domains.models import Domain, DomainMember

ACTIONS = ("view", "view_holdout", "edit", "own")
ROLES = ("owner", "editor", "viewer")

_ROLE_ACTIONS = {
    "owner": {"view", "view_holdout", "edit", "own"},
    "editor": {"view", "view_holdout", "edit"},
    "viewer": {"view", "view_holdout"},
}


def _is_admin(user) -> bool:
    return bool(user is not None and user.is_active and (user.is_staff or user.is_superuser))


def _is_user(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def domains_for_user(user) -> QuerySet[Domain]:
    """Return the domains ``user`` may see (all of them for staff, none for an anonymous user)."""
    if _is_admin(user):
        return Domain.objects.all()
    if not _is_user(user):
        return Domain.objects.none()
    return Domain.objects.filter(Q(owner=user) | Q(members__user=user)).distinct()


def domain_role(user, domain: Domain) -> str | None:
    """Return "owner", "editor", "viewer" or None (no access). Staff are "owner" everywhere."""
    if _is_admin(user):
        return "owner"
    if not _is_user(user):
        return None
    if domain.owner_id is not None and domain.owner_id == user.pk:
        return "owner"
    return DomainMember.objects.filter(domain=domain, user=user).values_list("role", flat=True).first()


def domain_may(user, domain: Domain, action: str) -> bool:
    """True when ``user`` may do ``action`` (one of ACTIONS) on ``domain``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    role = domain_role(user, domain)
    if role is None:
        return False
    if action == "view_holdout" and role == "viewer" and domain.hide_holdout_from_viewers:
        return False
    return action in _ROLE_ACTIONS[role]


def domain_require(user, domain: Domain, action: str) -> Domain:
    """Return ``domain`` when ``user`` may do ``action`` on it.

    Raises NotFound when the user may not even see it (same message as a missing domain) and
    Forbidden when they see it but may not do ``action``."""
    if not domain_may(user, domain, "view"):
        raise NotFound(f"no domain with id {domain.pk}")
    if not domain_may(user, domain, action):
        raise Forbidden(_forbidden_message(domain, action))
    return domain


def domain_get_for_user(user, pk_or_name: int | str, action: str = "view") -> Domain:
    """Fetch a domain by id (an int or an all-digit string) or name and check ``action`` on it.

    Raises NotFound when it does not exist or the user may not see it, Forbidden (403) when the
    user sees it but may not do ``action``."""
    query = Domain.objects.select_related("task")
    if isinstance(pk_or_name, int) or (isinstance(pk_or_name, str) and pk_or_name.isdigit()):
        domain = query.filter(pk=int(pk_or_name)).first()
        missing = f"no domain with id {pk_or_name}"
    else:
        domain = query.filter(name=pk_or_name).first()
        missing = f"no domain named {pk_or_name!r}"
    if domain is None or not domain_may(user, domain, "view"):
        raise NotFound(missing)
    return domain_require(user, domain, action)


def holdout_visible(user, domain: Domain) -> bool:
    """True when holdout values of ``domain`` may be shown to ``user`` (pages, API, charts)."""
    return domain_may(user, domain, "view_holdout")


def knowledge_visible_q(user) -> Q:
    """Filter for KnowledgeAtom: global atoms (no domain) and the atoms of domains the user sees."""
    return Q(domain__isnull=True) | Q(domain__in=domains_for_user(user))


def knowledge_global_require(user) -> None:
    """Global knowledge reaches every domain's agents: only staff write it (Forbidden otherwise)."""
    if not _is_admin(user):
        raise Forbidden("only staff may write global knowledge; give a domain_id")


def _forbidden_message(domain: Domain, action: str) -> str:
    needs = {
        "view_holdout": "the owner hides holdout values from viewers",
        "edit": "this needs the editor or owner role",
        "own": "only the domain's owner (or staff) may do this",
    }.get(action, "not allowed")
    return f"not allowed on domain {domain.name!r}: {needs}"


# --- Web views: the same decisions as Django's 404 / 403 -------------------------------------


def web_domain_get(user, pk_or_name: int | str, action: str = "view") -> Domain:
    """domain_get_for_user for a view: Http404 when unseen, PermissionDenied (403) when not allowed."""
    try:
        return domain_get_for_user(user, pk_or_name, action)
    except NotFound as exc:
        raise Http404(str(exc)) from None
    except Forbidden as exc:
        raise PermissionDenied(str(exc)) from None


def web_domain_require(user, domain: Domain, action: str) -> Domain:
    """domain_require for a view: Http404 when unseen, PermissionDenied (403) when not allowed."""
    try:
        return domain_require(user, domain, action)
    except NotFound as exc:
        raise Http404(str(exc)) from None
    except Forbidden as exc:
        raise PermissionDenied(str(exc)) from None
