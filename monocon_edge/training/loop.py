"""The training loop: head warm-up with the encoder frozen, then differential learning rates; AdamW, cosine
schedule, grad-norm clipping, periodic evaluation, early stopping, atomic resumable checkpoints.

Model code is silent: progress goes to the optional ``on_event(kind, info)`` callback, which the CLI renders.
Under torchrun (DDP) every rank trains its shard of each global batch; rank 0 alone evaluates, writes the run
directory and emits events, and the other ranks receive its evaluation results (see ``distributed.py``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .distributed import (SINGLE, DistContext, all_reduce_grads_mean, all_reduce_sum, barrier, broadcast_object,
                          gathered_supcon)
from .distributed import setup as setup_distributed
from .distributed import teardown as teardown_distributed
from ..device.errors import MonoconError
from ..losses import build_loss, similarity_distillation
from ..models.monocon import MonoConModel, TopLayersModel, build_model, head_outputs, load_encoder_state
from .run_dir import RunDir
from .dimension_metrics import effective_dims_of
from .tasks import build_task, encode_eval_sets
from .text_task import NEGATIVES_SET
from ..events import EventFn, ignore_events

# Per-epoch seeds of rank r are offset by r * this, so ranks draw different augmentations (rank 0 = 1 process).
RANK_SEED_STRIDE = 1_000_003


@dataclass
class TrainResult:
    """What a finished (or deliberately stopped) run produced."""

    run_dir: Path
    final: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    finished: bool


@dataclass(frozen=True)
class Phase:
    """A span of epochs with one optimizer: ``warmup`` (encoder frozen) or ``main`` (differential LRs)."""

    name: str
    first_epoch: int
    last_epoch: int
    train_encoder: bool
    lr_encoder: float
    lr_head: float
    cosine: bool


def plan_phases(cfg: RunConfig) -> list[Phase]:
    """Return the run's phases. ``optim.epochs`` counts all epochs, warm-up included."""
    o, has_head = cfg.optim, cfg.model.head != "none"
    warm = min(o.warmup_epochs, o.epochs) if has_head else 0
    phases = []
    if warm:
        phases.append(Phase("warmup", 1, warm, False, 0.0, o.lr_warmup, False))
    train_encoder = not o.freeze_encoder and o.lr_encoder > 0
    if o.epochs > warm and (train_encoder or has_head):
        phases.append(Phase("main", warm + 1, o.epochs, train_encoder, o.lr_encoder, o.lr_head, True))
    return phases


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def set_determinism(enabled: bool) -> None:
    """Ask torch and cuDNN for deterministic kernels (warn-only where an op has none)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.use_deterministic_algorithms(enabled, warn_only=True)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_init_from(cfg: RunConfig) -> tuple[RunConfig, dict[str, torch.Tensor] | None]:
    """Return ``cfg`` with the encoder settings of the ``init_from`` run, and that run's best weights."""
    if not cfg.init_from:
        return cfg, None
    source = RunDir.open_existing(cfg.init_from)
    src_cfg = source.read_config()
    if src_cfg.modality != cfg.modality:
        raise MonoconError(f"--init-from {cfg.init_from} is a {src_cfg.modality} run, this is a {cfg.modality} run")
    ckpt_path = source.best_path if source.best_path.is_file() else source.last_path
    state = source.load_checkpoint(ckpt_path)["model"]
    model_cfg = dataclasses.replace(cfg.model, encoder=src_cfg.model.encoder, width=src_cfg.model.width,
                                    embed_dim=src_cfg.model.embed_dim, in_channels=src_cfg.model.in_channels,
                                    weights=src_cfg.model.weights if cfg.modality == "text" else "none")
    return dataclasses.replace(cfg, model=model_cfg), state


