"""Organizations, their members, invitations and audit log (REST). Every check goes through
the access-checked selectors and the capability table (apps/accounts/permissions.py): an
organization you do not belong to is not found (404), one where your role may not do it is a
403 naming the capability."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import selectors, services
from apps.accounts.auth import request_user
from apps.accounts.choices import Role
from apps.accounts.models import Invitation, Membership, Organization
from apps.accounts.permissions import Capability
from inventiv.errors import ApplicationError
from inventiv.pagination import default_pagination_class, paginated_response
from inventiv.params import path_id
from inventiv.schema import errors

SLUG_REGEX = r"[-a-z0-9_]{1,60}"


class TeamOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    slug = serializers.SlugField()
    name = serializers.CharField()
    personal = serializers.BooleanField()
    role = serializers.ChoiceField(choices=Role.choices)
    default = serializers.BooleanField()
    require_sso = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class OrganizationInSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=150)


class OrganizationUpdateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=150, required=False, help_text="Owner.")
    require_sso = serializers.BooleanField(
        required=False, help_text="Owner: members reach it only signed in by single sign-on."
    )


class TransferInSerializer(serializers.Serializer):  # type: ignore[type-arg]
    to_user = serializers.IntegerField(min_value=1, max_value=2**31 - 1)


class MemberOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    user_id = serializers.IntegerField()
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.name")
    role = serializers.ChoiceField(choices=Role.choices)
    created_at = serializers.DateTimeField()


class RoleInSerializer(serializers.Serializer):  # type: ignore[type-arg]
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationInSerializer(serializers.Serializer):  # type: ignore[type-arg]
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="In the future; default: in 7 days."
    )


class InvitationOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)
    created_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_created_by(self, obj: Invitation) -> str | None:
        return obj.created_by.email if obj.created_by else None


class InvitationCreatedOutSerializer(InvitationOutSerializer):
    link = serializers.CharField(help_text="Shown once (also e-mailed to the address).")


class AcceptInSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField(max_length=200)


class AuditOutSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor_email = serializers.CharField()
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    target_label = serializers.CharField()
    data = serializers.JSONField()  # type: ignore[assignment]
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()


def _out(membership: Membership) -> dict[str, Any]:
    org = membership.organization
    user = membership.user
    default = selectors.organization_default_membership(user=user).organization_id == org.pk
    return {
        "slug": org.slug,
        "name": org.name,
        "personal": org.personal,
        "role": membership.role,
        "default": default,
        "require_sso": org.require_sso,
        "created_at": org.created_at,
    }


def _membership(request: Request, slug: Any, capability: Capability | None = None) -> Membership:
    membership = selectors.membership_get(user=request_user(request), organization_slug=str(slug))
    if capability is not None:
        selectors.membership_check(membership=membership, capability=capability)
    return membership


class OrganizationViewSet(viewsets.ViewSet):
    """Your organizations: create, rename (owner), delete or transfer (owner), make one your
    default (where creates go when no organization is named)."""

    lookup_field = "slug"
    lookup_value_regex = SLUG_REGEX
    queryset = Organization.objects.none()  # for the schema only
    pagination_class = default_pagination_class()

    @extend_schema(responses=TeamOutSerializer(many=True))
    def list(self, request: Request) -> Response:
        user = request_user(request)
        memberships = Membership.objects.select_related("organization", "user").filter(user=user)
        rows = [_out(m) for m in memberships.order_by("organization_id")]
        return paginated_response(request, self, rows, TeamOutSerializer)  # type: ignore[arg-type]

    @extend_schema(request=OrganizationInSerializer, responses={201: TeamOutSerializer})
    def create(self, request: Request) -> Response:
        data = OrganizationInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        name = data.validated_data["name"].strip()
        if not name:
            raise ApplicationError("name must not be blank.", param="name")
        user = request_user(request)
        org = services.organization_create(name=name, owner=user)
        membership = Membership.objects.select_related("organization", "user").get(
            organization=org, user=user
        )
        return Response(TeamOutSerializer(_out(membership)).data, status=201)

    @extend_schema(responses=TeamOutSerializer)
    def retrieve(self, request: Request, slug: Any = None) -> Response:
        return Response(TeamOutSerializer(_out(_membership(request, slug))).data)

    @extend_schema(request=OrganizationUpdateSerializer, responses=TeamOutSerializer)
    def partial_update(self, request: Request, slug: Any = None) -> Response:
        membership = _membership(request, slug, Capability.READ)
        data = OrganizationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if "name" in values:
            selectors.membership_check(
                membership=membership, capability=Capability.ORGANIZATION_RENAME
            )
        if "require_sso" in values:
            selectors.membership_check(membership=membership, capability=Capability.SSO_REQUIRE)
        if not values:
            raise ApplicationError("Nothing to change: give name or require_sso.")
        if "name" in values:
            services.organization_rename(organization=membership.organization, name=values["name"])
        if "require_sso" in values:
            services.organization_set_require_sso(
                organization=membership.organization, required=values["require_sso"]
            )
        return Response(TeamOutSerializer(_out(membership)).data)

    @extend_schema(responses={204: None, **errors(409)})
    def destroy(self, request: Request, slug: Any = None) -> Response:
        membership = _membership(request, slug, Capability.ORGANIZATION_DELETE)
        services.organization_delete(organization=membership.organization)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=TransferInSerializer, responses={200: MemberOutSerializer, **errors(409)}
    )
    @action(detail=True, methods=["post"])
    def transfer(self, request: Request, slug: Any = None) -> Response:
        membership = _membership(request, slug, Capability.ORGANIZATION_TRANSFER)
        data = TransferInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        target = services.organization_transfer(
            organization=membership.organization,
            by=request_user(request),
            to_user_id=data.validated_data["to_user"],
        )
        return Response(MemberOutSerializer(target).data)

    @extend_schema(request=None, responses=TeamOutSerializer)
    @action(detail=True, methods=["post"])
    def default(self, request: Request, slug: Any = None) -> Response:
        membership = _membership(request, slug)
        services.user_set_default_organization(
            user=request_user(request), organization=membership.organization
        )
        membership.user.refresh_from_db()
        return Response(TeamOutSerializer(_out(membership)).data)

    @extend_schema(request=None, responses={204: None, **errors(409)})
    @action(detail=True, methods=["post"])
    def leave(self, request: Request, slug: Any = None) -> Response:
        membership = _membership(request, slug)
        services.membership_remove(membership=membership, by=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberViewSet(viewsets.ViewSet):
    """The members of an organization (read: every member); change a role (owner), remove a
    member (admin; an owner only by an owner; the last owner stays)."""

    queryset = Membership.objects.none()
    pagination_class = default_pagination_class()

    def _get(self, request: Request, slug: Any, pk: Any, capability: Capability) -> Membership:
        mine = _membership(request, slug, capability)
        user_id = path_id(pk, message="No such member.")
        return selectors.membership_get_for_organization(
            organization=mine.organization, user_id=user_id
        )

    @extend_schema(responses=MemberOutSerializer(many=True))
    def list(self, request: Request, organization_slug: Any = None) -> Response:
        mine = _membership(request, organization_slug, Capability.READ)
        queryset = selectors.membership_list_for_organization(organization=mine.organization)
        return paginated_response(request, self, queryset, MemberOutSerializer)

    @extend_schema(request=RoleInSerializer, responses={200: MemberOutSerializer, **errors(409)})
    def partial_update(
        self, request: Request, organization_slug: Any = None, pk: Any = None
    ) -> Response:
        target = self._get(request, organization_slug, pk, Capability.ROLES_MANAGE)
        data = RoleInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        target = services.membership_set_role(membership=target, role=data.validated_data["role"])
        return Response(MemberOutSerializer(target).data)

    @extend_schema(responses={204: None, **errors(409)})
    def destroy(self, request: Request, organization_slug: Any = None, pk: Any = None) -> Response:
        target = self._get(request, organization_slug, pk, Capability.MEMBERS_MANAGE)
        services.membership_remove(membership=target, by=request_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationViewSet(viewsets.ViewSet):
    """Invitations to an organization (owners and admins; only an owner invites an owner): the
    link is e-mailed and shown once, works once, expires, and can be revoked."""

    queryset = Invitation.objects.none()
    pagination_class = default_pagination_class()

    @extend_schema(responses=InvitationOutSerializer(many=True))
    def list(self, request: Request, organization_slug: Any = None) -> Response:
        mine = _membership(request, organization_slug, Capability.INVITATIONS_MANAGE)
        queryset = selectors.invitation_list_for_organization(organization=mine.organization)
        return paginated_response(request, self, queryset, InvitationOutSerializer)

    @extend_schema(
        request=InvitationInSerializer,
        responses={201: InvitationCreatedOutSerializer, **errors(409)},
    )
    def create(self, request: Request, organization_slug: Any = None) -> Response:
        mine = _membership(request, organization_slug, Capability.INVITATIONS_MANAGE)
        data = InvitationInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        role = Role(data.validated_data["role"])
        if role == Role.OWNER:
            selectors.membership_check(membership=mine, capability=Capability.ROLES_MANAGE)
        invitation, token = services.invitation_create(
            created_by=request_user(request),
            email=data.validated_data["email"],
            expires_at=data.validated_data.get("expires_at"),
            organization=mine.organization,
            role=role,
        )
        body = InvitationOutSerializer(invitation).data | {
            "link": services.invitation_link(token=token)
        }
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: InvitationOutSerializer, **errors(409)})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, organization_slug: Any = None, pk: Any = None) -> Response:
        mine = _membership(request, organization_slug, Capability.INVITATIONS_MANAGE)
        invitation = selectors.invitation_get_for_organization(
            organization=mine.organization,
            invitation_id=path_id(pk, message="No such invitation."),
        )
        invitation = services.invitation_revoke(invitation=invitation)
        return Response(InvitationOutSerializer(invitation).data)


class InvitationAcceptView(APIView):
    """Accept an organization's invitation with the signed-in account (the token of the link)."""

    @extend_schema(request=AcceptInSerializer, responses={200: TeamOutSerializer, **errors(409)})
    def post(self, request: Request) -> Response:
        data = AcceptInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = request_user(request)
        token = data.validated_data["token"]
        found = selectors.invitation_get_valid(token=token)
        if found is not None and found.organization_id is None:
            raise ApplicationError(
                "This is a sign-up invitation, not an organization's.", param="token"
            )
        try:
            invitation = services.invitation_accept(token=token, user=user)
        except services.InvitationRefused as exc:
            raise ApplicationError(exc.message, param=exc.param or "token") from None
        assert invitation.organization is not None
        membership = Membership.objects.select_related("organization", "user").get(
            user=user, organization=invitation.organization
        )
        return Response(TeamOutSerializer(_out(membership)).data)


class AuditListView(APIView):
    """The organization's audit log, newest first (owners and admins)."""

    pagination_class = default_pagination_class()

    @extend_schema(responses=AuditOutSerializer(many=True))
    def get(self, request: Request, organization_slug: str) -> Response:
        mine = _membership(request, organization_slug, Capability.AUDIT_READ)
        queryset = selectors.audit_list_for_organization(organization=mine.organization)
        return paginated_response(request, self, queryset, AuditOutSerializer)
