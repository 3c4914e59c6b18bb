from django.urls import path

from apps.billing.api.views import UsageListView, UsageSummaryView

urlpatterns = [
    path("usage/", UsageListView.as_view(), name="usage-list"),
    path("usage/summary/", UsageSummaryView.as_view(), name="usage-summary"),
]
