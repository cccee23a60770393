"""Bearer-token checks for the admin and inference routes (constant-time comparison)."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.errors import AdminDisabled, MissingCredentials, WrongCredentials


def check_token(expected: SecretStr, token: str | None) -> None:
    """Raise MissingCredentials (401) without a bearer token, WrongCredentials (403) with another one."""
    if not token:
        raise MissingCredentials("this route needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise WrongCredentials("the bearer token is not valid for this route")


def check_admin(admin_token: SecretStr | None, binds_loopback: bool, token: str | None) -> None:
    """Admin routes need the admin token; without one configured they are open on loopback only."""
    if admin_token is not None:
        check_token(admin_token, token)
    elif not binds_loopback:
        raise AdminDisabled("admin routes are disabled: set KEN_ADMIN_TOKEN (the server listens beyond loopback)")


def check_api(api_token: SecretStr | None, token: str | None) -> None:
    """Inference and read routes need the API token when one is configured."""
    if api_token is not None:
        check_token(api_token, token)
