from django.urls import path

from apps.billing.api.views import (
    PriceListView,
    RollupListView,
    UsageListView,
    UsageSummaryView,
)

urlpatterns = [
    path("usage/", UsageListView.as_view(), name="usage-list"),
    path("usage/summary/", UsageSummaryView.as_view(), name="usage-summary"),
    path("usage/rollups/", RollupListView.as_view(), name="usage-rollups"),
    path("prices/", PriceListView.as_view(), name="price-list"),
]
