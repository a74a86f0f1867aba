"""`onnxq <command> --help` shows argument groups, and every option of every command still parses."""

from __future__ import annotations

import argparse

import pytest

from onnxq.cli import GROUPS, build_parser

PARSER = build_parser()
COMMANDS: dict[str, argparse.ArgumentParser] = next(
    a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
#: Candidate values for an option that takes one, tried in order until its type accepts one.
SAMPLES = ("2", "0.5", "13", "cosine>=0.99", "x.npz")


def _value(action: argparse.Action) -> list[str]:
    """Command-line words that set ``action`` to something other than its default."""
    if action.nargs == 0:
        if isinstance(action, argparse.BooleanOptionalAction):
            return [action.option_strings[-1] if action.default else action.option_strings[0]]
        return [action.option_strings[0]]
    if action.choices is not None:
        choice = next(str(c) for c in action.choices if c != action.default)
        return [action.option_strings[0], choice]
    for text in SAMPLES:
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            continue
        if value != action.default:
            return [action.option_strings[0], text]
    raise AssertionError(f"no sample value for {action.option_strings}")


def _required(parser: argparse.ArgumentParser, skip: argparse.Action | None = None) -> list[str]:
    """The positional arguments and required options of ``parser``, with sample values."""
    words = []
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            words.append("model.onnx")
        elif action.required:
            words += _value(action)
    return words


@pytest.mark.parametrize("command", sorted(GROUPS))
def test_help_shows_the_groups(run_cli, command: str) -> None:
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    titles = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert [t for t in titles if t in GROUPS[command]] == list(GROUPS[command])
    parser = COMMANDS[command]
    options = {a.dest for g in parser._action_groups if g.title in GROUPS[command] for a in g._group_actions}
    ungrouped = {a.dest for a in parser._actions if a.option_strings and a.dest not in options}
    assert ungrouped <= {"help", "quiet", "debug", "allow_pickle"}  # the few that belong to no group


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_parses(command: str) -> None:
    parser = COMMANDS[command]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert options
    for action in options:
        words = [command, *_required(parser, skip=action), *_value(action)]
        args = PARSER.parse_args(words)
        assert getattr(args, action.dest) != action.default, words
