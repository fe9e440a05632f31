"""Every command-line flag comes from exactly one declaration (``pyrovae.options``), and every
declared option has its flag (issue 25): the parsers are walked, not listed."""

import argparse

import pytest

import pyrovae.runs
from pyrovae.cli import build_parser
from pyrovae.options import OPTION_ATTRIBUTE, Option, Options

# Flags of argparse's and of the program itself, not options of a command.
NOT_OPTIONS = {"-h", "--help", "--version"}


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize(
    "command",
    [
        "evaluate",
        "sample",
        "gradvar",
        "gap",
        "bdmc",
        "train",
    ],
)
def test_every_flag_of_a_command_comes_from_one_declaration(command):
    hand_made = [
        action.option_strings
        for action in _commands()[command]._actions
        if action.option_strings
        and not set(action.option_strings) & NOT_OPTIONS
        and not isinstance(getattr(action, OPTION_ATTRIBUTE, None), Option)
    ]
    assert not hand_made, f"declared by hand in {command}: {hand_made}"


@pytest.mark.parametrize("name", ["EVALUATE", "SAMPLE", "GRADVAR", "GAP", "BDMC"])
def test_every_declared_option_has_its_flag_and_its_function_keyword(name):
    options: Options = getattr(pyrovae.runs, name)
    command = {"EVALUATE": "evaluate"}.get(name, name.lower())
    flags = {
        getattr(a, OPTION_ATTRIBUTE).name
        for a in _commands()[command]._actions
        if hasattr(a, OPTION_ATTRIBUTE)
    }
    assert {o.name for o in options} <= flags
    # The function takes each as a keyword, checked by the declaration's rule: a bad value
    # is refused naming the keyword, an unknown keyword as Python refuses it.
    function = getattr(pyrovae.runs, f"{command}_run")
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        function("run", no_such_option=1)
    for option in options:
        if option.rule is not None and option.rule.kind == "int":
            with pytest.raises(ValueError, match=f"^{option.name} must be"):
                function("run", **{option.name: "many"})
            break


def test_a_declaration_makes_its_flag_and_checks_its_values():
    k = Option("k", 5, "samples", pyrovae.runs.POSITIVE)
    split = Option("split", "test", "the data", choices=("train", "test"))
    options = Options(k, split, Option("fast", False, "a switch"))
    parser = argparse.ArgumentParser()
    options.add_to(parser)
    args = parser.parse_args(["--k", "7", "--fast"])
    assert options.from_args(args) == {"k": 7, "split": "test", "fast": True}
    assert options.bind({"k": 3}, "f").__dict__ == {"k": 3, "split": "test", "fast": False}
    with pytest.raises(ValueError, match=r"^--k must be an integer >= 1, got 0"):
        options.checked({"k": 0})
    with pytest.raises(ValueError, match="unknown split 'valid'; choose one of: train, test"):
        options.bind({"split": "valid"}, "f")
    with pytest.raises(ValueError, match="declared twice"):
        Options(k, k)
