"""Progress bars appear for large loads only, and never change what is loaded."""

from llama_shared.progress import byte_progress


def test_byte_progress_is_quiet_for_small_work_and_counts_bytes_for_large(capsys):
    items = [("a", 10), ("b", 30)]
    assert list(byte_progress(items, "loading", quiet_below=100)) == ["a", "b"]
    assert capsys.readouterr().err == ""
    assert list(byte_progress(items, "loading", quiet_below=0)) == ["a", "b"]
    err = capsys.readouterr().err
    assert "loading: 100%" in err and "40.0/40.0" in err
