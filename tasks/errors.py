"""The two kinds of failure Forja tells apart: bad input (fix it, don't retry) and everything else."""

from __future__ import annotations


class ForjaInputError(ValueError):
    """Bad input or configuration. The message names the file, record or key and the fix.

    Never retried: rerunning cannot fix a broken file. The command line exits with code 2.
    """


def is_transient(exc: BaseException) -> bool:
    """True for faults a retry can fix: network, object store, timeouts, preemption."""
    if isinstance(exc, ForjaInputError):
        return False
    transient: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        import botocore.exceptions as bce

        transient += (bce.ConnectionError, bce.HTTPClientError, bce.ReadTimeoutError)
    except ImportError:  # pragma: no cover - botocore ships with s3fs
        pass
    try:
        import requests

        transient += (requests.ConnectionError, requests.Timeout)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, transient):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)
