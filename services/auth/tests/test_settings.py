from __future__ import annotations

import pytest
from pydantic import ValidationError

from tollgate_auth.settings import AuthSettings


def test_an_issuer_without_audiences_refuses_to_start() -> None:
    # every app client of the pool (or every app of a public IdP) would otherwise get in
    with pytest.raises(ValidationError, match="TOLLGATE_AUTH_AUDIENCES is empty"):
        AuthSettings(issuer="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_x")


def test_audiences_or_an_explicit_opt_out_are_accepted() -> None:
    iss = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_x"
    assert AuthSettings(issuer=iss, audiences="client-1,client-2").audience_list == (
        "client-1",
        "client-2",
    )
    assert AuthSettings(issuer=iss, allow_any_audience=True).audience_list == ()
    assert AuthSettings().issuer is None  # no external IdP: nothing to pin
