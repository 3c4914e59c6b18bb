"""An organization's Hugging Face token: validated, encrypted at rest, never shown again."""

from __future__ import annotations

from apps.accounts.models import Organization
from apps.models.models import HubToken
from inventiv import crypto
from inventiv.errors import ApplicationError

# Hugging Face user access tokens are "hf_" and letters/digits; accept any printable token of
# a sane length (organizations may use fine-grained or older tokens) but no whitespace or
# control character, which an environment variable could not carry safely.
_HUB_TOKEN_MAX = 256


def hub_token_validate(token: object) -> str:
    """``token`` if it can be a Hugging Face token; ApplicationError (param ``token``) if not."""
    if (
        not isinstance(token, str)
        or not token
        or len(token) > _HUB_TOKEN_MAX
        or not token.isprintable()
        or any(ch.isspace() for ch in token)
    ):
        raise ApplicationError(
            f"token: must be a Hugging Face access token (1-{_HUB_TOKEN_MAX} printable "
            "characters, no whitespace).",
            param="token",
        )
    return token


def hub_token_set(*, organization: Organization, token: object, by: str = "") -> HubToken:
    """Store ``organization``'s Hugging Face token, encrypted (replacing any previous one).
    Raises ApplicationError (param ``token``) for an empty, over-long or non-printable token.
    Engines pick it up at their next (re)start; the token is never returned."""
    token = hub_token_validate(token)
    hub_token, _ = HubToken.objects.update_or_create(
        organization=organization,
        defaults={
            "token_encrypted": crypto.encrypt(token),
            "hint": token[-4:] if len(token) >= 12 else "",
            "updated_by": by[:254],
        },
    )
    return hub_token


def hub_token_delete(*, organization: Organization) -> bool:
    """Forget ``organization``'s token; False when it had none."""
    deleted, _ = HubToken.objects.filter(organization=organization).delete()
    return bool(deleted)
