"""Daily quotas hold across gateway replicas and restarts: usage is shared through OpenBao."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import openai
import pytest

from policies import ResidencyPolicy
from policies.access import Tenant
from policies.openbao import AccessStore

QUOTA = 40
HELLO = [{"role": "user", "content": "안녕하세요"}]


@pytest.fixture(scope="module")
def deploy(stack: object, default_policy: ResidencyPolicy) -> Iterator[Callable[[str], openai.OpenAI]]:
    """`deploy(name, key)`: a new gateway replica sharing usage every 0.3 s, replacing the previous one (as a
    restart does; the 2-core machine has room for one model server beside the session's)."""
    from ray import serve

    from serving.app import build_app
    from serving.config import ServingConfig

    access = default_policy.spec.access.model_copy(update={"usage_sync_seconds": 0.3})
    policy = default_policy.model_copy(update={"spec": default_policy.spec.model_copy(update={"access": access})})
    deployed: list[str] = []

    def start(name: str, key: str) -> openai.OpenAI:
        while deployed:
            serve.delete(deployed.pop())
        serve.run(
            build_app(ServingConfig(), policy, stack.card, stack.openbao.access), name=name, route_prefix=f"/{name}"
        )
        deployed.append(name)
        return openai.OpenAI(base_url=f"{stack.base_url}/{name}/v1", api_key=key, max_retries=0)

    yield start
    for name in deployed:
        serve.delete(name)


def test_a_new_replica_inherits_the_days_usage(
    deploy: Callable[..., openai.OpenAI], make_key: Callable[..., str], access_store: AccessStore
) -> None:
    key = make_key(Tenant(name="shared-quota", tokens_per_day=QUOTA))
    first = deploy("usage-a", key)
    used = 0
    while used < QUOTA:
        used += first.chat.completions.create(model="axk1-tiny", messages=HELLO, max_tokens=8).usage.total_tokens
    day = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.monotonic() + 10
    while sum(c["total_tokens"] for (t, _), c in access_store.usage_of_day(day).items() if t == "shared-quota") < used:
        assert time.monotonic() < deadline, "the first replica never shared its usage"
        time.sleep(0.1)

    second = deploy("usage-b", key)
    with pytest.raises(openai.RateLimitError) as caught:
        second.chat.completions.create(model="axk1-tiny", messages=HELLO, max_tokens=8)
    assert caught.value.code == "insufficient_quota"
    auditor = openai.OpenAI(base_url=str(second.base_url), api_key=make_key("shared-quota", "auditor"), max_retries=0)
    (row,) = auditor.get("/usage", cast_to=object)["data"]
    assert row["total_tokens"] == used
