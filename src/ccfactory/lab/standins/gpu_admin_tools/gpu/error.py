"""Errors. ``GpuError`` lives in ``gpu/error.py`` as in the real tool, so an uncaught one ends
the run with the same traceback line: ``gpu.error.GpuError: <message>`` (exit status 1)."""


class GpuError(Exception):
    pass
