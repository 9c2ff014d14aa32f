"""Test helper for tests/test_handoff.py, on PYTHONPATH of one run only: another machine's toolchain.

Every package version importlib.metadata reports reads one patch release on, as on a Mac
whose pip resolved other wheels than the converting machine's.
"""

import importlib.metadata

installed_version = importlib.metadata.version


def other_version(name: str) -> str:
    return f"{installed_version(name)}.post1"


importlib.metadata.version = other_version
