"""The command line's conventions: --version, help with defaults and examples, and exit status
1 for a command that failed against 2 for bad usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallcls.cli import build_parser, main
from smallcls.cli_help import shows_default


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_version_names_the_package(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("smallcls ")


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_shows_examples_and_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "examples: smallcls " in text and f"smallcls {command} " in text
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if shows_default(action) and action.option_strings:
            value = action.default
            shown = " ".join(value) if isinstance(value, list) else str(value)
            said = [f"default: {shown}", f"default {shown}", f"default: {value}"]
            if isinstance(value, Path):  # an installed file, named by its project path
                said.append(f"default: {value.parent.name}/{value.name}")
            assert any(s in text for s in said), f"{command} {action.dest}: no default shown"


def test_defaults_are_shown_once_and_silent_defaults_not_at_all(capsys):
    with pytest.raises(SystemExit):
        main(["loadtest", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert "users of a single run (default: [tool.locust] users, else 8)" in text
    assert "--web-port WEB_PORT port of the web UI (--web) (default: 8089)" in text
    assert "--out OUT default: loadtests_out" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_usage_error_exits_2_and_failure_exits_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export"])  # the run directory is missing: bad usage
    assert stop.value.code == 2
    assert main(["export", str(tmp_path / "no-such-run")]) == 1
    err = capsys.readouterr().err
    assert "smallcls export: error:" in err and "Traceback" not in err
