"""The vision protocol of issue 11 on a GPU, at the largest budget that fits a time limit.

Pre-train a ResNet (CIFAR stem, random init) with SupCon on the 100 Tiny ImageNet classes that are NOT in
tiny-imagenet-100 (``--preset tiny-imagenet-pretrain``, the offline stand-in for ImageNet weights), then
baseline, MonoCon, std-MLP and Matryoshka all start from that encoder (``--init-from``) and fine-tune on
tiny-imagenet-100 with the preset's recipe and the same budget. Every step is a ``monocon-edge train`` subprocess.

The budget: a short probe run measures this machine's training throughput; the fine-tunes keep the preset's
epochs (head warm-up on cached features, then end to end; baseline end to end for the same epochs) and the
pre-training gets every epoch that still fits ``--budget-s``. The result JSON and Markdown table are rewritten
after every step, so a run cut short still leaves what it finished.

  python bench/gpu_vision_protocol.py --runs runs/gpu-vision --results bench/results/gpu-vision
  python bench/gpu_vision_protocol.py --device cpu --encoder smallcnn --budget-s 60 ...   # smoke test

Data: ``$MONOCON_DATA_ROOT/tiny_imagenet32_jpg/`` (default ../shared/data); ``bench/jpeg_mosaic.py`` shrinks the
two files for an upload limit (lossy, PSNR ~47 dB; the result file records ``--data-note``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from monocon_edge.files import read_jsonl
from monocon_edge.training.config import FINETUNE_EPOCHS, FINETUNE_WARMUP_EPOCHS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection_table import mean_se  # noqa: E402

PRETRAIN_EXAMPLES = 27_000  # 90 % of the 30k disjoint-class images (the preset holds out 10 % for selection)
FINETUNE_EXAMPLES = 18_000  # 90 % of the 20k tiny-imagenet-100 images
FINETUNES = (("none", ["--head", "none"]), ("monotonic", ["--head", "monotonic"]), ("mlp", ["--head", "mlp"]),
             ("matryoshka", ["--loss", "matryoshka"]))


def _finetune_budget(name: str, epochs: int, warmup: int) -> list[str]:
    """Return the epoch options of a fine-tune: heads warm up first, the baseline trains end to end only."""
    if name == "none":
        return ["--epochs", str(epochs), "--warmup-epochs", "0"]
    return ["--epochs", str(warmup + epochs), "--warmup-epochs", str(warmup)]


def _cli() -> list[str]:
    return [sys.executable, "-m", "monocon_edge.cli", "train"]


def _device_name(device: str) -> str:
    if device == "cpu":
        return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else device


def _throughput(run: Path) -> dict:
    """Return mean examples/s and s/epoch of a run's training rows, the first left out (autotuning) when >1."""
    timed = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("examples_per_s")]
    if len(timed) > 1:
        timed = timed[1:]
    if not timed:
        return {}
    return {"examples_per_s": sum(r["examples_per_s"] for r in timed) / len(timed),
            "epoch_s": sum(r["epoch_s"] for r in timed) / len(timed)}


@dataclass
class Training:
    """A ``monocon-edge train`` subprocess started by the protocol, with its log file and start time."""

    name: str
    proc: subprocess.Popen
    log: IO[str]
    started: float


