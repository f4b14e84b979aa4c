"""``serve`` and ``run`` say at start-up who will be able to get in."""

from __future__ import annotations

import pytest

from crmsync.cli import _warn_about_access
from crmsync.config import load_settings


@pytest.mark.parametrize(
    ("password", "token", "expected"),
    [
        (None, None, "nobody can log in"),
        (None, "t0ken", "the console has no login"),
        ("pa55word", None, "accepts console sessions only"),
        ("pa55word", "t0ken", ""),
    ],
)
def test_access_warning(
    capsys: pytest.CaptureFixture[str], password: str | None, token: str | None, expected: str
) -> None:
    _warn_about_access(load_settings(admin_password=password, api_token=token))
    err = capsys.readouterr().err
    if expected:
        assert expected in err
    else:
        assert err == ""
    # The warning never shows a secret.
    for secret in (password, token):
        if secret:
            assert secret not in err
