"""Numeric options are checked at parse time, by one rule per kind (zfjax.argtypes), in
train.py and every visualize.py subcommand; the message names the flag (issue 9, item 5)."""

import pytest

from zfjax.commands import train, visualize


def _parse_error(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "argument --limit: must be an integer >= 1, got '0'"),
    (["--limit", "-5"], "argument --limit: must be an integer >= 1, got '-5'"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    (["--batch", "-4"], "argument --batch: must be an integer >= 1, got '-4'"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    (["--width", "inf"], "argument --width: must be a finite number > 0 and <= 4, got 'inf'"),
    (["--width", "nan"], "argument --width: must be a finite number > 0 and <= 4, got 'nan'"),
    (["--width", "0"], "argument --width: must be a finite number > 0 and <= 4, got '0'"),
    (["--size", "100000"], "argument --size: must be an integer from 64 to 1024, got '100000'"),
    (["--size", "32"], "argument --size: must be an integer from 64 to 1024, got '32'"),
    (["--size", "6.5"], "argument --size: must be an integer from 64 to 1024, got '6.5'"),
    (["--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, got '-1'"),
])
def test_train_refuses_bad_numbers_naming_the_flag(argv, message, capsys):
    assert _parse_error(train.parse_args, argv, capsys) == f"train.py: error: {message}"


def test_train_accepts_good_numbers():
    args = train.parse_args(["--limit", "1", "--lr", "1e-3", "--width", "0.25", "--size", "64",
                             "--seed", "0"])
    assert (args.limit, args.lr, args.width, args.size, args.seed) == (1, 1e-3, 0.25, 64, 0)
    assert train.build_run(args).data.train_limit == 1


@pytest.mark.parametrize("argv, message", [
    (["topk", "run", "--limit", "-3"], "argument --limit: must be an integer >= 1, got '-3'"),
    (["topk", "run", "--limit", "0"], "argument --limit: must be an integer >= 1, got '0'"),
    (["topk", "run", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["topk", "run", "--channels", "3", "-1"], "argument --channels: must be an integer >= 0"),
    (["occlusion", "run", "--size", "0"], "argument --size: must be an integer >= 1, got '0'"),
    (["occlusion", "run", "--stride", "0"], "argument --stride: must be an integer >= 1"),
    (["occlusion", "run", "--limit", "0"], "argument --limit: must be an integer >= 1"),
    (["occlusion", "run", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["maximize", "run", "--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["maximize", "run", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (["maximize", "run", "--tv-weight", "-1"], "argument --tv-weight: must be a finite number >= 0"),
    (["maximize", "run", "--seed", "-1"], "argument --seed: must be an integer from 0 to "),
    (["invariance", "run", "--rotations", "0", "nan"],
     "argument --rotations: must be a finite number, got 'nan'"),
    (["invariance", "run", "--scales", "1", "-2"],
     "argument --scales: must be a finite number > 0, got '-2'"),
    (["invariance", "run", "--translations", "inf"], "argument --translations: must be a finite"),
    (["filters", "run", "--maps", "-1"], "argument --maps: must be an integer >= 0, got '-1'"),
    (["evolution", "run", "--epochs", "0"], "argument --epochs: must be an integer >= 1"),
    (["correspondence", "run", "--parts", "p.json", "--draws", "0"],
     "argument --draws: must be an integer >= 1"),
    (["reconstructions", "run", "--limit", "0"], "argument --limit: must be an integer >= 1"),
    (["convergence", "run", "--threshold", "1.5"],
     "argument --threshold: must be a finite number > 0 and <= 1, got '1.5'"),
    (["convergence", "run", "--top", "0"], "argument --top: must be an integer >= 1"),
])
def test_visualize_refuses_bad_numbers_naming_the_flag(argv, message, capsys):
    line = _parse_error(visualize.build_parser().parse_args, argv, capsys)
    assert line.startswith(f"visualize.py {argv[0]}: error: {message}"), line


def test_occlusion_zero_is_not_read_as_the_default():
    args = visualize.build_parser().parse_args(["occlusion", "run", "--size", "1", "--stride", "1"])
    assert (args.size, args.stride) == (1, 1)