class Protocol:
    """Runs the steps and keeps the result record (JSON + Markdown) current."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs: Path = args.runs
        self.common = ["--encoder", args.encoder, "--weights", "none", "--device", args.device,
                       "--num-workers", str(args.workers), "--no-deterministic"]
        self.record: dict = {
            "benchmark": "gpu_vision_protocol", "device": _device_name(args.device), "encoder": args.encoder,
            "budget_s": args.budget_s, "data_note": args.data_note, "python": platform.python_version(),
            "commands": [], "runs": {}, "plan": {},
        }
        try:
            import torch
            self.record["torch"] = torch.__version__
        except ImportError:
            pass
        self.t0 = time.monotonic()

    def train(self, name: str, options: list[str]) -> Training:
        """Start ``monocon-edge train OPTIONS --out RUNS/NAME``; return it running (output into RUNS/NAME.log)."""
        cmd = [*_cli(), *options, *self.common, "--out", str(self.runs / name)]
        self.record["commands"].append(" ".join(["monocon-edge", *cmd[3:]]))
        log = open(self.runs / f"{name}.log", "w")
        return Training(name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, time.monotonic())

    def finish(self, training: Training) -> None:
        """Wait for ``training``; record its run (or its failure) and rewrite the result files."""
        rc = training.proc.wait()
        training.log.close()
        name = training.name
        entry: dict = {"wall_s": round(time.monotonic() - training.started, 1), "rc": rc}
        summary = self.runs / name / "summary.json"
        if rc == 0 and summary.is_file():
            s = json.loads(summary.read_text())
            entry.update(head=s["head"], loss=s["loss"], truncation=s["truncation"], d_enc=s["d_enc"],
                         epochs_run=s["epochs_run"], best_epoch=s["best_epoch"], final=s["final"],
                         **_throughput(self.runs / name))
        else:
            entry["log_tail"] = (self.runs / f"{name}.log").read_text()[-3000:]
        self.record["runs"][name] = entry
        self.write()
        if rc != 0:
            raise SystemExit(f"error: {name} failed (exit {rc}); see {self.runs / f'{name}.log'}")

    def elapsed(self) -> float:
        """Return the seconds since the protocol started."""
        return time.monotonic() - self.t0

    def write(self) -> None:
        """Rewrite RESULTS.json and RESULTS.md from the record."""
        out: Path = self.args.results
        out.parent.mkdir(parents=True, exist_ok=True)
        self.record["elapsed_s"] = round(self.elapsed(), 1)
        # Appended, not with_suffix: a result name with a dot ("...-lr1e-2") keeps its whole name.
        (out.parent / f"{out.name}.json").write_text(json.dumps(self.record, indent=1) + "\n")
        (out.parent / f"{out.name}.md").write_text(markdown(self.record))


def _fig(final: dict, key: str) -> str:
    value = final.get(key)
    return "-" if value is None else f"{100 * value:.1f}"


def _seed_means(record: dict) -> list[str]:
    """Return Markdown rows of mean ± standard error over the training seeds of each fine-tune (none if one seed)."""
    groups: dict[str, list[dict]] = {}
    for name, r in record["runs"].items():
        if name.startswith("tin-") and "final" in r:
            groups.setdefault(name.split("-seed")[0], []).append(r)
    if all(len(runs) < 2 for runs in groups.values()):
        return []
    lines = ["", "Mean ± standard error over the training seeds (same split, same pre-trained encoder):", "",
             "| run | seeds | d_eff | report R@1 full | report R@1 @16 | selection R@1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for head, runs in groups.items():
        trunc = "prefix" if runs[0].get("truncation") == "prefix" else "pca"
        cells = []
        for key, scale in (("d_eff", 1.0), ("report_recall@1", 100.0), (f"report_recall@1_{trunc}16", 100.0),
                           ("val_recall@1", 100.0)):
            values = [scale * r["final"][key] for r in runs if r["final"].get(key) is not None]
            mean, se = mean_se(values) if values else (None, None)
            cells.append("-" if mean is None else f"{mean:.1f}" if se is None else f"{mean:.1f} ± {se:.1f}")
        lines.append(f"| {head} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def markdown(record: dict) -> str:
    """Return the Markdown report of a protocol record: one row per run, the split of each column named."""
    lines = [f"# Vision protocol on {record['device']} ({record['encoder']})", "",
             f"- data: {record['data_note']}", f"- torch {record.get('torch', '?')}, python {record['python']}",
             f"- plan: {json.dumps(record['plan'])}", "",
             "Recall@1 in %. **report**: held-out images never trained on or used for a choice, queried against "
             "the train split as gallery (the figures to compare). selection: the held-out part used for early "
             "stopping. train-split: the paper's query/gallery protocol inside the train split (labelled as such). "
             "16 dims: PCA truncation (prefix for Matryoshka).", "",
             "| run | d_eff | report R@1 full | report R@1 @16 | selection R@1 | train-split R@1 | epochs (best) "
             "| images/s | s/epoch | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in record["runs"].items():
        if "skipped" in r:
            lines.append(f"| {name} | not started ({r['skipped']}) | | | | | | | | |")
            continue
        if "final" not in r:
            lines.append(f"| {name} | failed (exit {r['rc']}) | | | | | | | | {r['wall_s']} |")
            continue
        f, trunc = r["final"], "prefix" if r.get("truncation") == "prefix" else "pca"
        lines.append(
            f"| {name} | {f.get('d_eff', '-')} | {_fig(f, 'report_recall@1')} | {_fig(f, f'report_recall@1_{trunc}16')} "
            f"| {_fig(f, 'val_recall@1')} | {_fig(f, 'recall@1')} | {r['epochs_run']} ({r['best_epoch']}) "
            f"| {r.get('examples_per_s', 0):.0f} | {r.get('epoch_s', 0):.2f} | {r['wall_s']} |")
    lines += _seed_means(record)
    lines += ["", "Commands (each with the run's `--out`):", ""] + [f"    {c}" for c in record["commands"]]
    return "\n".join(lines) + "\n"


def finetune_runs(seeds: list[int]) -> list[tuple[str, list[str], str]]:
    """Return (run name, train options, head name) of every fine-tune, seed by seed, all on seed 42's split.

    Seed by seed, so a protocol cut short by its time limit still holds every head of the first seed.
    """
    return [(f"tin-{name}" + ("" if seed == 42 else f"-seed{seed}"),
             [*opts, *([] if seed == 42 else ["--seed", str(seed), "--split-seed", "42"])], name)
            for seed in seeds for name, opts in FINETUNES]


def plan_pretrain_epochs(probe_rate: float, probe_overhead_s: float, budget_left_s: float, finetune_epochs: int,
                         parallel: int, max_epochs: int, finetunes: int = len(FINETUNES)) -> tuple[int, float]:
    """Return (pre-training epochs, estimated fine-tune seconds) that fit ``budget_left_s`` at ``probe_rate``.

    A fine-tune run costs its start-up (``probe_overhead_s``, evaluation included) plus its end-to-end epochs and
    about one epoch's worth for the cached warm-up; runs sharing the device (``parallel``) are assumed to get
    1 / (0.75 * parallel) of their solo speed each. A 25 % margin is kept on every estimate.
    """
    ft_epoch = FINETUNE_EXAMPLES / probe_rate
    one_ft = probe_overhead_s + (finetune_epochs + 1) * ft_epoch
    waves = -(-finetunes // parallel)
    ft_total = 1.25 * waves * one_ft * (1.0 if parallel == 1 else 0.75 * parallel)
    pre_epoch = PRETRAIN_EXAMPLES / probe_rate
    epochs = int((budget_left_s - ft_total - probe_overhead_s) / (1.25 * pre_epoch))
    return max(4, min(max_epochs, epochs)), ft_total


def main() -> int:
    """Run the protocol; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="folder for the run directories")
    p.add_argument("--results", type=Path, required=True, help="result path without suffix (.json and .md)")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers per training process")
    p.add_argument("--parallel", type=int, default=2, help="fine-tunes run at the same time")
    p.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole protocol")
    p.add_argument("--pretrain-epochs", type=int, help="skip the probe and pre-train this many epochs")
    p.add_argument("--max-pretrain-epochs", type=int, default=120)
    p.add_argument("--probe-examples", type=int, default=8000)
    p.add_argument("--finetune-epochs", type=int, help="end-to-end fine-tune epochs (default: the preset's)")
    p.add_argument("--warmup-epochs", type=int, help="head warm-up epochs (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42],
                   help="training seeds of the fine-tunes, all on the split of seed 42 (runs tin-HEAD[-seedS])")
    p.add_argument("--deadline-s", type=float,
                   help="start no fine-tune wave that would end after this many seconds (the last wave's time "
                        "as the estimate); the runs not started are recorded as such")
    p.add_argument("--max-train", type=int, help="stratified subset of every data file (smoke tests)")
    p.add_argument("--data-note", default="../shared/data/tiny_imagenet32_jpg as shipped")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    proto = Protocol(args)
    finetune_epochs = args.finetune_epochs or FINETUNE_EPOCHS
    warmup_epochs = FINETUNE_WARMUP_EPOCHS if args.warmup_epochs is None else args.warmup_epochs
    if args.max_train:
        proto.common += ["--max-train", str(args.max_train)]
    if args.pretrain_epochs:
        epochs = args.pretrain_epochs
        proto.record["plan"] = {"pretrain_epochs": epochs, "source": "--pretrain-epochs"}
    else:
        # Three epochs, each timed on its own: the first (cuDNN autotuning, worker start-up) is left out of the
        # rate. One timed row over two epochs once made the rate 5x too low on an H100 (bench/results/gpu-*).
        probe = proto.train("probe", ["--preset", "tiny-imagenet-pretrain", "--head", "none", "--epochs", "3",
                                      "--eval-every", "1", "--max-train", str(args.probe_examples)])
        proto.finish(probe)
        rate = proto.record["runs"]["probe"]["examples_per_s"]
        overhead = proto.record["runs"]["probe"]["wall_s"] - 3 * int(0.9 * args.probe_examples) / rate
        epochs, ft_s = plan_pretrain_epochs(rate, max(overhead, 5.0), args.budget_s - proto.elapsed(),
                                            finetune_epochs, args.parallel, args.max_pretrain_epochs,
                                            len(FINETUNES) * len(args.seeds))
        proto.record["plan"] = {"probe_examples_per_s": round(rate), "probe_overhead_s": round(overhead, 1),
                                "pretrain_epochs": epochs, "finetune_estimate_s": round(ft_s)}
    proto.write()
    proto.finish(proto.train("pretrain", ["--preset", "tiny-imagenet-pretrain", "--head", "none",
                                          "--epochs", str(epochs)]))
    pending = finetune_runs(args.seeds)
    last_wave_s = 0.0
    while pending:
        wave, pending = pending[:args.parallel], pending[args.parallel:]
        if args.deadline_s is not None and proto.elapsed() + last_wave_s > args.deadline_s:
            # A wave the time limit would kill leaves nothing; say which runs were not started, and why.
            for run, _, _ in [*wave, *pending]:
                proto.record["runs"][run] = {"skipped": f"--deadline-s {args.deadline_s:g}: {proto.elapsed():.0f} s "
                                                        f"spent, the last wave took {last_wave_s:.0f} s"}
            proto.write()
            break
        wave_start = proto.elapsed()
        started = [proto.train(run, ["--preset", "tiny-imagenet-100", *opts,
                                     "--init-from", str(args.runs / "pretrain"),
                                     *_finetune_budget(name, finetune_epochs, warmup_epochs)])
                   for run, opts, name in wave]
        for training in started:
            proto.finish(training)
        last_wave_s = proto.elapsed() - wave_start
    print(markdown(proto.record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
