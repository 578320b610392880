"""Shared fixtures of the VLM tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def offline(monkeypatch) -> None:
    """No Hugging Face hub access: every model and processor comes from a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
