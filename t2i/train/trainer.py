"""The one training loop, for every stage: AdamW, LR schedule, clipping, accumulation, EMA, bf16,
data parallelism, exact resume, stop by steps / wall clock / signal, metrics, sample grids."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from t2i.io.weights import load_into
from t2i.nn.attention import set_cpu_fp32_attention
from t2i.nn.precision import resolve_bf16
from t2i.train import checkpoint as ckpt_io
from t2i.train import rng as rng_io
from t2i.train.data import DataPosition, ShardedBatches, batch_stream, build_dataset
from t2i.train.distributed import Dist, init_distributed
from t2i.train.ema import EMA
from t2i.train.optim import build_optimizer, lr_factor, set_lr
from t2i.train.recipe import Recipe
from t2i.train.registry import STAGES


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable setup); the message says why and what is saved."""


@dataclass
class TrainResult:
    """How a run ended."""

    step: int  # optimizer steps done in total (including before a resume)
    stopped_by: str  # steps | until | time | signal
    checkpoint: Path | None  # the last checkpoint written or resumed from
    loss: float  # mean loss of the last logged interval
    images_per_s: float  # this run's training throughput (global images per second, the loop only)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{d.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"[train] device = '{name}' but CUDA is not available here")
    return torch.device(name)


class StopRequest:
    """SIGINT / SIGTERM set a flag that the loop checks between steps (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.signalled = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.signalled and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signalled = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Trainer:
    """Train `recipe`'s stage into `out` (checkpoints/, metrics.jsonl, samples/)."""

    def __init__(self, recipe: Recipe, out: str | Path, *, resume: bool = False, max_minutes: float | None = None,
                 until_step: int | None = None, log: Callable[[str], None] = print, progress: bool = True,
                 on_save_file: Callable[[str], None] | None = None):
        self.recipe, self.out = recipe, Path(out)
        self.resume, self.until_step = resume, until_step
        self.max_minutes = recipe.train.max_minutes if max_minutes is None else max_minutes
        self.log_fn, self.progress, self.on_save_file = log, progress, on_save_file
        self.ckpt_root = self.out / "checkpoints"
        self.samples_dir = self.out / "samples"
        self.metrics_path = self.out / "metrics.jsonl"

    # --- setup ------------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self.log_fn(msg)

    def setup(self) -> None:
        cfg = self.recipe.train
        device_kind = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = init_distributed(device_kind)
        self.device = pick_device(cfg.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        world = self.dist.world
        if cfg.batch_size % (cfg.grad_accum * world):
            raise TrainingError(f"[train] batch_size = {cfg.batch_size} must be divisible by grad_accum "
                                f"({cfg.grad_accum}) x processes ({world})")
        self.bf16, self.precision_note = resolve_bf16(cfg.bf16, self.device)
        set_cpu_fp32_attention(cfg.fp32_attention)
        self.global_micro = cfg.batch_size // cfg.grad_accum
        self.local_micro = self.global_micro // world

        resume_from = None
        if self.resume:
            found = ckpt_io.latest_checkpoint(self.ckpt_root, log=self.log) if self.dist.is_main else None
            chosen = self.dist.from_main(None if found is None else str(found))  # every rank loads rank 0's pick
            resume_from = None if chosen is None else Path(chosen)
            if resume_from is None:
                self.log(f"--resume: no complete checkpoint in {self.ckpt_root}; starting from step 0")
        elif any(self.ckpt_root.glob("step_*")):
            # a fresh run here would overwrite (and, with keep_checkpoints, delete) the earlier run's work
            raise TrainingError(f"{self.out} already holds checkpoints from an earlier run: pass --resume to "
                                f"continue it, or choose another --out (or delete {self.ckpt_root})")
        self.dataset = build_dataset(self.recipe.data)
        if len(self.dataset) < self.global_micro:
            raise TrainingError(f"the dataset has {len(self.dataset)} samples, fewer than one global "
                                f"micro-batch ({self.global_micro})")
        rng_io.seed_everything(cfg.seed)  # identical initial weights on every process
        self.stage = STAGES.get(self.recipe.stage).build(self.recipe, self.dataset, self.device, resume_from)
        self.model = self.stage.model
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if cfg.compile and "net" in self.model:  # the denoising network (text encoders take strings: not compiled)
            self.model["net"].compile()  # in place: state-dict keys stay the same
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.step, self.position, self.last_checkpoint = 0, DataPosition(), resume_from
        if resume_from is not None:
            self.load(resume_from)
        else:
            rng_io.seed_everything(rng_io.derive_seed(cfg.seed, self.dist.rank))  # per-process dropout etc.
            self.broadcast_weights()

    def broadcast_weights(self) -> None:
        """Make every process start from rank 0's weights (they match already when seeds do)."""
        if self.dist.active:
            import torch.distributed as dist

            with torch.no_grad():
                for t in self.model.state_dict().values():
                    dist.broadcast(t, 0)
            self.ema = EMA(self.model, self.recipe.train.ema_decay)

    def load(self, path: Path) -> None:
        """Restore weights, EMA, optimizer, step, data position and RNG states from a checkpoint."""
        c = ckpt_io.read_checkpoint(path, device=str(self.device))
        load_into(self.model, c.model, where=str(path))
        self.ema.load(c.ema, int(c.state["ema_updates"]))
        self.optimizer.load_state_dict(c.optimizer)
        self.step = c.step
        self.position = DataPosition(**c.state["data"])
        states = c.state["rng"]
        if len(states) == self.dist.world:
            rng_io.restore(states[self.dist.rank])
        else:
            self.log(f"note: checkpoint written by {len(states)} processes, resuming with {self.dist.world}: "
                     "data order and noise continue exactly; global RNG streams (dropout) are reseeded")
            rng_io.seed_everything(rng_io.derive_seed(self.recipe.train.seed, self.step, self.dist.rank))
        self.log(f"resumed from {path} (step {self.step})")

    # --- outputs ----------------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the current step (collective: every process must call it; rank 0 writes)."""
        states = self.dist.gather(rng_io.capture())
        path = None
        if self.dist.is_main:
            state = {"step": self.step, "data": self.position.to_dict(), "ema_updates": self.ema.updates,
                     "rng": states, "world": self.dist.world}
            path = ckpt_io.save_checkpoint(
                self.ckpt_root, self.step, config=self.recipe.to_dict(), model=self.model.state_dict(),
                ema=self.ema.saved_state(), optimizer=self.optimizer.state_dict(), state=state, extras=self.stage.extras(),
                keep=self.recipe.train.keep_checkpoints, on_file=self.on_save_file)
        self.dist.barrier()
        self.last_checkpoint = path or ckpt_io.step_dir(self.ckpt_root, self.step)
        return path

    def write_samples(self) -> Path | None:
        """A sample grid from the EMA weights into samples/step_XXXXXXXX.png (rank 0)."""
        if not self.dist.is_main:
            return None
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / f"step_{self.step:08d}.png"
        self.model.eval()
        try:
            with self.ema.swapped_in(), self.autocast():
                grid = self.stage.sample_grid(torch.Generator().manual_seed(self.recipe.train.seed))
        finally:
            self.model.train()
        grid.save(path)
        return path

    def write_metrics(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def environment(self) -> dict[str, Any]:
        """What this run ran on and the precision it chose (environment.json beside recipe.json)."""
        return {"bf16": self.bf16, "precision": self.precision_note, "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                "device": str(self.device), "processes": self.dist.world}

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # --- the loop ---------------------------------------------------------------------------------

    def train_step(self, stream: Iterator[dict[str, Any]], batches: ShardedBatches) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimizer step over grad_accum micro-batches; returns the (unreduced) mean loss and logs."""
        cfg = self.recipe.train
        self.optimizer.zero_grad(set_to_none=True)
        set_lr(self.optimizer, cfg.lr * lr_factor(self.step, cfg))
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        first_slot = self.dist.rank * self.local_micro
        for micro in range(cfg.grad_accum):
            batch = next(stream)
            self.position = batches.advance(self.position)
            rng = rng_io.SampleRNG.for_slots(cfg.seed, self.step, micro,
                                             range(first_slot, first_slot + self.local_micro))
            with self.autocast():
                loss, step_logs = self.stage.loss(batch, rng)
            (loss.float() / cfg.grad_accum).backward()
            total += loss.detach().float() / cfg.grad_accum
            for k, v in step_logs.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
        return total, logs

    def run(self) -> TrainResult:
        self.setup()
        cfg = self.recipe.train
        target = cfg.steps if self.until_step is None else min(cfg.steps, self.until_step)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(json.dumps(self.recipe.to_dict(), indent=2))
            (self.out / "environment.json").write_text(json.dumps(self.environment(), indent=2))
        self.log(f"training '{self.recipe.stage}' to step {target} on {self.device} x {self.dist.world} "
                 f"({sum(p.numel() for p in self.params) / 1e6:.2f}M trainable parameters)")
        self.log(self.precision_note)
        self.log(f"checkpoints: {self.ckpt_root}/  metrics: {self.metrics_path}  samples: {self.samples_dir}/")
        batches = ShardedBatches(len(self.dataset), self.global_micro, self.dist.rank, self.dist.world,
                                 cfg.seed, self.position)
        stream = batch_stream(self.dataset, batches, self.recipe.data.num_workers)
        stop = StopRequest()
        deadline = time.monotonic() + self.max_minutes * 60 if self.max_minutes > 0 else math.inf
        start_step, t_start = self.step, time.monotonic()
        interval: dict[str, float] = {}
        interval_steps, last_loss, stopped_by = 0, float("nan"), "steps" if target == cfg.steps else "until"
        saved_at = self.step if self.last_checkpoint is not None else -1
        bar = tqdm(total=target, initial=self.step, unit="step", disable=not (self.progress and self.dist.is_main),
                   dynamic_ncols=True)
        self.model.train()
        with stop.installed():
            while self.step < target:
                loss, logs = self.train_step(stream, batches)
                wants_stop = stop.signalled or time.monotonic() >= deadline
                reduced = self.dist.mean(torch.stack([loss, torch.tensor(float(wants_stop), device=self.device)]))
                loss_value = float(reduced[0])
                if not math.isfinite(loss_value):
                    bar.close()
                    good = self.last_checkpoint if saved_at >= 0 else None
                    raise TrainingError(
                        f"the loss is {loss_value} at step {self.step + 1}: stopping without saving. Last good "
                        f"checkpoint: {good or 'none'}. Try a lower [train] lr, grad_clip > 0, or bf16 = false.")
                self.dist.all_reduce_grads(self.params)
                max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
                self.optimizer.step()
                self.ema.update()
                self.step += 1
                interval_steps += 1
                for k, v in {"loss": loss_value, "grad_norm": grad_norm, **{k: v for k, v in logs.items() if k != "loss"}}.items():
                    interval[k] = interval.get(k, 0.0) + v
                elapsed = time.monotonic() - t_start
                ips = (self.step - start_step) * cfg.batch_size / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{ips:.1f}")
                if self.step % cfg.log_every == 0 or self.step == target:
                    last_loss = interval["loss"] / interval_steps
                    self.write_metrics({"step": self.step, **{k: v / interval_steps for k, v in interval.items()},
                                        "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips,
                                        "elapsed_s": elapsed})
                    interval, interval_steps = {}, 0
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_samples()
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                    saved_at = self.step
                if reduced[1] > 0:
                    stopped_by = "signal" if stop.signalled else "time"
                    break
            bar.close()
            loop_s = time.monotonic() - t_start
            if saved_at != self.step:
                self.save()
            if stopped_by != "signal" and (not cfg.sample_every or self.step % cfg.sample_every):
                self.write_samples()
        ips = (self.step - start_step) * cfg.batch_size / max(loop_s, 1e-9)
        self.log(f"stopped at step {self.step} ({stopped_by}); last checkpoint: {self.last_checkpoint}")
        return TrainResult(self.step, stopped_by, self.last_checkpoint, last_loss, ips)

