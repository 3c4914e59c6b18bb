from django.urls import path

from apps.billing.api.views import (
    BudgetDetailView,
    BudgetListView,
    CostsView,
    PriceListView,
    RollupListView,
    UsageExportView,
    UsageListView,
    UsageSummaryView,
)

urlpatterns = [
    path("usage/", UsageListView.as_view(), name="usage-list"),
    path("usage/summary/", UsageSummaryView.as_view(), name="usage-summary"),
    path("usage/rollups/", RollupListView.as_view(), name="usage-rollups"),
    path("usage/export.csv", UsageExportView.as_view(), name="usage-export"),
    path("prices/", PriceListView.as_view(), name="price-list"),
    path("budgets/", BudgetListView.as_view(), name="budget-list"),
    path("billing/costs/", CostsView.as_view(), name="billing-costs"),
    path("budgets/<str:budget_id>/", BudgetDetailView.as_view(), name="budget-detail"),
]
