"""What every Kafka client is given for each security setting (the TLS path is tested end to
end against a real TLS listener in tests/test_kafka_tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr, ValidationError

from tests.pki import CertificateAuthority
from tollgate_core.errors import ConfigurationError
from tollgate_core.settings import KafkaSettings


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(Path(tmp_path_factory.mktemp("ca")))


def test_plaintext_has_no_tls_and_no_sasl() -> None:
    kwargs = KafkaSettings(bootstrap_servers="a:9092,b:9092").client_kwargs()
    assert kwargs["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in kwargs and "sasl_mechanism" not in kwargs


def test_ssl_verifies_against_the_ca_bundle_with_a_client_certificate(
    ca: CertificateAuthority,
) -> None:
    client = ca.issue("client", server=False)
    kwargs = KafkaSettings(
        security_protocol="SSL",
        ssl_cafile=ca.cert,
        ssl_certfile=client.cert,
        ssl_keyfile=client.key,
    ).client_kwargs()
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "tollgate-test-ca"),),)
    ]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_with_a_password(mechanism: str, ca: CertificateAuthority) -> None:
    kwargs = KafkaSettings(
        security_protocol="SASL_SSL",
        ssl_cafile=ca.cert,
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username="svc",
        sasl_password=SecretStr("s3cret"),
    ).client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("svc", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_aws_msk_iam_is_oauthbearer_with_a_signed_token() -> None:
    kwargs = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1"
    ).client_kwargs()
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], AbstractTokenProvider)


async def test_the_msk_token_is_signed_for_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    kwargs = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1"
    ).client_kwargs()
    provider = kwargs["sasl_oauth_token_provider"]
    token = await provider.token()
    assert token and token == await provider.token()  # reused until it nears expiry


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        ({"sasl_mechanism": "PLAIN"}, "needs KAFKA_SECURITY_PROTOCOL"),
        ({"ssl_cafile": "/ca.pem"}, "need KAFKA_SECURITY_PROTOCOL=SSL"),
        (
            {"security_protocol": "SSL", "ssl_certfile": "/c.pem"},
            "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together",
        ),
        (
            {"security_protocol": "SSL", "sasl_mechanism": "AWS_MSK_IAM"},
            "needs KAFKA_SECURITY_PROTOCOL",
        ),
    ],
)
def test_inconsistent_settings_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**fields)  # type: ignore[arg-type]


def test_an_unreadable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match=r"KAFKA_SSL_CAFILE=.*missing\.pem"):
        settings.client_kwargs()
