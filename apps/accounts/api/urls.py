from django.urls import path
from rest_framework.routers import SimpleRouter

from apps.accounts.api.views import AccessTokenViewSet, MeView

router = SimpleRouter()
router.register("access-tokens", AccessTokenViewSet, basename="access-token")

urlpatterns = [path("me/", MeView.as_view(), name="me"), *router.urls]
