import hashlib
import secrets

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_generate() -> str:
    return "dojo_" + secrets.token_urlsafe(32)


class BearerTokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`; tokens are stored hashed (domains.ApiToken)."""

    def authenticate(self, request: HttpRequest, token: str):
        from domains.models import ApiToken

        api_token = (
            ApiToken.objects.select_related("user")
            .filter(token_hash=token_hash(token), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if api_token is None:
            return None
        ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=timezone.now())
        request.user = api_token.user
        return api_token.user
