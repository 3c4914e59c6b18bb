"""The portal's pages, one module per area; every view is a ``portal_view``."""
