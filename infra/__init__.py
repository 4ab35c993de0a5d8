"""Pulumi infrastructure for an in-country site, and its CrossGuard policy pack."""
