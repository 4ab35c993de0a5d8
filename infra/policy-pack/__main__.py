"""The CrossGuard policy pack `sovereign-residency`: `pulumi preview --policy-pack infra/policy-pack`.

Every policy is generated from the residency policy document (`SOVEREIGN_POLICY`, or the shipped kr-default),
so a change to the document changes the pack with nothing to edit here. Constructing the `PolicyPack` serves it
to the Pulumi engine.
"""

import os

from pulumi_policy import EnforcementLevel, PolicyPack

from infra.crossguard import PACK_NAME, policy_pack_policies
from policies import load_default_policy, load_policy

policy_path = os.environ.get("SOVEREIGN_POLICY")
residency_policy = load_policy(policy_path) if policy_path else load_default_policy()

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policy_pack_policies(residency_policy),
    description=f"Residency policy `{residency_policy.metadata.name}` ({residency_policy.spec.jurisdiction.code}), "
    "enforced on every resource of the stack.",
)
