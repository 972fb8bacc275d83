"""Without a policy file, a caller may use only the router's default model."""

from __future__ import annotations

from tollgate_auth.policy import InMemoryPolicyStore, Policy, load_policy_file


async def test_the_default_policy_grants_no_named_model() -> None:
    policy = Policy(load_policy_file(None), InMemoryPolicyStore())
    grants = await policy.grants(("users",))
    assert not grants.allows("anthropic.claude-3-opus")
    assert grants.allows(None)
    assert grants.allows("tollgate-local")
    admin = await policy.grants(("admin",))
    assert admin.allows("anthropic.claude-3-opus")
