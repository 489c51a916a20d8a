"""Config: validation errors name the key, unsafe YAML is refused, and the layers apply in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tstool.cli.setup import build_config
from tstool.config import Config, resolve
from tstool.errors import ConfigError


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("model.foo=1", "model.foo: unknown key"),
        ("nosection.x=1", "nosection: unknown key"),
        ("train.lr=abc", "train.lr:"),
        ("train.batch_size=0", "train.batch_size:"),
        ("model.dropout=1.5", "model.dropout:"),
        ("articles.forms=[lower_space,upper]", "articles.forms.1:"),
        ("train.device=tpu", "train.device:"),
    ],
)
def test_invalid_values_name_the_key(cli, user_error, assignment: str, key: str) -> None:
    user_error(cli("config", "show", "--set", assignment), "invalid config", key, one_line=False)


def test_every_problem_is_reported_at_once(cli, user_error) -> None:
    result = cli("config", "show", "--set", "model.foo=1", "--set", "train.lr=-1", "--set", "train.seed=x")
    stderr = user_error(result, one_line=False)
    assert all(key in stderr for key in ("model.foo", "train.lr", "train.seed"))


def test_cross_field_rules(cli, user_error) -> None:
    user_error(
        cli("config", "show", "--set", "model.d_model=100", "--set", "model.n_heads=3"), "divisible", one_line=False
    )
    user_error(cli("config", "show", "--set", "train.lr=1e-4", "--set", "train.min_lr=1e-3"), "min_lr", one_line=False)


def test_python_yaml_tags_are_refused(cli, user_error, tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo owned']\n", encoding="utf-8")
    user_error(cli("config", "show", evil), "not valid plain YAML", "Python tags")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nosuchpreset"], "unknown preset"),
        (["missing.yaml"], "does not exist"),
        (["--set", "train.lr"], "has no '='"),
        (["--set", ".lr=1"], "bad key"),
    ],
)
def test_bad_sources(cli, user_error, args: list[str], fragment: str) -> None:
    user_error(cli("config", "show", *args), fragment)


def test_non_mapping_yaml_is_refused(cli, user_error, tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    user_error(cli("config", "show", listing), "mapping")


def test_precedence_preset_file_set(cli_json, tmp_path: Path) -> None:
    preset = resolve("tiny")
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\nmodel: {d_model: 96, n_heads: 4}\ntrain: {lr: 0.002}\n", encoding="utf-8")
    assert cli_json("config", "show")["model"]["d_model"] == preset.model.d_model != 96
    from_file = cli_json("config", "show", config)
    assert (from_file["model"]["d_model"], from_file["train"]["lr"]) == (96, 0.002)
    assert from_file["model"]["n_layers"] == preset.model.n_layers, "keys the file leaves out come from the preset"
    overridden = cli_json("config", "show", config, "--set", "model.d_model=128", "--set", "train.lr=1e-3")
    assert (overridden["model"]["d_model"], overridden["train"]["lr"]) == (128, 0.001)


def test_precedence_with_a_cli_option(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data: {limit: 3}\n", encoding="utf-8")
    assert build_config(str(config)).data.limit == 3
    assert build_config(str(config), limit=5).data.limit == 5
    assert build_config(str(config), ["data.limit=7"], limit=5).data.limit == 7


def test_library_raises_typed_errors() -> None:
    with pytest.raises(ConfigError, match="train.batch_size"):
        resolve(None, {"train.batch_size": -1})
    assert isinstance(resolve(), Config)
    assert Config().to_dict()["articles"]["words"] == ["a", "an", "the"]
