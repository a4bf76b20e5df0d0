"""The policy registry (lapa.policy.base): names, export directories resolved by kind, clear errors, and
no dependency on the rest of lapa."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lapa.policy import base
from lapa.policy.base import (
    Policy,
    UnknownPolicyError,
    export_kind,
    get_policy,
    register,
    register_loader,
    registered,
    registered_kinds,
)


class Constant:
    """Always the same action; remembers its options."""

    def __init__(self, value: float = 0.0, **options) -> None:
        self.value, self.options = value, options

    def predict_action(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return np.full(7, self.value, dtype=np.float32)


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an empty registry and leaves the process's own as it was."""
    monkeypatch.setattr(base, "_FACTORIES", {})
    monkeypatch.setattr(base, "_LOADERS", {})


def _export(directory: Path, name: str, content: object) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(json.dumps(content))
    return directory


def test_register_and_get_pass_the_options() -> None:
    register("constant", Constant)
    register("half", lambda **kw: Constant(0.5, **kw))
    assert registered() == ["constant", "half"]
    policy = get_policy("half", sim="s")
    assert isinstance(policy, Policy) and policy.options == {"sim": "s"}
    action = policy.predict_action(np.zeros((8, 8, 3), np.uint8), "pick up the red cube")
    assert action.dtype == np.float32 and action.shape == (7,) and action[0] == 0.5


def test_a_name_is_registered_once() -> None:
    register("constant", Constant)
    with pytest.raises(ValueError, match="'constant' is already registered.*Constant"):
        register("constant", Constant)
    register_loader("k", Constant)
    with pytest.raises(ValueError, match="export kind 'k' is already registered"):
        register_loader("k", Constant)
    with pytest.raises(ValueError, match="non-empty"):
        register("", Constant)


def test_an_unknown_name_lists_the_registered_ones() -> None:
    register("oracle", Constant)
    register("random", Constant)
    with pytest.raises(UnknownPolicyError, match=r"policy='nope': not a registered policy \(oracle, random\)"):
        get_policy("nope")
    base._FACTORIES.clear()
    with pytest.raises(UnknownPolicyError, match=r"\(none\)"):
        get_policy("nope")


def test_a_directory_resolves_through_the_loader_of_its_kind(tmp_path: Path) -> None:
    register_loader("fake-vla", lambda directory, **kw: Constant(1.0, directory=directory, **kw))
    export = _export(tmp_path / "export", "info.json", {"kind": "fake-vla", "steps": 10})
    assert export_kind(export) == "fake-vla"
    policy = get_policy(str(export), device="cpu")
    assert policy.options == {"directory": str(export), "device": "cpu"}
    # config.json's `format` names the kind when info.json does not.
    other = _export(tmp_path / "other", "config.json", {"format": "fake-vla"})
    _export(other, "info.json", {"steps": 3})
    assert export_kind(other) == "fake-vla" and get_policy(str(other)).value == 1.0
    assert registered_kinds() == ["fake-vla"]


def test_a_directory_no_loader_claims_names_the_registered_kinds(tmp_path: Path) -> None:
    register_loader("fake-vla", Constant)
    export = _export(tmp_path / "export", "info.json", {"kind": "lapa-vla"})
    with pytest.raises(UnknownPolicyError, match="kind 'lapa-vla'; registered kinds: fake-vla"):
        get_policy(str(export))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UnknownPolicyError, match="names its kind.*registered kinds: fake-vla"):
        get_policy(str(plain))
    (plain / "info.json").write_text("not json {")
    with pytest.raises(UnknownPolicyError, match="cannot read info.json"):
        get_policy(str(plain))


def test_a_registered_name_wins_over_a_directory_of_that_name(tmp_path: Path, monkeypatch) -> None:
    register("oracle", Constant)
    _export(tmp_path / "oracle", "info.json", {"kind": "x"})
    monkeypatch.chdir(tmp_path)
    assert isinstance(get_policy("oracle"), Constant)


def test_base_imports_nothing_else_of_lapa() -> None:
    """The simulator, the server and evaluation all use the registry, so it must stand alone
    (DESIGN.md section 4): no lapa import in its source, and importing it loads no other lapa module."""
    tree = ast.parse(Path(base.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "lapa" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and (node.module or "").split(".")[0] != "lapa", node.module
    code = ("import sys, lapa.policy.base; "
            "print(sorted(m for m in sys.modules if m.startswith('lapa')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(ast.literal_eval(loaded)) == {"lapa", "lapa.policy", "lapa.policy.base"}


def test_the_simulator_registers_its_policies() -> None:
    """`oracle` and `random` exist once `lapa.sim` is imported (checked in a fresh process: this test
    module empties the registry)."""
    pytest.importorskip("pybullet")
    code = "import lapa.sim, lapa.policy as p; print(p.registered()); print(type(p.get_policy('oracle')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["['oracle',", "'random']", "ScriptedOracle"]
