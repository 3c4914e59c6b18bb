from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.accounts.api.teams import (
    SLUG_REGEX,
    AuditListView,
    InvitationAcceptView,
    InvitationViewSet,
    MemberViewSet,
    OrganizationViewSet,
)
from apps.accounts.api.views import AccessTokenViewSet, MeView

router = SimpleRouter()
router.register("access-tokens", AccessTokenViewSet, basename="access-token")
router.register("organizations", OrganizationViewSet, basename="organization")
router.register(
    rf"organizations/(?P<organization_slug>{SLUG_REGEX})/members",
    MemberViewSet,
    basename="organization-member",
)
router.register(
    rf"organizations/(?P<organization_slug>{SLUG_REGEX})/invitations",
    InvitationViewSet,
    basename="organization-invitation",
)

urlpatterns = [
    path("me/", MeView.as_view(), name="me"),
    path("invitations/accept/", InvitationAcceptView.as_view(), name="invitation-accept"),
    path(
        "organizations/<slug:organization_slug>/audit/",
        AuditListView.as_view(),
        name="organization-audit",
    ),
    *router.urls,
]
