"""Shared templates (managed-file header and partials), shipped as package data."""

if __name__ == "templates":
    raise ImportError("import ccfactory.templates, not the top-level 'templates' directory")
