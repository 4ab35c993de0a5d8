"""Valid synthetic identifiers (correct checksums), shared by the detector tests and the guard benchmark."""

from __future__ import annotations

RESIDENT_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
BUSINESS_WEIGHTS = (1, 3, 7, 1, 3, 7, 1, 3, 5)


def registration_number(first_twelve: str, foreigner: bool = False) -> str:
    """A 13-digit resident (or foreigner) registration number with a valid check digit."""
    total = sum(int(digit) * weight for digit, weight in zip(first_twelve, RESIDENT_WEIGHTS, strict=True))
    return first_twelve + str(((13 if foreigner else 11) - total % 11) % 10)


def business_number(first_nine: str) -> str:
    total = sum(int(d) * w for d, w in zip(first_nine, BUSINESS_WEIGHTS, strict=True)) + int(first_nine[8]) * 5 // 10
    return first_nine + str((10 - total % 10) % 10)


def luhn_complete(prefix: str) -> str:
    """`prefix` plus the digit that makes it pass the Luhn check."""
    for check in "0123456789":
        digits = prefix + check
        total = sum(
            (int(d) * 2 - 9 if int(d) * 2 > 9 else int(d) * 2) if i % 2 else int(d)
            for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def bad_check_digit(number: str) -> str:
    return number[:-1] + str((int(number[-1]) + 1) % 10)
