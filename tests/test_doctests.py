"""Run the usage examples in every module docstring (the docs' examples must stay true)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import sgs_tad

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.walk_packages(sgs_tad.__path__, prefix="sgs_tad.")
        if not m.name.endswith("__main__")
    ]
    etad = [m.name for m in pkgutil.walk_packages([str(EXAMPLES / "etad")], prefix="etad.")]
    return ["sgs_tad", *names, "etad", *etad]


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional extra that is not installed
        pytest.skip(f"{name}: {err}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
