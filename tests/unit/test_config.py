from pathlib import Path

import pytest

from scpnode.cli import main
from scpnode.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_contract(tmp_path: Path) -> None:
    s = load_settings(None, env={})
    assert (s.node.ae_title, s.node.port, s.node.max_associations) == ("SCPNODE", 11112, 16)
    assert s.node.accept_all_storage is True and s.node.allowed_calling_aets == ()
    assert s.storage.min_free_mb == 1024 and s.storage.fsync is False
    assert s.study.idle_timeout_s == 60
    assert (s.model.name, s.model.weights, s.model.device) == ("ctnet10", None, "auto")
    assert s.model.allow_synthetic is False and s.delivery.max_age_h == 24
    assert s.destinations == () and s.web.enabled is True and s.web.port == 8080


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[storage]\nspool_dir = "s"\n[database]\nurl = "sqlite:///x/a.db"\n'
        '[model]\nweights = "w.pt"\n',
    )
    s = load_settings(path, env={})
    assert s.storage.spool_dir == tmp_path / "s"
    assert s.database.url == f"sqlite:///{tmp_path}/x/a.db"
    assert s.model.weights == tmp_path / "w.pt"
    assert s.outbox_dir == tmp_path / "outbox"


def test_empty_weights_string_means_demo_weights(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, '[model]\nweights = ""\n'), env={}).model.weights is None


def test_env_overrides_typed_values_and_destinations(tmp_path: Path) -> None:
    env = {
        "SCPNODE_NODE__PORT": "11113",
        "SCPNODE_NODE__ALLOWED_CALLING_AETS": '["CT1", "CT2"]',
        "SCPNODE_MODEL__ALLOW_SYNTHETIC": "true",
        "SCPNODE_NODE__AE_TITLE": "MYNODE",
        "SCPNODE_DESTINATIONS": '[{name = "p", ae_title = "PACS", host = "h", port = 104}]',
    }
    s = load_settings(None, env=env)
    assert s.node.port == 11113 and s.node.allowed_calling_aets == ("CT1", "CT2")
    assert s.model.allow_synthetic is True and s.node.ae_title == "MYNODE"
    assert s.destinations[0].port == 104


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nprot = 1\n", "node.prot"),
        ("[nodes]\nport = 1\n", "nodes"),
        ('[node]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n', "node.ae_title"),
        ('[model]\ndevice = "tpu"\n', "model.device"),
        ('[database]\nurl = "mysql://x"\n', "database.url"),
        ('[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\n', "destinations.0.port"),
        ('[study]\nlung_kernels = ["("]\n', "study.lung_kernels"),
        ("[model]\nindeterminate = [0.6, 0.4]\n", "model.indeterminate"),
        ('[model]\nbatch_size = "big"\n', "model.batch_size"),
        ("[model]\nbatch_size = 0\n", "model.batch_size"),
        ("[model]\nbatch_size = true\n", "model.batch_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert key in str(info.value)


def test_other_scpnode_variables_are_not_keys() -> None:
    s = load_settings(None, env={"SCPNODE_CACHE_DIR": "/x", "SCPNODE_CONFIG": ""})
    assert s.node.port == 11112
    with pytest.raises(ConfigError, match="nodes"):
        load_settings(None, env={"SCPNODE_NODES__PORT": "1"})


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"node\.port"):
        load_settings(None, env={"SCPNODE_NODE__PORT": "many"})


def test_settings_are_frozen() -> None:
    s = load_settings(None, env={})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        s.node.port = 1  # type: ignore[misc]


def test_cli_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[node]\nmax_associations = 0\n")
    assert main(["audit", "studies", "--config", str(path)]) == 2
    assert "node.max_associations" in capsys.readouterr().err


def test_cli_exits_2_on_missing_config_file(tmp_path: Path) -> None:
    assert main(["db", "upgrade", "--config", str(tmp_path / "nope.toml")]) == 2


def test_every_key_is_documented() -> None:
    from scpnode.config import Settings

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for section, field in Settings.model_fields.items():
        if section == "source":
            continue
        assert f"[{section}]" in doc or f"[[{section}]]" in doc, section
        model = field.annotation
        inner = getattr(model, "model_fields", None)
        if inner is None:  # destinations: a tuple of Destination
            from scpnode.config import Destination

            inner = Destination.model_fields
        for key in inner:
            assert f"`{key}`" in doc, f"{section}.{key} missing from docs/configuration.md"
