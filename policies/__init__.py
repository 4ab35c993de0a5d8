"""Residency and access policy: the model, its loader and its evaluation.

The foundation of sovereign-stack: every other package reads the policy from here and this
package imports none of them.
"""

from policies.evaluation import Decision, Effect, PolicyEvaluator
from policies.loader import (
    PolicyError,
    PolicyProblem,
    default_policy_path,
    load_default_policy,
    load_policy,
    parse_policy,
)
from policies.model import DataClass, Permission, ResidencyPolicy, RuleAction, Site
from policies.pii import Finding, PiiType, detect

__all__ = [
    "DataClass",
    "Decision",
    "Effect",
    "Finding",
    "Permission",
    "PiiType",
    "PolicyError",
    "PolicyEvaluator",
    "PolicyProblem",
    "ResidencyPolicy",
    "RuleAction",
    "Site",
    "default_policy_path",
    "detect",
    "load_default_policy",
    "load_policy",
    "parse_policy",
]
