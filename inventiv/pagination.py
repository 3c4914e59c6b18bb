"""The default paginator, for views that paginate a selector's queryset themselves."""

from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.settings import api_settings
from rest_framework.views import APIView


def default_paginator() -> BasePagination:
    """A new instance of ``REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]``. DRF's settings object
    imports that dotted path into the class; the stubs type the attribute as the raw string."""
    pagination_class = cast("type[BasePagination]", api_settings.DEFAULT_PAGINATION_CLASS)
    return pagination_class()


def paginated_response(
    request: Request, view: APIView, queryset: QuerySet[Any], serializer_class: type[Serializer]
) -> Response:
    """One page of ``queryset``, serialized, in the default pagination envelope."""
    paginator = default_paginator()
    page = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer_class(page, many=True).data
    return paginator.get_paginated_response(data)
