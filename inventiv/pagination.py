"""The default paginator, for views that paginate a selector's queryset themselves."""

from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from rest_framework.pagination import BasePagination, LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.settings import api_settings
from rest_framework.views import APIView


class Pagination(LimitOffsetPagination):
    """``?limit=&offset=``: 50 by default, at most 500 a page (a bigger limit is capped); an
    offset past the end (however large) is an empty page, never a database error."""

    default_limit = 50
    max_limit = 500
    max_offset = 2**62  # far past any table, and offset + limit still fits in a bigint

    def get_offset(self, request: Request) -> int:
        return min(super().get_offset(request), self.max_offset)


def default_pagination_class() -> type[BasePagination]:
    """``REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]``. DRF's settings object imports that dotted
    path into the class; the stubs type the attribute as the raw string.

    A view that paginates with :func:`paginated_response` sets ``pagination_class`` to it, so
    that the schema documents its list in the pagination envelope (``count``, ``next``,
    ``previous``, ``results``) with the ``limit`` and ``offset`` parameters."""
    return cast("type[BasePagination]", api_settings.DEFAULT_PAGINATION_CLASS)


def default_paginator() -> BasePagination:
    """A new instance of :func:`default_pagination_class`."""
    return default_pagination_class()()


def paginated_response(
    request: Request, view: APIView, queryset: QuerySet[Any], serializer_class: type[Serializer]
) -> Response:
    """One page of ``queryset``, serialized, in the default pagination envelope."""
    paginator = default_paginator()
    page = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer_class(page, many=True).data
    return paginator.get_paginated_response(data)
