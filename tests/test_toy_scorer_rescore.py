import json
import pytest
import torch


def test_toy_scorer_rescore_keeps_its_weights_and_refuses_a_file_its_record_does_not_describe(tmp_path, monkeypatch):
    """``--rescore`` recomputes only the teacher-dependent rows: on an unchanged teacher they come out equal to
    the training run's; a weights file that is not the one its record hashes is refused, not rescored."""
    from tlcm_toy import scorer as toy_scorer
    monkeypatch.setattr(toy_scorer, "VAE_POOL", 32)            # a 2-step training run needs few round trips
    weights, results = tmp_path / "scorer.safetensors", tmp_path / "scorer.md"
    args = ["--out", str(weights), "--results", str(results)]
    threads = torch.get_num_threads()
    try:
        toy_scorer.main([*args, "--steps", "2", "--batch", "8", "--held-out", "8", "--generated", "2"])
        trained = json.loads(weights.with_suffix(".json").read_text())
        toy_scorer.main([*args, "--rescore"])
        again = json.loads(weights.with_suffix(".json").read_text())
        assert again["generated"] == trained["generated"] and again["held_out"] == trained["held_out"]
        assert again["rescored"]["command"].endswith("--rescore") and "--rescore" in results.read_text()
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1                                   # one bit of the last tensor
        weights.write_bytes(bytes(data))
        with pytest.raises(SystemExit, match="sha256 differs"):
            toy_scorer.main([*args, "--rescore"])
    finally:
        torch.set_num_threads(threads)
