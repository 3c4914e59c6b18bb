from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed static files; a file missing from the manifest (e.g. before
    ``collectstatic`` in a test run) falls back to its plain name instead of a 500."""

    manifest_strict = False
