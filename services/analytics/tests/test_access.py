"""The admin token in front of the data endpoints: off without one, Bearer only, exact."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tollgate_analytics.access import AdminAccess
from tollgate_analytics.errors import AdminDisabled
from tollgate_analytics.settings import AnalyticsSettings
from tollgate_core.errors import Unauthenticated


def test_without_a_token_the_data_endpoints_are_disabled() -> None:
    for token in (None, SecretStr("")):
        access = AdminAccess(token)
        assert not access.enabled
        with pytest.raises(AdminDisabled) as refused:
            access.check("Bearer ")
        assert refused.value.http_status == 403
        assert refused.value.error_type == "admin_disabled"
        assert "TOLLGATE_ANALYTICS_ADMIN_TOKEN" in refused.value.message


def test_only_the_bearer_token_itself_is_let_through() -> None:
    access = AdminAccess(SecretStr("s3cret"))
    access.check("Bearer s3cret")
    access.check("bearer  s3cret ")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer", "Bearer s3cre", "Bearer s3cretx"):
        with pytest.raises(Unauthenticated) as refused:
            access.check(header)
        assert refused.value.http_status == 401


def test_the_token_comes_from_the_environment_and_is_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOLLGATE_ANALYTICS_ADMIN_TOKEN", "from-env")
    settings = AnalyticsSettings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    AdminAccess(settings.admin_token).check("Bearer from-env")
