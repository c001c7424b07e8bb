"""What a new user meets first, run as they run it (subprocesses): a wrong --data, the
benchmark and exactness scripts without MELD, a missing optional package."""
import pytest

from cli_helpers import assert_one_clean_line, run_cli


@pytest.mark.parametrize("dataset", ["meld", "iemocap"])
def test_data_that_is_a_file_is_called_a_file(tmp_path, dataset):
    path = tmp_path / "train_sent_emo.csv"
    path.write_text("Sr No.,Utterance\n")
    proc = run_cli("train", "--dataset", dataset, "--data", path, "--out", tmp_path / "run")
    assert_one_clean_line(proc, 2, f"{path} is a file, not a directory", "--data")
    assert "not found" not in proc.stderr
