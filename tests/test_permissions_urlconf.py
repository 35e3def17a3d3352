"""Every route is checked against domains/permissions.py, found by walking the URL conf and the
API's OpenAPI schema, so a new endpoint without a check fails here.

- A route that takes a domain / experiment / run / atom / artifact id (in the path, or a domain_id in
  the query or body): a stranger (no role) gets 404 for every method; a viewer gets a success for
  GET and 403 for anything that changes something.
- A route without such an id: its GET shows a stranger nothing of another user's domain.
- Public routes (no login) and routes that create a new domain are listed explicitly below.
A route with a parameter this test does not know fails with a message saying where to add it.
"""

import json

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from dojo_site.api import api
from tests.access import MARKERS, world_build

pytestmark = pytest.mark.django_db

# Web routes that need no login, or that only create something of the user's own.
PUBLIC_WEB = {
    (None, None, ""): "redirect to the domains list",
    (None, "login", "login/"): "the login form",
    (None, "logout", "logout/"): "logging out",
    (None, None, "favicon.ico"): "redirect to the static icon",
}
# Web routes that take their ids in the query string: also checked as id routes with these.
QUERY_IDS = {
    ("experiments", "compare"): lambda world: f"ids={world.experiment.pk}",
}
# API routes anyone logged in may call without a domain: health, and creating one's own domain.
PUBLIC_API = {("GET", "/api/health"), ("POST", "/api/domains")}


def _web_value(world, namespace: str | None, param: str):
    by_namespace = {
        ("domains", "pk"): world.domain.pk,
        ("domains", "which"): "program",
        ("domains", "action"): "verify",
        ("domains", "username"): world.viewer.username,
        ("experiments", "pk"): world.experiment.pk,
        ("experiments", "artifact_id"): world.artifact.pk,
        ("experiments", "kind"): "history",
        ("agentrun", "pk"): world.run.pk,
        ("knowledge", "pk"): world.atom.pk,
    }
    if (namespace, param) in by_namespace:
        return by_namespace[(namespace, param)]
    value = _id_by_name(world, param)
    if value is None:
        pytest.fail(f"route {namespace}:… takes <{param}>: say in tests/test_permissions_urlconf.py what it names")
    return value


def _id_by_name(world, param: str):
    return {
        "domain_id": world.domain.pk,
        "experiment_id": world.experiment.pk,
        "artifact_id": world.artifact.pk,
        "run_id": world.run.pk,
        "atom_id": world.atom.pk,
    }.get(param)


def _web_routes():
    """(namespace, name, route, parameter names) of every web URL, admin and the API left out."""
    def walk(patterns, prefix: str, namespace: str | None):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace in ("admin", "api"):
                    continue  # the admin has its own test below; the API is walked through its schema
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern):
                params = list(pattern.pattern.regex.groupindex)
                yield namespace, pattern.name, prefix + str(pattern.pattern), params
    return list(walk(get_resolver().url_patterns, "", None))


def _web_url(world, namespace, name, params) -> str:
    if name is None:
        pytest.fail(f"an unnamed route under {namespace}: name it so this test can reverse it")
    full = f"{namespace}:{name}" if namespace else name
    return reverse(full, kwargs={p: _web_value(world, namespace, p) for p in params})


def _send(client, method: str, url: str, body=None):
    if method == "get":
        return client.get(url)
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, json.dumps(body), content_type="application/json")


@pytest.fixture
def world(django_user_model, workspace):
    return world_build(django_user_model, workspace)


def test_it_guards_every_web_route(client, world):
    checked = []
    for namespace, name, route, params in _web_routes():
        if (namespace, name, route) in PUBLIC_WEB:
            continue
        url = _web_url(world, namespace, name, params)
        if (namespace, name) in QUERY_IDS:
            client.force_login(world.stranger)
            with_ids = f"{url}?{QUERY_IDS[(namespace, name)](world)}"
            response = client.get(with_ids)
            assert response.status_code == 404, f"GET {with_ids} as a stranger: {response.status_code}, expected 404"
            client.force_login(world.viewer)
            assert client.get(with_ids).status_code == 200, with_ids
        if not params:
            client.force_login(world.stranger)
            response = client.get(url)
            assert response.status_code < 400 or response.status_code == 422, (url, response.status_code)
            leaked = [m for m in MARKERS if m in response.content.decode(errors="replace")]
            assert not leaked, f"{url} shows a stranger {leaked}"
            checked.append(url)
            continue
        client.force_login(world.stranger)
        method = "get"
        response = client.get(url)
        if response.status_code == 405:
            method = "post"
            response = client.post(url)
        assert response.status_code == 404, f"{method.upper()} {url} as a stranger: {response.status_code}, expected 404"
        client.force_login(world.viewer)
        response = _send(client, method, url)
        if method == "get":
            assert response.status_code < 400, f"GET {url} as a viewer: {response.status_code}"
        else:
            assert response.status_code == 403, f"POST {url} as a viewer: {response.status_code}, expected 403"
        checked.append(url)
    assert len(checked) >= 15  # the walk found the apps' routes


