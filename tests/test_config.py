"""The daemon's TOML config: defaults, overrides, and refusals that name the key and its line."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pi_search.config import Config, as_dict, load_config
from pi_search.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_bind_localhost_and_are_frozen():
    c = load_config()
    assert c == Config()
    assert c.server.host == "127.0.0.1" and c.server.port == 8080
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.server.port = 1


def test_file_values_and_flag_overrides(tmp_path):
    p = write(tmp_path, '[camera]\nsource = "opencv:0"\nfps = 10\n\n[gate]\nsize = [16, 12]\n'
                        '[server]\nport = 9000\ntoken = "s3cret"\n')
    c = load_config(p, {"server.port": 8123, "camera.fps": None, "index.bundle": "/srv/b"})
    assert c.camera.source == "opencv:0"
    assert c.camera.fps == 10.0 and isinstance(c.camera.fps, float)
    assert c.gate.size == (16, 12)
    assert c.server.port == 8123  # the flag wins
    assert c.index.bundle == "/srv/b"
    assert as_dict(c)["server"]["token"] == "***"


@pytest.mark.parametrize("text, message", [
    ('[camera]\nsource = "x"\n\n[gate]\nthreshhold = 3\n', r"\[gate\] threshhold \(line 5\): unknown key"),
    ("[camera]\nwidth = 'wide'\n", r"\[camera\] width \(line 2\): 'wide' is not an integer"),
    ("[server]\nport = 70000\n", r"\[server\] port \(line 2\): 70000 is outside 1..65535"),
    ("[model]\nruntime = 'tensorflow'\n", r"\[model\] runtime \(line 2\): 'tensorflow' is not one of"),
    ("[gate]\nenabled = 1\n", r"\[gate\] enabled \(line 2\): 1 is not true or false"),
    ("[gate]\nsize = [32]\n", r"size \(line 2\): \[32\] is not a list of 2 positive integers"),
    ("\n[cameras]\nfps = 3\n", r"unknown section \[cameras\] \(line 2\)"),
    ("[camera\n", "not valid TOML"),
])
def test_bad_files_are_refused_with_key_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_bad_override_names_the_key():
    with pytest.raises(ConfigError, match=r"\[server\] port: 'eighty' is not an integer"):
        load_config(None, {"server.port": "eighty"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"camera.colour": "red"})


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("args, message", [
    ([], "no bundle to search: pass --bundle DIR"),
    (["--bundle", "b", "--source", "webcam"], "unknown source 'webcam'"),
    (["--bundle", "b", "--port", "0"], r"\[server\] port: 0 is outside 1..65535"),
])
def test_serve_refuses_bad_settings_in_one_line(tmp_path, args, message):
    from click.testing import CliRunner

    from pi_search.cli import main

    res = CliRunner().invoke(main, ["serve", *args])
    assert res.exit_code == 2
    assert re.search(message, res.output)
    assert res.output.startswith("error: ") and "Traceback" not in res.output
