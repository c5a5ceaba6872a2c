"""[models.NAME.quality]: defaults, limits, unknown keys, and the canary path beside the config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.support.config import MINIMAL, changed, write_config

CANARY_LINE = '{"query": "q w", "relevant": ["q w"], "irrelevant": ["x"]}\n'


def test_defaults_are_the_issue_s() -> None:
    quality = parse_config(changed(MINIMAL, "models.m.fallback", ["a"])).models["m"].quality
    assert quality.canary is None
    assert quality.probe_interval_seconds == 600
    assert quality.agreement_tolerance == 0.05
    assert quality.shadow_rate == 0.0
    assert quality.action == "skip"
    assert quality.min_rank_correlation == 0.9
    assert quality.canary_pass_share == 0.9


def test_every_key_is_read() -> None:
    values = {"probe_interval_seconds": 0, "agreement_tolerance": 0.1, "shadow_rate": 1, "action": "warn",
              "canary_pass_share": 1}
    quality = parse_config(changed(MINIMAL, "models.m.quality", values)).models["m"].quality
    assert (quality.probe_interval_seconds, quality.agreement_tolerance, quality.shadow_rate,
            quality.action, quality.canary_pass_share) == (0, 0.1, 1.0, "warn", 1.0)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("probe_interval_seconds", -1, "models.m.quality.probe_interval_seconds: Input should be greater than or equal to 0"),
    ("agreement_tolerance", 0, "models.m.quality.agreement_tolerance: Input should be greater than 0"),
    ("shadow_rate", 1.5, "models.m.quality.shadow_rate: Input should be less than or equal to 1"),
    ("shadow_rate", -0.1, "models.m.quality.shadow_rate: Input should be greater than or equal to 0"),
    ("canary_pass_share", 0, "models.m.quality.canary_pass_share: Input should be greater than 0"),
    ("canary_pass_share", 1.2, "models.m.quality.canary_pass_share: Input should be less than or equal to 1"),
    ("action", "block", "models.m.quality.action: 'block' is not one of 'skip' or 'warn'"),
    ("min_rank_correlation", 1.5, "models.m.quality.min_rank_correlation: Input should be less than or equal to 1"),
    ("canary_file", "x.jsonl", "models.m.quality.canary_file: unknown key 'canary_file'; did you mean 'canary'?"),
])
def test_bad_values_name_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(changed(MINIMAL, f"models.m.quality.{key}", value))
    assert message in str(error.value)


def test_canary_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "canary.jsonl").write_text(CANARY_LINE, encoding="utf-8")
    write_config(tmp_path / "config.toml", changed(MINIMAL, "models.m.quality.canary", "sets/canary.jsonl"))
    monkeypatch.chdir("/")  # not the config's folder
    config = load_config(tmp_path / "config.toml")
    assert config.models["m"].quality.canary == tmp_path / "sets" / "canary.jsonl"


def test_an_absolute_canary_path_stays(tmp_path: Path) -> None:
    canary = tmp_path / "elsewhere.jsonl"
    canary.write_text(CANARY_LINE, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    write_config(tmp_path / "sub" / "config.toml", changed(MINIMAL, "models.m.quality.canary", str(canary)))
    assert load_config(tmp_path / "sub" / "config.toml").models["m"].quality.canary == canary


@pytest.mark.parametrize(("content", "problem"), [
    (None, "canary.jsonl: cannot read"),
    (CANARY_LINE + '{"query": "q", "relevant": []}\n',
     "canary.jsonl line 2: 'relevant' must be a non-empty list of non-empty strings"),
])
def test_a_broken_canary_refuses_the_config(tmp_path: Path, content: str | None, problem: str) -> None:
    if content is not None:
        (tmp_path / "canary.jsonl").write_text(content, encoding="utf-8")
    write_config(tmp_path / "config.toml", changed(MINIMAL, "models.m.quality.canary", "canary.jsonl"))
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "config.toml")
    assert "config.toml: models.m.quality.canary: " in str(error.value)
    assert problem in str(error.value)


def test_without_a_quality_section_nothing_is_read(tmp_path: Path) -> None:
    write_config(tmp_path / "config.toml", MINIMAL)
    assert load_config(tmp_path / "config.toml").models["m"].quality.canary is None
