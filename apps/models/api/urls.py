from rest_framework.routers import SimpleRouter

from apps.models.api.views import ModelCodeViewSet

router = SimpleRouter()
router.register("model-codes", ModelCodeViewSet, basename="model-code")
urlpatterns = router.urls
