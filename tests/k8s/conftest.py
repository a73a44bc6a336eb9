"""The chart's renderings, rendered once per session."""

from __future__ import annotations

import pytest
import yaml

from hxp.core import catalogue
from hxp.k8s import checks
from tests.support.helm import RENDERINGS, Rendered, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every rendering of RENDERINGS, once per session."""
    return {
        name: Rendered(
            render(r),
            catalogue.load(None, r.profile),
            checks.external_names(yaml.safe_load(f.read_text()) for f in r.value_files),
        )
        for name, r in RENDERINGS.items()
    }
