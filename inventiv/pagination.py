"""The default paginator, for views that paginate a selector's queryset themselves."""

from __future__ import annotations

from typing import cast

from rest_framework.pagination import BasePagination


def default_paginator() -> BasePagination:
    """A new instance of ``REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]``. DRF's settings object
    imports that dotted path into the class; the stubs type the attribute as the raw string."""
    from rest_framework.settings import api_settings

    pagination_class = cast("type[BasePagination]", api_settings.DEFAULT_PAGINATION_CLASS)
    return pagination_class()
