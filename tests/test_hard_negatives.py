"""--hard-negatives: each NLI pair's contradiction hypothesis joins its batch as a negative with a class of its own."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monocon_edge.data.text import read_pair_rows, read_pair_tsv
from monocon_edge.training.config import NLI_PAIRS, preset
from monocon_edge.training.text_task import NEGATIVES_SET, TextTask
from test_shared_data import small_sts

SNLI_LIKE = """row\tlabel\tpremise\thypothesis
0\tneutral\tP1 a dog runs .\tThe dog is happy .
1\tentailment\tP1 a dog runs .\tAn animal moves .
2\tcontradiction\tP1 a dog runs .\tThe dog sleeps .
3\tentailment\tP2 two kids play .\tChildren play .
4\tcontradiction\tP3 a man sings .\tNobody sings .
5\tentailment\tP3 a man sings .\tA person sings .
"""


def _tiny_task(tmp_path: Path, **data) -> TextTask:
    """Return the nli-pairs text task on 40 made-up premises (see _write_pairs) and a 3-pair STS file."""
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na .\tb .\t1\nc .\td .\t2\ne .\tf .\t3\n", encoding="utf-8")
    cfg = preset("nli-pairs", "monotonic")
    # dataclasses.replace, not override(): the preset's report file (shared data) must go, and override skips None.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(_write_pairs(tmp_path, 40)),
                                                            val_path=str(sts), report_path=None, report_fraction=0.0,
                                                            **data))
    return TextTask(cfg, tokenize=None)


def _write_pairs(tmp_path: Path, n: int) -> Path:
    """Return a SNLI-style file with ``n`` premises: entailment for each, a contradiction for the even ones."""
    lines = ["row\tlabel\tpremise\thypothesis"]
    for i in range(n):
        lines.append(f"{3 * i}\tentailment\tpremise {i} .\tentailed {i} .")
        if i % 2 == 0:
            lines.append(f"{3 * i + 1}\tcontradiction\tpremise {i} .\tcontradicts {i} .")
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_each_premise_gets_its_contradiction_as_hard_negative(tmp_path: Path) -> None:
    path = tmp_path / "snli.tsv"
    path.write_text(SNLI_LIKE, encoding="utf-8")
    assert read_pair_rows(str(path)) == [("P1 a dog runs .", "An animal moves .", "The dog sleeps ."),
                                         ("P2 two kids play .", "Children play .", None),
                                         ("P3 a man sings .", "A person sings .", "Nobody sings .")]
    assert read_pair_tsv(str(path)) == [(a, b) for a, b, _ in read_pair_rows(str(path))]


def test_batches_carry_each_pairs_negative_as_a_class_of_its_own(tmp_path: Path) -> None:
    task = _tiny_task(tmp_path, hard_negatives=True)
    texts = task.sentences + task.negative_sentences
    assert NEGATIVES_SET not in task.eval_sets()  # batch rows, never an evaluation set
    rows_feature = torch.arange(len(texts), dtype=torch.float32)[:, None]  # a batch row's feature = its row
    batch_size, seen_negatives = 8, 0
    for batch in task.train_batches(0, batch_size, rows_feature):
        rows = batch.inputs[0][:, 0].long().tolist()
        assert rows == batch.rows.tolist() and batch.size == len(rows)
        anchors, positives, negatives = rows[:batch_size], rows[batch_size:2 * batch_size], rows[2 * batch_size:]
        expected = [f"contradicts {texts[a].split()[1]} ." for a in anchors if int(texts[a].split()[1]) % 2 == 0]
        assert [texts[r] for r in negatives] == expected
        assert all(texts[p] == texts[a].replace("premise", "entailed") for a, p in zip(anchors, positives))
        labels = batch.labels.tolist()
        assert labels[:2 * batch_size] == list(range(batch_size)) * 2
        assert labels[2 * batch_size:] == list(range(batch_size, batch_size + len(negatives)))
        seen_negatives += len(negatives)
    assert seen_negatives > 0



def test_negatives_are_encoded_for_batches_only(tmp_path: Path) -> None:
    task = _tiny_task(tmp_path, hard_negatives=True)
    task.tokenize = lambda texts: {"input_ids": torch.zeros(len(texts), 4, dtype=torch.long),
                                   "attention_mask": torch.ones(len(texts), 4, dtype=torch.long)}

    def length_feature(input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        return mask.sum(1, keepdim=True).float().numpy()

    assert NEGATIVES_SET not in task.encode(length_feature)
    feats = task.encode(length_feature, with_batch_rows=True)
    assert set(feats) == set(task.eval_sets()) | {NEGATIVES_SET}
    assert len(feats[NEGATIVES_SET]) == len(task.negative_sentences) > 0

def test_without_the_flag_batches_hold_pairs_only(tmp_path: Path) -> None:
    task = _tiny_task(tmp_path)
    assert NEGATIVES_SET not in task.eval_sets()
    batch = next(iter(task.train_batches(0, 8, torch.zeros(len(task.sentences), 1))))
    assert batch.size == 16 and batch.labels.tolist() == list(range(8)) * 2


@pytest.mark.shared_data
def test_cli_trains_with_hard_negatives_on_real_snli(shared_data: Path, tmp_path: Path) -> None:
    sts = small_sts(shared_data, tmp_path, rows=60)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "monocon_edge", "train", "--preset", "nli-pairs", "--hard-negatives",
           "--data", str(shared_data / NLI_PAIRS[0]), "--max-train", "300", "--val-data", sts, "--report-data", sts,
           "--epochs", "2", "--batch-size", "32", "--eval-every", "1", "--distill", "1", "--out", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["data"]["hard_negatives"] is True
    assert (run / "summary.json").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--preset", "tiny-imagenet-100", "--hard-negatives"], "--hard-negatives applies to text pairs"),
    (["--preset", "nli-pairs", "--hard-negatives", "--train-encoder", "--lr-encoder", "1e-5",
      "--train-top-layers", "1"], "does not combine with --train-top-layers"),
])
def test_hard_negatives_refused_where_they_do_not_apply(args: list[str], expected: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "monocon_edge", "train", *args, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and expected in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
