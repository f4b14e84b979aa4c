"""OAuth2 client credentials, as Microsoft Entra ID answers them, for the emulator.

Endpoints (the paths of ``login.microsoftonline.com``, served by the emulator itself):

- ``POST /{tenant}/oauth2/v2.0/token`` with ``grant_type=client_credentials``,
  ``client_id``, ``client_secret``, ``scope`` -> ``{"token_type": "Bearer",
  "expires_in", "access_token"}``; ``POST /{tenant}/oauth2/token`` (v1) takes
  ``resource=<org url>`` for ``scope`` and answers ``expires_in``/``expires_on`` as
  strings, with ``resource``. Both take the credentials in the body
  (``client_secret_post``) or an HTTP Basic header (``client_secret_basic``).
- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (tenant discovery).

Each distinct ``client_id`` becomes an application user: a ``systemusers`` row whose
``systemuserid`` is stable for that client id, so ``_modifiedby_value`` tells a sync its
own writes apart. Any secret is accepted unless ``clients`` is configured.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from crmsync.emulator.odata import format_datetime
from crmsync.emulator.settings import Settings
from crmsync.emulator.store import Store


@dataclass(frozen=True)
class Grant:
    client_id: str
    user_id: str
    expires_at: float


class AuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "error_description": description}


def user_id_for(client_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"crmsync-emulator/application-user/{client_id}"))


class TokenIssuer:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.grants: dict[str, Grant] = {}
        self.clients: set[str] = set()

    def issue(self, form: dict[str, str], *, v1: bool = False) -> dict[str, Any]:
        """A token for ``form``; ``v1`` is ``/{tenant}/oauth2/token``, which names the
        API with ``resource=`` instead of ``scope=`` and answers numbers as strings."""
        if v1 and not form.get("resource"):
            raise AuthError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'resource'.",
            )
        if form.get("grant_type") != "client_credentials":
            raise AuthError(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type "
                f"'{form.get('grant_type', '')}'.",
            )
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
        if not client_id:
            raise AuthError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            )
        allowed = self.settings.clients
        if not secret or (allowed is not None and allowed.get(client_id) != secret):
            raise AuthError(
                401,
                "invalid_client",
                f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                f"in the request is the client secret value, not the client secret ID, for a "
                f"secret added to app '{client_id}'.",
            )
        user_id = self.ensure_user(client_id)
        lifetime = self.settings.token_lifetime_s
        token = secrets.token_urlsafe(32)
        self.grants[token] = Grant(client_id, user_id, time.time() + lifetime)
        self._prune()
        if v1:
            now = int(time.time())
            return {
                "token_type": "Bearer",
                "expires_in": str(lifetime),
                "ext_expires_in": str(lifetime),
                "expires_on": str(now + lifetime),
                "not_before": str(now),
                "resource": form["resource"],
                "access_token": token,
            }
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def ensure_user(self, client_id: str) -> str:
        user_id = user_id_for(client_id)
        self.clients.add(client_id)
        if self.store.get("systemusers", user_id) is None:
            now = format_datetime(datetime.now(UTC))
            row = {
                "systemuserid": user_id,
                "fullname": f"# {client_id}",
                "applicationid": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id))
                if not _is_guid(client_id)
                else client_id.lower(),
                "internalemailaddress": None,
                "createdon": now,
                "modifiedon": now,
                "_createdby_value": user_id,
                "_modifiedby_value": user_id,
                "versionnumber": self.store.next_version(),
            }
            self.store.put("systemusers", row)
            self.store.commit()
        return user_id

    def restore_users(self) -> None:
        for client_id in sorted(self.clients):
            self.ensure_user(client_id)

    def check(self, authorization: str | None) -> Grant | None:
        """The grant behind a bearer token, or None for missing, unknown or expired ones."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        grant = self.grants.get(authorization[7:].strip())
        if grant is None or grant.expires_at <= time.time():
            return None
        return grant

    def _prune(self) -> None:
        if len(self.grants) > 10_000:
            now = time.time()
            self.grants = {t: g for t, g in self.grants.items() if g.expires_at > now}


def basic_credentials(authorization: str | None, form: dict[str, str]) -> dict[str, str]:
    """``client_secret_basic`` (RFC 6749 section 2.3.1): the client id and secret in an
    HTTP Basic header, each form-URL-encoded. Sending them in the body as well is an
    error, as the RFC allows only one method per request. Entra ID's wording for these
    two failures is not documented; the messages are the emulator's."""
    if not authorization or not authorization.lower().startswith("basic "):
        return form
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError(
            401, "invalid_client", "The Basic authorization header is malformed."
        ) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise AuthError(401, "invalid_client", "The Basic authorization header is malformed.")
    if "client_secret" in form:
        raise AuthError(
            400,
            "invalid_request",
            "The client credentials were sent both in the Authorization header and in the "
            "request body.",
        )
    return {**form, "client_id": unquote_plus(client_id), "client_secret": unquote_plus(secret)}


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# What an MSAL client must pass: ``msal.ConfidentialClientApplication(client_id,
# client_credential=secret, authority="https://127.0.0.1:<port>/<tenant>")``. MSAL (1.39,
# ``authority.canonicalize``) refuses any authority that is not https, so the emulator
# must run with ``--certfile/--keyfile`` and the client must trust the certificate
# (``REQUESTS_CA_BUNDLE``, or ``verify=<ca.pem>``). It must also pass
# ``instance_discovery=False`` (or ``validate_authority=False``): otherwise MSAL asks
# ``login.microsoftonline.com/common/discovery/instance`` (a fixed host, not the
# authority's) whether the authority is known, which needs the internet and fails.
# A client that passes neither can be given the tenant ``adfs``
# (``https://127.0.0.1:<port>/adfs``): MSAL takes that for AD FS, skips the check and
# reads ``/adfs/.well-known/openid-configuration``, served below like any tenant's.
def openid_configuration(issuer_base: str, tenant: str) -> dict[str, Any]:
    root = f"{issuer_base}/{tenant}"
    return {
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
        "issuer": f"{root}/v2.0",
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "grant_types_supported": ["client_credentials"],
        "tenant_region_scope": "EU",
    }
