"""Docker packaging, checked as text: what goes into the build context and what compose passes."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]


def test_build_context_leaves_out_the_venv_and_git():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv/", ".git/"} <= ignored


def test_compose_passes_the_admin_key_and_mounts_the_config_folder():
    gateway = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["gateway"]
    assert "GATEWAY_ADMIN_KEY" in gateway["environment"]
    config_path = gateway["environment"]["GATEWAY_CONFIG"]
    mounts = [volume.split(":") for volume in gateway["volumes"]]
    # A folder, never config.toml itself: a single-file bind mount keeps the old inode when the
    # file is replaced (editors, sed -i), so the container would never see the edit.
    assert all(not source.endswith(".toml") for source, *_ in mounts)
    folder = next(target for _, target, *_ in mounts if config_path.startswith(target + "/"))
    assert config_path == f"{folder}/config.toml"
    assert (REPO / "config.toml").is_file()