def _new_run_dir(path: str | Path | None, cfg: RunConfig, runs_root: str | Path,
                 made: dict[str, Any] | None = None) -> RunDir:
    """Create and return the new (empty) run directory; note in ``made`` its path and the highest folder
    created for it (None where --out was an existing empty folder), so that a failed start can undo it."""
    if path is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(runs_root) / f"{cfg.name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(runs_root) / f"{cfg.name}-{stamp}-{n}"
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise MonoconError(f"{path} already exists and is not empty: choose another --out, or --resume it")
    if made is not None:
        made.update(path=path, created=_first_missing(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MonoconError(f"cannot create the run directory {path}: {exc.strerror or type(exc).__name__}") from None
    return RunDir(path)


class Trainer:
    """Holds one run's model, task, optimizer state and early-stopping state; ``fit`` runs it to the end."""

    def __init__(self, cfg: RunConfig, run: RunDir, model: MonoConModel, task, device: torch.device,
                 on_event: EventFn | None = None, dist: DistContext = SINGLE) -> None:
        self.cfg, self.run, self.model, self.task, self.device, self.dist = cfg, run, model, task, device, dist
        self.emit = on_event if on_event is not None and dist.is_main else ignore_events
        self.channels_last = device.type == "cuda" and cfg.modality == "vision" and cfg.optim.channels_last
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if dist.enabled and cfg.optim.sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm children in place
        # What the training step calls: the model (DDP-wrapped under torchrun) or, while the encoder is
        # frozen, the head alone; torch.compile'd with --compile.
        self._train_module: nn.Module | None = None
        self._ddp: nn.Module | None = None
        self._since_eval = {"examples": 0, "seconds": 0.0, "epochs": 0}
        self.loss_fn = build_loss(cfg.optim.loss, cfg.optim.temperature)
        self.phases = plan_phases(cfg)
        self.history: list[dict[str, Any]] = []
        self.best = -float("inf")
        self.best_epoch = -1
        self.bad_evals = 0
        self.stopped_early = False
        self.epoch = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.phase: Phase | None = None
        self._features: dict[str, np.ndarray] | None = None  # encoder features, valid while the encoder is unchanged
        self._lower_states: dict | None = None  # --train-top-layers: token states of the frozen lower layers
        # --distill: the starting encoder's features of the train examples (rows = Batch.rows), kept in last.pt.
        self._reference: torch.Tensor | None = None
        self.amp_dtype = None
        if device.type == "cuda" and cfg.optim.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # ----- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume after ``self.epoch``."""
        return {
            "epoch": self.epoch, "phase": self.phase.name if self.phase else "",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "scaler": self.scaler.state_dict(),
            "early_stop": {"best": self.best, "best_epoch": self.best_epoch, "bad_evals": self.bad_evals,
                           "stopped": self.stopped_early},
            "rng": _rng_state(), "config": self.cfg.to_dict(),
            "distill_reference": self._reference,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a ``last.pt`` written by ``state_dict``."""
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])
        es = state["early_stop"]
        self.best, self.best_epoch = float(es["best"]), int(es["best_epoch"])
        self.bad_evals, self.stopped_early = int(es["bad_evals"]), bool(es["stopped"])
        if state["phase"]:
            self._enter_phase(self._phase_named(state["phase"]))
            if state["optimizer"]:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"]:
                self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self._reference = state.get("distill_reference")
        differs = torch.tensor(float(broadcast_object(self.epoch, self.dist) != self.epoch), device=self.device)
        if all_reduce_sum(differs, self.dist).item() > 0:
            raise MonoconError(f"the ranks read different checkpoints from {self.run.last_path}: was it being written?")
        self.history = [r for r in self.run.metrics() if r["epoch"] <= self.epoch]
        if self.dist.is_main:
            self.run.write_metrics(self.history)  # drop rows logged after the checkpoint

    def _phase_named(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise MonoconError(f"checkpoint phase {name!r} does not fit this run's config")

    # ----- pieces ------------------------------------------------------------------------------------------
    def _enter_phase(self, phase: Phase) -> None:
        o = self.cfg.optim
        self.phase = phase
        encoder_params = []
        if phase.train_encoder:
            encoder_params = (self.model.encoder.top_layer_parameters(o.train_top_layers) if o.train_top_layers
                              else list(self.model.encoder.parameters()))
        for p in self.model.encoder.parameters():
            p.requires_grad_(False)
        for p in encoder_params:
            p.requires_grad_(True)
        groups = []
        if encoder_params:
            groups.append({"params": encoder_params, "lr": phase.lr_encoder})
        head_params = list(self.model.head.parameters())
        if head_params:
            groups.append({"params": head_params, "lr": phase.lr_head})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
        self.scheduler = None
        if phase.cosine:
            steps = self._steps_per_epoch() * (phase.last_epoch - phase.first_epoch + 1)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(steps, 1))
        module: nn.Module = self.model.head
        if phase.train_encoder:
            start = self._top_start()
            if start is not None:
                self._token_states()  # computed here, not inside the first epoch's timing
            module = self.model if start is None else TopLayersModel(self.model, start)
            if self.dist.enabled:
                # Only the phase that trains the encoder uses DDP (built once: it registers the parameters
                # that require a gradient when it is built); head-only phases all-reduce the head's gradients.
                if self._ddp is None:
                    from torch.nn.parallel import DistributedDataParallel

                    ids = [self.device.index] if self.device.type == "cuda" else None
                    self._ddp = DistributedDataParallel(self.model, device_ids=ids)
                module = self._ddp
        self._train_module = torch.compile(module) if o.compile else module

    def _steps_per_epoch(self) -> int:
        return self.task.steps_per_epoch(self.cfg.optim.batch_size * self.dist.world_size)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.channels_last and t.ndim == 4:
            return t.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        return t.to(self.device, non_blocking=True)

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast("cuda", dtype=self.amp_dtype)

    @torch.no_grad()
    def _encode_fn(self, *inputs: torch.Tensor) -> np.ndarray:
        with self._autocast():
            out = self.model.encoder(*(self._to_device(t) for t in inputs))
        return out.float().cpu().numpy()

    def encoder_features(self) -> dict[str, np.ndarray]:
        """Return encoder features of the evaluation sets (computed once while the encoder does not change)."""
        if self._features is None:
            self.model.eval()
            start = self._top_start()
            if start is None:
                self._features = encode_eval_sets(self.task, self._encode_fn, self.model.encoder,
                                                  with_batch_rows=True)
            else:
                with torch.no_grad():
                    top = lambda states, mask: self.model.encoder.pooled_from(  # noqa: E731
                        self._to_device(states), self._to_device(mask), start)
                    self._features = {name: states.pooled(top) for name, states in self._token_states().items()}
        return self._features

    def _batch_features(self) -> np.ndarray:
        """Return the encoder features of the rows that training batches index (``TrainBatch.rows``): the train
        examples, then the hard negatives where the task has them (``NEGATIVES_SET``)."""
        feats = self.encoder_features()
        extra = feats.get(NEGATIVES_SET)
        return feats["train"] if extra is None else np.concatenate([feats["train"], extra])

    def _top_start(self) -> int | None:
        """Return the first trained encoder layer while only the top layers train (``--train-top-layers``)."""
        k = self.cfg.optim.train_top_layers
        if not k or self.phase is None or not self.phase.train_encoder:
            return None
        return self.model.encoder.num_layers - k

    def _token_states(self) -> dict:
        """Return the token states of the frozen lower layers for every evaluation set (computed once)."""
        if self._lower_states is None:
            from .feature_cache import fingerprint

            start = self._top_start()
            encoder = self.model.encoder

            @torch.no_grad()
            def lower(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return encoder.token_states(self._to_device(input_ids), self._to_device(mask), start)

            encoder.eval()
            self._lower_states = self.task.token_states(lower, start, fingerprint(encoder.lower_modules(start)))
        return self._lower_states

    def _head(self, x: np.ndarray) -> np.ndarray:
        self.model.head.eval()
        return head_outputs(self.model.head, x)

    def evaluate(self, full: bool = True) -> tuple[dict[str, Any], Any]:
        """Return (metrics, train PCA) of the current model on the task's evaluation sets."""
        feats = self.encoder_features()
        emb = {k: self._head(v) for k, v in feats.items() if k != NEGATIVES_SET}
        metrics, pca = self.task.evaluate(emb, full=full, truncation=self.cfg.truncation)
        metrics.update(effective_dims_of(feats["train"], emb["train"]))
        d = self.cfg.optim.select_dims
        if d:
            if self.cfg.truncation == "pca" and d > pca.components.shape[0]:
                raise MonoconError(f"--select-dims {d} needs a PCA of at least {d} axes, and this run's "
                                   f"{pca.components.shape[0]} training embeddings give fewer")
            metrics[self.validation_key] = self.task.validation_at(emb, pca, d, self.cfg.truncation)
        return metrics, pca

    @property
    def validation_key(self) -> str:
        """Return the metric early stopping follows: the task's, suffixed ``_pca{d}`` / ``_prefix{d}`` with
        ``--select-dims d``."""
        d = self.cfg.optim.select_dims
        return self.task.validation_metric + (f"_{self.cfg.truncation}{d}" if d else "")

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, batch) -> torch.Tensor:
        """Return this rank's SupCon loss on its batch.

        With ``gather_negatives`` under DDP, the anchors are this rank's examples and the candidates those of
        the whole global batch; the loss is scaled so that its mean over ranks (the gradient DDP averages)
        is exactly the SupCon loss one process computes on the global batch.
        """
        if not (self.dist.enabled and self.cfg.optim.gather_negatives):
            return self.loss_fn(emb, labels)
        return gathered_supcon(self.loss_fn, emb, labels, self.dist,
                               label_offset=batch.size if batch.batch_local_labels else 0)

    def _train_epoch(self) -> tuple[float, int, float]:
        """Run one epoch; return (mean loss over ranks and steps, examples seen by all ranks, seconds)."""
        o = self.cfg.optim
        cached = None
        if not self.phase.train_encoder:
            cached = torch.from_numpy(self._batch_features()).to(self.device)
        self.model.train()
        if not self.phase.train_encoder:
            self.model.encoder.eval()  # frozen: BatchNorm statistics stay as they are
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        manual_sync = self.dist.enabled and not self.phase.train_encoder  # head-only phases run without DDP
        total, steps, seen, t0 = 0.0, 0, 0, time.perf_counter()
        pin = self.device.type == "cuda"
        top_only = {"token_states": self._token_states()["train"]} if self._top_start() is not None else {}
        batches = self.task.train_batches(o.seed + self.epoch, o.batch_size, cached, o.num_workers, pin,
                                          self.dist.rank, self.dist.world_size, **top_only)
        for batch in batches:
            inputs = [self._to_device(t) for t in batch.inputs]
            labels = batch.labels.to(self.device, non_blocking=True)
            with self._autocast():
                emb = self._train_module(*inputs)
            loss = self._loss(emb.float(), labels, batch)
            if o.distill > 0:
                ref = self._reference[batch.rows].to(self.device, non_blocking=True)
                loss = loss + o.distill * similarity_distillation(emb.float(), ref)
            # Every rank sees the same (mean) loss, so a non-finite one stops all ranks together.
            value = all_reduce_sum(loss.detach(), self.dist).item() / self.dist.world_size
            if not math.isfinite(value):
                raise MonoconError(
                    f"the loss became {value} at epoch {self.epoch}, step {steps + 1}: lower the learning rate"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if manual_sync:
                all_reduce_grads_mean(params, self.dist)
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(params, o.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            total += value
            steps += 1
            seen += batch.size * self.dist.world_size
            self.emit("step", {"epoch": self.epoch, "step": steps, "loss": value})
        if steps == 0:
            raise MonoconError(
                f"not one full batch of {o.batch_size * self.dist.world_size} in {self.task.num_train} training "
                "examples: lower --batch-size"
            )
        if self.phase.train_encoder:
            self._features = None
        return total / steps, seen, time.perf_counter() - t0

    def _evaluate_on_main(self, full: bool = False) -> dict[str, Any]:
        """Return the metrics of the current model, computed once on rank 0 and sent to every rank."""
        metrics = self.evaluate(full=full)[0] if self.dist.is_main else None
        return broadcast_object(metrics, self.dist)

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.dist.is_main:
            self.run.write_metrics(self.history)
        self.emit("eval", row)

    def _consider_best(self, row: dict[str, Any], in_main: bool) -> None:
        metric = row[self.validation_key]
        if metric > self.best + self.cfg.optim.min_delta or self.best_epoch < 0:
            self.best, self.best_epoch, self.bad_evals = metric, self.epoch, 0
            if self.dist.is_main:
                self.run.save_checkpoint(self.run.best_path, {"model": self.model.state_dict(), "epoch": self.epoch,
                                                              "metric": metric, "config": self.cfg.to_dict()})
        elif in_main:
            self.bad_evals += 1
            if self.bad_evals >= self.cfg.optim.patience:
                self.stopped_early = True

    def _prepare_head(self) -> None:
        """Before the first epoch: set the monotone standardisation's statistics and the distillation reference
        from the starting encoder's train features (rank 0 computes them; every rank receives them)."""
        standardizer = getattr(self.model.head, "standardizer", None)
        if standardizer is None and self.cfg.optim.distill <= 0:
            return
        # The batch rows: the train examples first (the standardisation's statistics), then any hard negatives.
        rows = broadcast_object((self._batch_features(), len(self.encoder_features()["train"]))
                                if self.dist.is_main else None, self.dist)
        features = torch.from_numpy(np.ascontiguousarray(rows[0], dtype=np.float32))
        if standardizer is not None:
            standardizer.set_statistics(features[:rows[1]].to(standardizer.shift.device))
        if self.cfg.optim.distill > 0:
            self._reference = features

    # ----- the loop ----------------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> TrainResult:
        """Train to the last epoch (or early stop), then evaluate the best model and write the run's files."""
        o = self.cfg.optim
        total_epochs = self.phases[-1].last_epoch if self.phases else 0
        self.emit("start", {"epochs": total_epochs, "steps_per_epoch": self._steps_per_epoch(),
                            "resumed_at": self.epoch, "phases": [p.name for p in self.phases]})
        if self.epoch == 0 and not self.history:
            self._prepare_head()
            metrics = self._evaluate_on_main()
            self._log({"epoch": 0, "phase": "init", "loss": None, **metrics})
            if not self.phases:  # nothing to train: the initial model is the result
                self._consider_best(self.history[-1], in_main=False)
        while self.epoch < total_epochs and not self.stopped_early:
            self.epoch += 1
            phase = next(p for p in self.phases if p.first_epoch <= self.epoch <= p.last_epoch)
            if self.phase is None or phase.name != self.phase.name:
                self._enter_phase(phase)
            seed_everything(o.seed + self.epoch + RANK_SEED_STRIDE * self.dist.rank)
            self.emit("epoch_start", {"epoch": self.epoch, "phase": phase.name})
            loss, seen, seconds = self._train_epoch()
            self.emit("epoch_end", {"epoch": self.epoch, "phase": phase.name, "loss": loss, "seconds": seconds,
                                    "examples_per_s": seen / max(seconds, 1e-9),
                                    "unit": "images" if self.cfg.modality == "vision" else "sentences"})
            since = self._since_eval
            since["examples"] += seen
            since["seconds"] += seconds
            since["epochs"] += 1
            if self.epoch % o.eval_every == 0 or self.epoch == total_epochs:
                metrics = self._evaluate_on_main()
                # Throughput over every training epoch since the previous row (all ranks together).
                self._log({"epoch": self.epoch, "phase": phase.name, "loss": loss,
                           "examples_per_s": since["examples"] / max(since["seconds"], 1e-9),
                           "epoch_s": since["seconds"] / since["epochs"], **metrics})
                self._since_eval = {"examples": 0, "seconds": 0.0, "epochs": 0}
                self._consider_best(self.history[-1], in_main=phase.name == "main")
            if self.dist.is_main:
                self.run.save_checkpoint(self.run.last_path, self.state_dict())
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                barrier(self.dist)  # rank 0 has written last.pt: a resume that follows must not read an older one
                return TrainResult(self.run.path, {}, self.history, self.best_epoch, False, False)
        return self._finish()

    def _finish(self) -> TrainResult:
        final = None
        if self.dist.is_main:
            best = self.run.load_checkpoint(self.run.best_path)
            self.model.load_state_dict(best["model"])
            self._features = None
            final, pca = self.evaluate(full=True)
            self.run.save_pca(pca, int(final["d_eff"]))
            summary = {
                "run": str(self.run.path), "name": self.cfg.name, "preset": self.cfg.preset,
                "modality": self.cfg.modality, "head": self.cfg.model.head, "encoder": self.cfg.model.encoder,
                "loss": self.cfg.optim.loss, "truncation": self.cfg.truncation,
                "d_enc": self.model.d_enc, "best_epoch": self.best_epoch, "epochs_run": self.epoch,
                "stopped_early": self.stopped_early, "validation_metric": self.validation_key,
                "world_size": self.dist.world_size,
                "global_batch_size": self.cfg.optim.batch_size * self.dist.world_size,
                "input": self.task.input_spec(), "final": final, "splits": self.task.split_notes(),
                # The seed that drew the train / selection / report roles (--split-seed, else --seed): runs with the
                # same one were scored on the same report part.
                "split_seed": self.cfg.data_seed,
            }
            self.run.write_summary(summary)
            self.emit("done", summary)
        final = broadcast_object(final, self.dist)
        return TrainResult(self.run.path, final, self.history, self.best_epoch, self.stopped_early, True)


def train(cfg: RunConfig | None = None, out: str | Path | None = None, *, resume: str | Path | None = None,
          runs_root: str | Path = "runs", on_event: EventFn | None = None,
          stop_after_epoch: int | None = None, distributed: bool = False) -> TrainResult:
    """Train a new run from ``cfg`` (into ``out`` or ``runs_root/NAME-TIME``), or continue ``resume``.

    Everything that can fail on bad input (config, data, weights, init-from run) is checked before a new
    run directory is created. Returns the TrainResult; ``stop_after_epoch`` stops early on purpose
    (as a kill would), leaving a resumable run.

    Distributed (DDP) training runs when ``distributed`` is asked for (it then needs the torchrun
    environment), when torchrun started several processes, or inside a process group the caller set up.
    Every rank returns the same TrainResult; only rank 0 writes files and emits events.
    """
    state, run = None, None
    if resume is not None:
        run = RunDir.open_existing(resume)
        cfg = run.read_config()
        if run.summary_path.is_file():
            raise MonoconError(f"{resume} has already finished (summary.json exists)")
        if not run.last_path.is_file():
            raise MonoconError(f"nothing to resume in {resume}: no last.pt yet (start it again instead)")
        state = run.load_checkpoint(run.last_path)
    elif cfg is None:
        raise MonoconError("train needs a config or a run to resume")
    cfg = cfg.validate()
    dist, device = setup_distributed(distributed, cfg.optim.device)
    try:
        result = _train(cfg, dist, device, out, run, state, runs_root, on_event, stop_after_epoch)
    except BaseException:
        teardown_distributed(dist, clean=False)
        raise
    teardown_distributed(dist)
    return result


def _train(cfg: RunConfig, dist: DistContext, device: torch.device, out: str | Path | None,
           resumed: RunDir | None, state: dict[str, Any] | None, runs_root: str | Path,
           on_event: EventFn | None, stop_after_epoch: int | None) -> TrainResult:
    """Return the TrainResult of ``train`` once the process group (if any) is up."""
    resume = resumed.path if resumed is not None else None
    if resume is not None and cfg.optim.world_size != dist.world_size:
        raise MonoconError(f"{resume} was trained by {cfg.optim.world_size} process(es), this is "
                           f"{dist.world_size}: resume it with the same number (the schedule depends on it)")
    if resume is None:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, world_size=dist.world_size))
    if cfg.optim.train_top_layers and dist.world_size > 1:
        raise MonoconError("--train-top-layers runs in one process (not under torchrun)")
    if cfg.data.hard_negatives and dist.world_size > 1:
        # Batches with hard negatives differ in size from rank to rank (not every pair has one).
        raise MonoconError("--hard-negatives runs in one process (not under torchrun)")
    if dist.enabled and cfg.optim.sync_bn and device.type != "cuda":
        raise MonoconError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernels)")
    set_determinism(cfg.optim.deterministic)
    seed_everything(cfg.optim.seed)
    if resume is None:
        cfg, init_state = resolve_init_from(cfg)
    else:
        init_state = None
    model = build_model(cfg)
    if cfg.optim.select_dims >= model.d_enc:
        raise MonoconError(f"--select-dims {cfg.optim.select_dims} must be below the embedding width "
                           f"({model.d_enc}); 0 stops early at full width")
    if cfg.optim.train_top_layers:
        model.encoder.top_layer_parameters(cfg.optim.train_top_layers)  # refuses a count above the layers
    if init_state is not None:
        load_encoder_state(model, init_state, str(cfg.init_from))
    task = build_task(cfg, model)
    if plan_phases(cfg) and task.steps_per_epoch(cfg.optim.batch_size * dist.world_size) < 1:
        raise MonoconError(f"not one full batch of {cfg.optim.batch_size * dist.world_size} in {task.num_train} "
                           "training examples: lower --batch-size")
    if resumed is not None:
        return _fit(cfg, resumed, model, task, device, on_event, dist, state, stop_after_epoch)
    made: dict[str, Any] = {}
    try:
        run = _create_run_dir_on_main(out, cfg, runs_root, task, dist, made)
        return _fit(cfg, run, model, task, device, on_event, dist, state, stop_after_epoch)
    except BaseException:
        # Failed (or interrupted) before its first checkpoint: nothing to resume, so remove what it created.
        if made and not (made["path"] / "last.pt").is_file():
            _remove_created(made["path"], made["created"])
        raise


def _first_missing(path: Path) -> Path | None:
    """Return the highest of ``path`` and its ancestors that does not exist yet (None if ``path`` exists)."""
    if path.exists():
        return None
    missing = path
    for parent in path.parents:
        if parent.exists():
            break
        missing = parent
    return missing


def _remove_created(run_path: Path, created: Path | None) -> None:
    """Remove the folders a failed new run created (``created``), or empty ``run_path`` if it existed before."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in run_path.iterdir() if run_path.is_dir() else []:
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _fit(cfg: RunConfig, run: RunDir, model: MonoConModel, task, device: torch.device, on_event: EventFn | None,
         dist: DistContext, state: dict[str, Any] | None, stop_after_epoch: int | None) -> TrainResult:
    model.to(device)
    trainer = Trainer(cfg, run, model, task, device, on_event, dist)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.fit(stop_after_epoch)


def _create_run_dir_on_main(out: str | Path | None, cfg: RunConfig, runs_root: str | Path, task,
                            dist: DistContext, made: dict[str, Any] | None = None) -> RunDir:
    """Return the new run directory, created (with config and splits) by rank 0 and shared with the others.

    A failure on rank 0 is sent to the other ranks too, so that none of them waits for it forever.
    """
    error, path = None, None
    if dist.is_main:
        try:
            run = _new_run_dir(out, cfg, runs_root, made)
            run.write_config(cfg)
            run.save_splits(task.splits.to_arrays())
            path = str(run.path)
        except Exception as exc:
            broadcast_object((f"rank 0 could not create the run directory: {exc}", None), dist)
            raise
    error, path = broadcast_object((error, path), dist)
    if error is not None:
        raise MonoconError(error)
    return RunDir(path)
