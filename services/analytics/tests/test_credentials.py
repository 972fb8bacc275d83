"""The Faust worker gets the same Kafka security as every other client."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from faust.types.auth import AuthProtocol
from pydantic import SecretStr

from tests.pki import CertificateAuthority
from tollgate_analytics.credentials import broker_credentials
from tollgate_core.settings import KafkaSettings


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(Path(tmp_path_factory.mktemp("ca")))


def test_plaintext_has_no_credentials() -> None:
    assert broker_credentials(KafkaSettings()) is None


def test_ssl_uses_the_ca_bundle(ca: CertificateAuthority) -> None:
    credentials = broker_credentials(KafkaSettings(security_protocol="SSL", ssl_cafile=ca.cert))
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context.get_ca_certs()


def test_sasl_ssl_scram(ca: CertificateAuthority) -> None:
    credentials = broker_credentials(
        KafkaSettings(
            security_protocol="SASL_SSL",
            ssl_cafile=ca.cert,
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc",
            sasl_password=SecretStr("pw"),
        )
    )
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("svc", "pw")


def test_sasl_plaintext_has_no_tls() -> None:
    credentials = broker_credentials(
        KafkaSettings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="svc",
            sasl_password=SecretStr("pw"),
        )
    )
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_PLAINTEXT


def test_aws_msk_iam_is_oauthbearer() -> None:
    credentials = broker_credentials(
        KafkaSettings(
            security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", aws_region="us-east-1"
        )
    )
    assert isinstance(credentials, faust.OAuthCredentials)
    assert credentials.protocol == AuthProtocol.SASL_SSL
