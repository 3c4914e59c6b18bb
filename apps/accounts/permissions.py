"""What each role may do: the one table. Every REST endpoint asks it through the access-checked
selectors (``apps.accounts.selectors.organization_check`` / ``organization_get_for_user``);
docs/teams.md shows the same table (a test keeps both in step).

* owner: everything, and alone: billing and budgets, roles, delete or transfer the organization;
* admin: members and invitations, API keys, model codes, deployments and scaling, the audit log;
* member: read, and use the models with the keys they are given.
"""

from __future__ import annotations

from enum import StrEnum

from apps.accounts.choices import Role


class Capability(StrEnum):
    READ = "read"  # see the organization's model codes, instances, keys, usage
    ORGANIZATION_RENAME = "organization.rename"
    ORGANIZATION_DELETE = "organization.delete"
    ORGANIZATION_TRANSFER = "organization.transfer"
    SSO_REQUIRE = "sso.require"  # require single sign-on of the members
    ROLES_MANAGE = "roles.manage"  # change a member's role, name an owner
    MEMBERS_MANAGE = "members.manage"  # remove members (not owners), list invitations
    INVITATIONS_MANAGE = "invitations.manage"  # invite (as admin or member), revoke
    KEYS_MANAGE = "keys.manage"
    MODELS_MANAGE = "models.manage"  # create, change, delete model codes
    DEPLOYMENTS_MANAGE = "deployments.manage"  # deploy, scale, decommission, drain, terminate
    BILLING_MANAGE = "billing.manage"  # prices, budgets
    AUDIT_READ = "audit.read"


_ALL = frozenset(Role)
_MANAGERS = frozenset({Role.OWNER, Role.ADMIN})
_OWNER = frozenset({Role.OWNER})

CAPABILITIES: dict[Capability, frozenset[Role]] = {
    Capability.READ: _ALL,
    Capability.ORGANIZATION_RENAME: _OWNER,
    Capability.ORGANIZATION_DELETE: _OWNER,
    Capability.ORGANIZATION_TRANSFER: _OWNER,
    Capability.SSO_REQUIRE: _OWNER,
    Capability.ROLES_MANAGE: _OWNER,
    Capability.MEMBERS_MANAGE: _MANAGERS,
    Capability.INVITATIONS_MANAGE: _MANAGERS,
    Capability.KEYS_MANAGE: _MANAGERS,
    Capability.MODELS_MANAGE: _MANAGERS,
    Capability.DEPLOYMENTS_MANAGE: _MANAGERS,
    Capability.BILLING_MANAGE: _OWNER,
    Capability.AUDIT_READ: _MANAGERS,
}

assert set(CAPABILITIES) == set(Capability), "every capability is in the table"


def role_can(role: Role | str, capability: Capability) -> bool:
    return Role(role) in CAPABILITIES[capability]


def roles_for(capability: Capability) -> frozenset[Role]:
    return CAPABILITIES[capability]


def refusal_message(capability: Capability) -> str:
    roles = sorted(CAPABILITIES[capability], key=list(Role).index)
    names = " or ".join(str(r.label).lower() for r in roles)
    return f"Only an {names} of this organization may do this ({capability.value})."