# --- The API, walked through its OpenAPI schema --------------------------------------------------


def _schema_value(schema: dict, components: dict, world, name: str = ""):
    """A valid value for a JSON schema: required properties only, ids pointing into the world."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if name in ("domain_id",):
        return world.domain.pk
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _schema_value(options[0], components, world, name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        wanted = set(schema.get("required", [])) | ({"domain_id"} & set(props))
        return {key: _schema_value(props[key], components, world, key) for key in sorted(wanted)}
    return {"string": "x", "integer": 1, "number": 0.5, "boolean": False, "array": []}.get(kind, {})


def _api_operations():
    schema = api.get_openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation, components


def _api_request(world, path: str, method: str, operation: dict, components: dict, *, with_domain: bool):
    """(url, body, takes_an_id) for one operation."""
    url, query, takes_id = path, {}, False
    for param in operation.get("parameters", []):
        name, where = param["name"], param["in"]
        if where == "path":
            value = _id_by_name(world, param["name"])
            if value is not None:
                takes_id = True
            elif name == "name":
                value = "load_data"
            else:
                pytest.fail(f"{method.upper()} {path} takes {{{name}}}: say in tests/test_permissions_urlconf.py what it names")
            url = url.replace("{" + name + "}", str(value))
        elif name == "domain_id" and with_domain:
            query[name], takes_id = world.domain.pk, True
        elif param.get("required"):
            query[name] = "olgas" if name == "query" else world.viewer.username if name == "username" else 1
    body = None
    if "requestBody" in operation:
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body = _schema_value(body_schema, components, world)
        if isinstance(body, dict) and "domain_id" in body:
            takes_id = True
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url, body, takes_id


def test_it_guards_every_api_operation(client, world):
    checked = []
    for path, method, operation, components in _api_operations():
        if (method.upper(), path) in PUBLIC_API:
            continue
        for with_domain in (True, False):
            url, body, takes_id = _api_request(world, path, method, operation, components, with_domain=with_domain)
            if not takes_id:
                if method != "get":
                    pytest.fail(f"{method.upper()} {path} takes no domain/experiment/run/atom id: "
                                "check it and list it in PUBLIC_API, or give it an id")
                client.force_login(world.stranger)
                response = client.get(url)
                assert response.status_code < 400, (url, response.status_code)
                leaked = [m for m in MARKERS if m in response.content.decode(errors="replace")]
                assert not leaked, f"GET {url} shows a stranger {leaked}"
                checked.append(url)
                continue
            client.force_login(world.stranger)
            response = _send(client, method, url, body)
            assert response.status_code == 404, (
                f"{method.upper()} {url} as a stranger: {response.status_code} {response.content[:200]!r}, expected 404")
            assert response.json()["detail"]
            client.force_login(world.viewer)
            response = _send(client, method, url, body)
            if method == "get":
                assert response.status_code < 400, f"GET {url} as a viewer: {response.status_code} {response.content[:200]!r}"
            else:
                assert response.status_code == 403, (
                    f"{method.upper()} {url} as a viewer: {response.status_code} {response.content[:200]!r}, expected 403")
                assert response.json()["detail"]
            checked.append(url)
    assert len(checked) >= 30


def test_it_lists_public_routes_that_exist(client):
    """The public lists name real routes (a renamed route must leave them too)."""
    web = {(ns, name, route) for ns, name, route, _ in _web_routes()}
    assert set(PUBLIC_WEB) <= web
    operations = {(method.upper(), path) for path, method, _, _ in _api_operations()}
    assert PUBLIC_API <= operations
