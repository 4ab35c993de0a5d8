"""The loader names the file, the line and the field of every problem, and says what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicyError, default_policy_path, load_policy, parse_policy

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing `fragment`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in text")


def problems_of(text: str, source: str = "policy.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source=source)
    return [str(problem) for problem in caught.value.problems]


def test_default_policy_loads_from_its_file() -> None:
    policy = load_policy(default_policy_path())
    assert policy.metadata.name == "kr-default"
    assert policy.spec.jurisdiction.code == "KR"


def test_broken_yaml_names_line_and_column() -> None:
    text = DEFAULT_TEXT.replace("  name: kr-default", "  name: [kr-default")
    (problem,) = problems_of(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, 'description: Personal data')}: invalid YAML (column ")
    assert "expected ',' or ']'" in problem


def test_tab_indentation_is_a_yaml_error_with_its_line() -> None:
    text = DEFAULT_TEXT.replace("    code: KR\n", "\tcode: KR\n")
    (problem,) = problems_of(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, chr(9) + 'code: KR')}: invalid YAML")


def test_unknown_field_is_named_with_a_suggestion_and_the_expected_fields() -> None:
    text = DEFAULT_TEXT.replace("      csapTier: high", "      csapTeir: high")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, 'csapTeir')}: spec.sites[0].csapTeir: unknown field `csapTeir`; "
        "did you mean `csapTier`? expected one of: name, kind, country, region, zones, nodeLabels, cidrs, csapTier"
    )


def test_unknown_field_inside_a_role_follows_the_dict_of_roles() -> None:
    text = DEFAULT_TEXT.replace("      permissions: [audit.read, usage.read]", "      perms: [audit.read]")
    missing, unknown = problems_of(text)
    assert missing == f"policy.yaml:{line_of(text, '  auditor:')}: spec.roles.auditor.permissions: " + (
        "required field is missing"
    )
    assert unknown == (
        f"policy.yaml:{line_of(text, 'perms:')}: spec.roles.auditor.perms: unknown field `perms`; "
        "did you mean `permissions`? expected one of: description, permissions"
    )


def test_wrong_type_names_field_line_and_the_value_given() -> None:
    text = DEFAULT_TEXT.replace("    retentionDays: 730", "    retentionDays: two years")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, 'retentionDays')}: spec.audit.retentionDays: "
        "Input should be a valid integer, unable to parse string as an integer (got 'two years')"
    )


def test_invalid_choice_lists_the_allowed_values() -> None:
    text = DEFAULT_TEXT.replace("      action: redact", "      action: permit")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, 'action: permit')}: spec.dataClasses.personal.action: "
        "Input should be 'allow', 'redact' or 'block' (got 'permit')"
    )


def test_invalid_cidr_is_located_on_its_list_item() -> None:
    text = DEFAULT_TEXT.replace("cidrs: [10.20.0.0/16]", "cidrs: [10.20.0.300/16]")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, '10.20.0.300')}: spec.sites[1].cidrs[0]: expected a network in CIDR notation "
        "with zero host bits, such as 10.0.0.0/16 (got '10.20.0.300/16')"
    )


def test_unknown_permission_lists_valid_actions() -> None:
    text = DEFAULT_TEXT.replace("permissions: [inference]\n", "permissions: [inferense]\n")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, 'inferense')}: spec.roles.model-user.permissions[0]: Input should be '*', "
        "'inference', 'deploy', 'registry.register', 'registry.promote', 'audit.read', 'usage.read', "
        "'tenants.manage', 'keys.manage' or 'metrics.read' (got 'inferense')"
    )


def test_missing_required_section() -> None:
    text = DEFAULT_TEXT.replace("  audit:\n    retentionDays: 730\n", "")
    (problem,) = problems_of(text)
    assert problem == f"policy.yaml:{line_of(text, 'spec:')}: spec.audit: required field is missing"


def test_several_problems_are_reported_together() -> None:
    text = DEFAULT_TEXT.replace("    code: KR", "    code: kr").replace(
        "    retentionDays: 730", "    retentionDays: -1"
    )
    problems = problems_of(text)
    assert [p.split(": ")[1] for p in problems] == ["spec.jurisdiction.code", "spec.audit.retentionDays"]


def test_duplicate_keys_are_errors_not_silently_overwritten() -> None:
    text = DEFAULT_TEXT.replace("    retentionDays: 730", "    retentionDays: 730\n    retentionDays: 30")
    (problem,) = problems_of(text)
    assert problem == f"policy.yaml:{line_of(text, 'retentionDays: 30')}: spec.audit.retentionDays: duplicate key"


def test_consistency_rules_are_reported_with_their_section() -> None:
    text = DEFAULT_TEXT.replace("    - name: kr-daejeon-1", "    - name: kr-seoul-1")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, '  sites:')}: spec.sites: duplicate site name `kr-seoul-1`: each must be unique"
    )


def test_complex_keys_are_refused_not_crashed_on() -> None:
    text = DEFAULT_TEXT.replace("  audit:\n", "  ? [a, b]\n  : 1\n  audit:\n")
    (problem,) = problems_of(text)
    assert problem == f"policy.yaml:{line_of(text, '? [a, b]')}: spec: mapping keys must be plain scalars"


def test_empty_and_non_mapping_documents() -> None:
    assert problems_of("") == ["policy.yaml:1: the document is empty"]
    assert problems_of("- a\n- b\n") == ["policy.yaml:1: expected a mapping with apiVersion, kind, metadata and spec"]


def test_wrong_api_version() -> None:
    text = DEFAULT_TEXT.replace("apiVersion: sovereign-stack.io/v1alpha1", "apiVersion: v1")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, 'apiVersion')}: apiVersion: "
        "Input should be 'sovereign-stack.io/v1alpha1' (got 'v1')"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "absent.yaml")
    assert str(caught.value) == f"{tmp_path / 'absent.yaml'}: file not found"


def test_errors_name_the_file_they_came_from(tmp_path: Path) -> None:
    path = tmp_path / "site-b.yaml"
    path.write_text(DEFAULT_TEXT.replace("    retentionDays: 730", "    retentionDays: []"), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(
        f"{path}:{line_of(path.read_text(), 'retentionDays')}: spec.audit.retentionDays"
    )


def test_every_identifier_type_needs_a_data_class() -> None:
    text = DEFAULT_TEXT.replace("    EMAIL: personal\n", "")
    (problem,) = problems_of(text)
    assert problem == (
        f"policy.yaml:{line_of(text, '  identifiers:')}: spec.identifiers: "
        "no data class for EMAIL: every detected identifier type needs one"
    )


def test_unknown_identifier_type_is_named_on_its_line() -> None:
    text = DEFAULT_TEXT.replace("    EMAIL: personal\n", "    EMAIL: personal\n    KR_SSN: personal\n")
    (problem,) = problems_of(text)
    assert problem.startswith(f"policy.yaml:{line_of(text, 'KR_SSN')}: spec.identifiers.KR_SSN: Input should be ")
    assert "(got 'KR_SSN')" in problem
