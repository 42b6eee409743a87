"""The command line: a real run on the embedded model, and one clear line with exit code 2 on bad input."""

import pytest

from ppl_ecmh.cli import main


@pytest.mark.slow
def test_sample_runs_on_the_embedded_model(smollm, capsys):
    code = main(["sample", "--prompt", "What is 2 + 2?", "--chains", "2", "--draws", "2", "--max-new-tokens", "8",
                 "--sampler", "entropy-cut", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "best completion" in out and "acceptance" in out and "tokens generated" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--model", "no-such-model", "--prompt", "hi"], "no model 'no-such-model'"),
        (["sample", "--prompt", "hi", "--alpha", "0"], "alpha"),
        (["sample", "--prompt", "hi", "--tau", "-1"], "tau"),
        (["sample", "--prompt", "hi", "--sampler", "blockwise", "--block-size", "0"], "block_size"),
        (["sample", "--prompt", "hi", "--cut", "bogus", "--sampler", "entropy-cut"], "cut"),
        (["sample", "--prompt-file", "/no/such/prompt.txt"], "prompt-file"),
        (["sample", "--prompt", "", "--no-chat"], "prompt"),
        (["sample", "--prompt", "hi", "--max-new-tokens", "100000"], "context"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(argv, words, capsys, smollm):
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ppl-ecmh: error:") and words in err, err


def test_argument_errors_exit_with_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--prompt", "hi", "--sampler", "nonsense"])
    assert exit_info.value.code == 2
