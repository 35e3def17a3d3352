import json

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError
from ninja.openapi.docs import Redoc
from ninja.parser import Parser
from ninja.security import django_auth

from dojo_site.auth import BearerTokenAuth
from dojo_site.errors import DojoError


class StrictJsonParser(Parser):
    """Standard JSON only. NaN/Infinity and lone surrogates (text no file or database can store) make
    ninja answer 400 "Cannot parse request body" instead of failing deep inside a service."""

    def parse_body(self, request: HttpRequest):
        data = json.loads(request.body, parse_constant=_constant_refused)
        json.dumps(data, ensure_ascii=False).encode()  # UnicodeEncodeError on a lone surrogate
        return data


def _constant_refused(name: str):
    raise ValueError(f"{name} is not valid JSON")


# Every endpoint needs a logged-in session (with CSRF) or an API token.
api = NinjaAPI(
    parser=StrictJsonParser(),
    title="Dojo API",
    version="1",
    auth=[BearerTokenAuth(), django_auth],
    urls_namespace="api",
    # The docs and the OpenAPI schema are pages too: log in first.
    docs_decorator=login_required,
)


@login_required
def redoc(request: HttpRequest) -> HttpResponse:
    """The API reference as ReDoc (Swagger UI is at /api/docs); both from ninja's bundled assets."""
    return Redoc().render_page(request, api)


@api.exception_handler(DojoError)
def dojo_error(request: HttpRequest, exc: DojoError) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=exc.status_code)


@api.exception_handler(RequestDataTooBig)
def body_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit_mb = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 1024 / 1024
    return api.create_response(
        request, {"detail": f"Request body too large (the limit is {limit_mb:.1f} MB)."}, status=413
    )


@api.exception_handler(ValidationError)
def validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return api.create_response(request, {"detail": exc.errors}, status=422)


@api.exception_handler(AuthenticationError)
def authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request, {"detail": "Authentication required: log in or send 'Authorization: Bearer <token>'."}, status=401
    )


@api.get("/health", tags=["health"])
def health(request: HttpRequest) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"status": "ok"}


@api.get("/config", tags=["health"])
def config(request: HttpRequest) -> dict:
    """Dojo's version and its non-secret settings (an allow-list: no keys, tokens or URLs with
    credentials); any authenticated user may read it."""
    from dojo_site.config import config_public

    return config_public()


def _add_routers() -> None:
    from agentrun.api import router as runs_router
    from domains.api import router as domains_router
    from experiments.api import router as experiments_router
    from knowledge.api import router as knowledge_router

    api.add_router("/", domains_router)
    api.add_router("/", experiments_router)
    api.add_router("/", knowledge_router)
    api.add_router("/", runs_router)


_add_routers()
