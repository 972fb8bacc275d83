"""The decision endpoint's channel and model rules, and the admin API for keys and policy."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate_core import topics
from tollgate_core.contracts import AuditEventV1


def _h(token: str) -> dict[str, str]:
    return {"Authorization": token}


@pytest.mark.parametrize(
    ("operation", "channel"),
    [
        ("publish", "/Inbound-Messages/alice"),
        ("publish", "/Inbound-Messages/alice/conversation-1"),
        ("subscribe", "/Outbound-Messages/alice"),
        ("subscribe", "/Outbound-Messages/alice/conversation-1"),
        ("subscribe", "/Outbound-Messages/alice/*"),  # a subtree of one's own channel
        ("subscribe", "/Outbound-Messages/alice/conversation-1/*"),
    ],
)
def test_own_channels_are_allowed(auth: Any, operation: str, channel: str) -> None:
    assert auth.authorize(_h(auth.token("alice")), operation, channel).status_code == 200


@pytest.mark.parametrize(
    ("operation", "channel"),
    [
        ("publish", "/Inbound-Messages/bob"),
        ("publish", "/Inbound-Messages/bob/alice"),
        ("publish", "/Inbound-Messages/*"),
        ("publish", "/Inbound-Messages"),
        ("publish", "/Outbound-Messages/alice"),  # replies are not the user's to write
        ("subscribe", "/Outbound-Messages/bob"),
        ("subscribe", "/Outbound-Messages/*"),
        ("subscribe", "/Outbound-Messages/bob/*"),
        ("subscribe", "/Outbound-Messages/*/alice"),  # a wildcard only ends one's own subtree
        ("subscribe", "/Outbound-Messages/alice/*/x"),
        ("publish", "/Inbound-Messages/alice/*"),  # never when publishing
        ("subscribe", "/Inbound-Messages/alice"),  # nor may a user read others' requests
        ("subscribe", "Outbound-Messages/alice"),
        ("invoke-typo", "/Outbound-Messages/alice"),
    ],
)
def test_other_channels_are_denied(auth: Any, operation: str, channel: str) -> None:
    response = auth.authorize(_h(auth.token("alice")), operation, channel)
    if operation == "invoke-typo":
        assert response.status_code == 400
        return
    assert response.status_code == 403, response.text
    assert response.json()["error"]["type"] == "channel_denied"


@pytest.mark.parametrize("channel", ["/Outbound-Messages/*", "/Outbound-Messages/bob"])
def test_admins_may_use_wildcards_and_any_sub(auth: Any, channel: str) -> None:
    assert auth.authorize(_h(auth.token("root", "admin")), "subscribe", channel).status_code == 200


def test_models_follow_the_groups(auth: Any) -> None:
    standard, premium = auth.token("alice"), auth.token("bob", "premium")
    assert auth.authorize(_h(standard), "invoke", model="tollgate-local").status_code == 200
    denied = auth.authorize(_h(standard), "invoke", model="claude-big")
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "model_not_allowed"
    assert auth.authorize(_h(premium), "invoke", model="claude-big").status_code == 200
    assert auth.authorize(_h(standard), "invoke").json()["models"] == ["tollgate-local"]


def test_api_keys_create_use_list_revoke(auth: Any) -> None:
    admin = _h(auth.token("root", "admin"))
    created = auth.client.post(
        "/v1/admin/api-keys",
        headers=admin,
        json={"principal": "svc-1", "groups": ["premium"], "name": "batch job"},
    )
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["key"], created.json()["id"]
    assert secret.startswith(f"tg_{key_id}_")
    stored = auth.keys._keys[key_id]
    assert secret not in repr(stored) and stored.key_hash != secret

    for headers in ({"x-api-key": secret}, {"Authorization": f"Bearer {secret}"}):
        ok = auth.authorize(headers, "publish", "/Inbound-Messages/svc-1", model="claude-big")
        assert ok.status_code == 200, ok.text
        assert (ok.json()["principal"], ok.json()["credential"]) == ("svc-1", "api_key")

    listed = auth.client.get("/v1/admin/api-keys?principal=svc-1", headers=admin).json()["keys"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]

    assert auth.client.delete(f"/v1/admin/api-keys/{key_id}", headers=admin).status_code == 200
    assert auth.client.delete(f"/v1/admin/api-keys/{key_id}", headers=admin).status_code == 404
    revoked = auth.authorize({"x-api-key": secret}, "publish", "/Inbound-Messages/svc-1")
    assert revoked.status_code == 401
    assert revoked.json()["error"] == {
        "type": "invalid_api_key",
        "message": "API key has been revoked",
    }
    actions = [
        (e.action, e.subject)
        for e in auth.publisher.on(topics.AUDIT)
        if isinstance(e, AuditEventV1) and e.action != "authorize"
    ]
    assert actions == [("api_key.create", key_id), ("api_key.revoke", key_id)]


def test_expired_and_forged_api_keys(auth: Any) -> None:
    admin = _h(auth.token("root", "admin"))
    created = auth.client.post(
        "/v1/admin/api-keys",
        headers=admin,
        json={"principal": "svc-2", "expires_at": "2020-01-01T00:00:00Z"},
    ).json()
    expired = auth.authorize({"x-api-key": created["key"]}, "invoke")
    assert expired.json()["error"]["message"] == "API key has expired"
    forged = created["key"][:-4] + "AAAA"
    assert auth.authorize({"x-api-key": forged}, "invoke").json()["error"]["type"] == (
        "invalid_api_key"
    )
    assert auth.authorize({"x-api-key": "tg_nope_x"}, "invoke").status_code == 401


def test_the_admin_api_needs_an_admin(auth: Any) -> None:
    user = _h(auth.token("alice", "premium"))
    body = {"principal": "alice"}
    assert auth.client.post("/v1/admin/api-keys", headers=user, json=body).status_code == 403
    assert auth.client.post("/v1/admin/api-keys", json=body).status_code == 401
    assert auth.client.get("/v1/admin/groups", headers=user).status_code == 403
    bootstrap = {"Authorization": "Bearer bootstrap-admin-secret"}
    assert auth.client.post("/v1/admin/api-keys", headers=bootstrap, json=body).status_code == 201


def test_group_policy_set_through_the_admin_api(auth: Any) -> None:
    admin = _h(auth.token("root", "admin"))
    user = _h(auth.token("carol", "research"))
    assert auth.authorize(user, "invoke", model="research-model").status_code == 403
    put = auth.client.put(
        "/v1/admin/groups/research",
        headers=admin,
        json={"models": ["research-model"], "tier": "research", "rank": 5},
    )
    assert put.status_code == 200, put.text
    allowed = auth.authorize(user, "invoke", model="research-model")
    assert allowed.status_code == 200 and allowed.json()["tier"] == "research"
    groups = auth.client.get("/v1/admin/groups", headers=admin).json()
    assert groups["groups"]["research"] == {
        "models": ["research-model"],
        "tier": "research",
        "rank": 5,
    }
    assert groups["default"]["models"] == ["tollgate-local"]
    bad = auth.client.put("/v1/admin/groups/research", headers=admin, json={"models": "x", "y": 1})
    assert bad.status_code == 400
    assert auth.client.delete("/v1/admin/groups/research", headers=admin).status_code == 200
    assert auth.authorize(user, "invoke", model="research-model").status_code == 403


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"operation": "fly"}', b'{"headers": 3, "operation": "invoke"}']
)
def test_malformed_decision_requests_are_400(auth: Any, body: bytes) -> None:
    response = auth.client.post("/v1/authorize", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "validation_error"
