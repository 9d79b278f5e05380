"""The IsoFLOP sweeper: `scalelab-train -m hydra/sweeper=isoflop hydra.sweeper.budgets=[...] ...`.

For every compute budget C and model size it composes the job's config (so the shape, vocabulary,
`data.seq_len` and `train.batch_size` are exactly what the job will see), gives the pair the tokens
D that spend C (whole steps, ledger FLOPs within `tolerance` of C), keeps the pairs whose tokens
per parameter lie in `tokens_per_param`, prints the plan and launches the jobs
`model=<size> data.tokens=<D> budget=<C>` through the configured launcher. Other sweep overrides
on the command line (`train.seed=0,1`) make a grid with the plan. See `scalelab/sweep/plan.py`.

    scalelab-train -m hydra/sweeper=isoflop hydra.sweeper.budgets=[1e15,3e15] \
        hydra.sweeper.models=[p1m,p3m,p10m] hydra.sweeper.tokens_per_param=[2,200] \
        hydra.sweep.dir=sweeps/iso hydra.sweeper.dry_run=true
"""

# no `from __future__ import annotations` here: Hydra's plugin scan executes this module before it is
# in sys.modules, where dataclasses would look string annotations up (and OmegaConf needs the types)
import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class IsoFlopSweeperConf:
    _target_: str = "hydra_plugins.scalelab_sweepers.isoflop.IsoFlopSweeper"
    budgets: list[float] = field(default_factory=list)  # training FLOPs, ledger convention
    models: list[str] = field(default_factory=list)  # options of the `model` config group
    tokens_per_param: list[float] = field(default_factory=lambda: [2.0, 200.0])  # [min, max] D/N
    dry_run: bool = False  # print the plan and stop
    tolerance: float = 0.01  # how far a run's ledger FLOPs may land from its budget
    flops_per_second: float = 5e9  # throughput assumption for the time estimate only
    startup_seconds: float = 20.0  # per-job overhead for the time estimate only
    skip_completed: bool = True  # do not launch jobs whose run dir completed with the same config
    jax_cache_dir: str | None = "${hydra.sweep.dir}/.jax_cache"  # JAX persistent compilation cache
    max_batch_size: int | None = None  # jobs per launcher call (None: all at once)
    # extra sweep overrides, as the basic sweeper's params ({key: "v1,v2"}). Typed Any: OmegaConf cannot
    # merge `hydra.sweeper.params={train.seed:"0,1"}` from the command line into a null typed dict
    params: Any = None
    # sweep overrides for single budgets, {budget: {key: "v1,v2"}}: at that budget they replace `params`'
    # values of the same keys, e.g. {1e12: {train.seed: "0,1,2,3"}} buys more seeds where a fit's
    # extrapolation leans hardest (the quickstart does); a budget the sweep does not have is ignored
    # with a note (a study's budgets overridden on the command line)
    budget_params: Any = None
    # lr factors: each planned run becomes one run per factor x its own lr (optimizer.lr_law or optimizer.lr)
    lr_grid: list[float] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="isoflop", node=IsoFlopSweeperConf, provider="scalelab")


class PlanError(HydraException):
    """The IsoFLOP plan cannot be launched (nothing has been launched)."""


class JobsFailed(HydraException):
    """Some launched jobs failed (their run directories hold the details)."""


class SweepPreempted(HydraException):
    """A preemption signal stopped the sweep after its running jobs saved (a relaunch resumes)."""


EXIT_PLAN_ERROR = 2
EXIT_JOBS_FAILED = 1


class IsoFlopSweeper(Sweeper):
    def __init__(self, budgets, models, tokens_per_param, dry_run=False, tolerance=0.01,
                 flops_per_second=5e9, startup_seconds=20.0, skip_completed=True, jax_cache_dir=None,
                 max_batch_size=None, params=None, lr_grid=None, budget_params=None) -> None:
        super().__init__()
        self.budgets = [float(b) for b in (budgets or [])]
        self.models = [str(m) for m in (models or [])]
        window = [float(x) for x in (tokens_per_param or [])]
        if len(window) != 2 or window[0] > window[1] or window[0] < 0:
            raise PlanError(f"hydra.sweeper.tokens_per_param must be [min, max] with 0 <= min <= max; got {window}")
        self.window = (window[0], window[1])
        self.dry_run = bool(dry_run)
        self.tolerance = float(tolerance)
        self.flops_per_second = float(flops_per_second)
        self.startup_seconds = float(startup_seconds)
        self.skip_completed = bool(skip_completed)
        self.jax_cache_dir = jax_cache_dir
        self.max_batch_size = max_batch_size
        if params is not None and not hasattr(params, "items"):
            raise PlanError(f"hydra.sweeper.params takes a mapping of sweep overrides, e.g. "
                            f"{{train.seed: '0,1'}}; got {params!r}")
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        if budget_params is not None and not (hasattr(budget_params, "items")
                                              and all(hasattr(v, "items") for v in budget_params.values())):
            raise PlanError(f"hydra.sweeper.budget_params takes {{budget: {{key: 'v1,v2'}}}}, e.g. "
                            f"{{1e12: {{train.seed: '0,1,2,3'}}}}; got {budget_params!r}")
        self.budget_params = {float(b): {str(k): str(v) for k, v in p.items()} for b, p in (budget_params or {}).items()}
        self.lr_grid = [float(f) for f in (lr_grid or [])]
        if any(f <= 0 for f in self.lr_grid):
            raise PlanError(f"hydra.sweeper.lr_grid takes positive lr factors, e.g. [0.5,1,2]; got {self.lr_grid}")
        self.hydra_context = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.plan = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- planning ---------------------------------------------------------------------------

    def _other_combos(self, arguments: list[str], budget: float | None = None) -> list[list[str]]:
        """The grid of the sweep's other overrides (`params` and the command line's); at `budget`,
        with that budget's `budget_params` in place of `params`' values."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from scalelab.sweep.plan import PLANNED_KEYS

        params = {**self.params, **self.budget_params.get(budget, {})}
        lines = [f"{k}={v}" for k, v in params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(lines)
        for o in overrides:
            if o.get_key_element() in PLANNED_KEYS:
                raise PlanError(f"{o.input_line}: the IsoFLOP sweeper sets {', '.join(PLANNED_KEYS)} itself; "
                                f"use hydra.sweeper.models=[...] and hydra.sweeper.budgets=[...]")
        return BasicSweeper.split_arguments(overrides, None)[0]

    def _compose(self, overrides: list[str]) -> DictConfig:
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def _lr_grid(self, job, cfg: DictConfig, shape) -> list:
        """[(job, cfg)], or one per factor of `lr_grid` around the job's own lr."""
        if not self.lr_grid:
            return [(job, cfg)]
        from scalelab.sweep import plan as sweep

        try:
            grid = sweep.lr_grid_overrides(cfg, shape, job.tokens, self.lr_grid)
        except ValueError as exc:  # an unreadable optimizer.lr_law file
            raise PlanError(f"optimizer.lr_law: {exc}") from exc
        extra = [o for o in job.extra if not o.startswith(("optimizer.lr=", "optimizer.lr_law="))]
        out = []
        for lr, overrides in grid:
            member, member_cfg = copy.copy(job), copy.deepcopy(cfg)
            member.extra = [*extra, *overrides]
            member.overrides = sweep.job_overrides(member)  # what is launched carries the member's lr
            with open_dict(member_cfg):
                member_cfg.optimizer.lr, member_cfg.optimizer.lr_law = lr, None
            out.append((member, member_cfg))
        return out

    def _plan_grid(self, combos: list[list[str]], budgets: list[float], jobs: list, notes: list) -> None:
        """Plan `budgets` x models x `combos` into `jobs` ((job, config) pairs) and `notes`."""
        from scalelab.sweep import plan as sweep

        _, varying = sweep.varying_overrides(combos)
        for combo, combo_varying in zip(combos, varying, strict=True):
            for model in self.models:
                try:
                    base = self._compose([*combo, f"model={model}"])
                except Exception as exc:  # unknown size, bad override: before anything is launched
                    raise PlanError(f"{' '.join([f'model={model}', *combo])}: {exc}") from exc
                try:
                    shape = sweep.shape_of(base)
                except Exception as exc:  # e.g. data=prepared with a data.path that is not a dataset
                    raise PlanError(f"{' '.join([f'model={model}', *combo])}: {exc}") from exc
                tokens_per_step = int(base.train.batch_size) * int(base.data.seq_len)
                for budget in budgets:
                    job, note = sweep.plan_pair(
                        shape, budget, tokens_per_step, model=model, window=self.window,
                        tolerance=self.tolerance, flops_per_second=self.flops_per_second,
                        startup_seconds=self.startup_seconds, extra=list(combo),
                        varying=combo_varying)
                    if job is None:
                        notes.append(note)
                        continue
                    job.overrides = sweep.job_overrides(job)
                    cfg = copy.deepcopy(base)
                    with open_dict(cfg):
                        cfg.data.tokens = float(job.tokens)
                        cfg.budget = float(budget)
                    jobs += self._lr_grid(job, cfg, shape)

    def make_plan(self, combos: list[list[str]], budget_combos: dict | None = None):
        """The plan: every budget x model x combination of the other overrides (`combos`; a budget
        in `budget_combos` takes its own)."""
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from scalelab.config import ConfigError, validate
        from scalelab.sweep import plan as sweep

        if not self.budgets:
            raise PlanError("hydra.sweeper.budgets is empty: give compute budgets in FLOPs, e.g. "
                            "hydra.sweeper.budgets=[1e15,3e15]")
        if not self.models:
            raise PlanError("hydra.sweeper.models is empty: give model sizes, e.g. hydra.sweeper.models=[p1m,p3m]")
        unknown = [f"{b:g}" for b in budget_combos or {} if b not in self.budgets]
        if unknown:  # a study's budgets overridden on the command line (a reduced study, a rung)
            print(f"note: hydra.sweeper.budget_params names budget(s) {', '.join(unknown)}, not among this "
                  f"sweep's ({', '.join(f'{b:g}' for b in self.budgets)}): ignored", flush=True)
        budget_combos = {b: c for b, c in (budget_combos or {}).items() if b in self.budgets}
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs, notes = [], []
        shared = [b for b in self.budgets if b not in budget_combos]
        for budgets, grid in [(shared, combos), *(([b], c) for b, c in budget_combos.items())]:
            if budgets:
                self._plan_grid(grid, budgets, jobs, notes)
        # launch order: by other overrides, then budget, then size
        jobs.sort(key=lambda jc: (jc[0].extra, jc[0].budget, jc[0].params))
        self._job_configs = []
        for num, (job, cfg) in enumerate(jobs):
            with open_dict(cfg):
                hc = cfg.hydra.job.config.override_dirname
                cfg.hydra.job.override_dirname = get_overrides_dirname(
                    parser.parse_overrides(job.overrides), list(hc.exclude_keys), hc.item_sep, hc.kv_sep)
                cfg.hydra.job.num = num
            try:
                job.subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            except Exception:  # a subdir template that cannot be resolved before the job runs
                job.subdir = None
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                validate(cfg)
            except ConfigError as exc:
                raise PlanError(f"{' '.join(job.overrides)}: config error: {exc}") from exc
            self._job_configs.append(cfg)
        jobs = [job for job, _ in jobs]
        clashes = sweep.colliding_jobs([(" ".join(job.overrides), job.subdir, OmegaConf.to_container(cfg, resolve=True))
                                        for job, cfg in zip(jobs, self._job_configs, strict=True)])
        if clashes:
            raise PlanError("jobs of this sweep would share a run directory (make hydra.sweep.subdir name what "
                            "varies):\n  " + "\n  ".join(clashes))
        self.plan = sweep.Plan(jobs=jobs, notes=notes, window=self.window, tolerance=self.tolerance,
                               flops_per_second=self.flops_per_second, startup_seconds=self.startup_seconds)
        return self.plan

    # -- sweeping ---------------------------------------------------------------------------

    def _set_compilation_cache(self) -> None:
        """One persistent JAX compilation cache per sweep: jobs of the same shape compile once.

        Jobs in other processes (submitit) inherit the environment variable, which JAX reads at
        import; jobs of the basic launcher run in this process, where JAX may already be imported.
        """
        if not self.jax_cache_dir:
            return
        if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # a cache the user chose wins
            path = os.path.abspath(str(self.jax_cache_dir))
            os.makedirs(path, exist_ok=True)
            os.environ["JAX_COMPILATION_CACHE_DIR"] = path
        if "jax" in sys.modules:
            import jax

            if not jax.config.jax_compilation_cache_dir:
                jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

    def sweep(self, arguments: list[str]) -> Any:
        """Plan, print, launch; a plan error or failed jobs end the process with a short message.

        Exit codes: 2 when the plan cannot be launched (nothing was), 1 when some job failed, and
        the trainer's preempted code (3) when a preemption signal stopped the sweep: its running
        jobs saved, the rest were not started, and the same command resumes them all."""
        try:
            return self._sweep(arguments)
        except PlanError as exc:
            print(f"isoflop sweeper: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_PLAN_ERROR) from None
        except JobsFailed as exc:
            print(f"isoflop sweeper: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_JOBS_FAILED) from None
        except SweepPreempted as exc:
            from scalelab.train.preemption import EXIT_PREEMPTED

            print(f"isoflop sweeper: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_PREEMPTED) from None

    def _sweep(self, arguments: list[str]) -> Any:
        from hydra.core.utils import JobStatus

        from scalelab.sweep import plan as sweep

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        combos = self._other_combos(arguments)
        plan = self.make_plan(combos, {b: self._other_combos(arguments, b) for b in self.budget_params})
        print(sweep.format_plan(plan), flush=True)
        if not plan.jobs:
            raise PlanError(
                f"the IsoFLOP plan is empty: no model in {self.models} can spend any budget in "
                f"{[sweep.fmt_budget(b) for b in self.budgets]} within {self.tolerance:.0%} at "
                f"{self.window[0]:g}-{self.window[1]:g} tokens per parameter (notes above); nothing was launched")
        if self.dry_run:
            print("dry run (hydra.sweeper.dry_run=true): nothing launched", flush=True)
            return []

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        sweep.write_plan(sweep_dir, plan, {"budgets": self.budgets, "models": self.models,
                                           "arguments": list(arguments), "written": time.time()})
        self._set_compilation_cache()

        # a packing launcher gets the completed jobs too: it trains none of them again, but plans
        # the same groups as the first launch and keeps a completed member's place in its group's
        # program while the others need it (PackedGroup.start), so that they resume bitwise
        packs = getattr(self.launcher, "packs_jobs", False)
        todo, done = [], 0
        for job, task_cfg in zip(plan.jobs, self._job_configs, strict=True):
            if self.skip_completed and job.subdir and sweep.completed_with_config(
                    sweep_dir / job.subdir, OmegaConf.to_container(task_cfg, resolve=True)):
                done += 1
                if not packs:
                    log.info("skipping %s: completed with the same config", job.subdir)
                    continue
            todo.append(job.overrides)
        if done:
            print(f"skipping {done} job(s) already completed with the same config; launching "
                  + (f"{len(todo) - done} (the packed launcher plans its groups with all {len(todo)})" if packs
                     else f"{len(todo)}"), flush=True)
        if len(todo) == (done if packs else 0):  # nothing left to train
            return []

        size = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else len(todo)
        if type(self.launcher).__name__ == "BasicLauncher":
            # jobs run in this process: one per launch, so a job that calls sys.exit (the trainer
            # does on a config error or divergence) fails alone instead of ending the sweep
            size = 1
        returns, failures, failed, idx = [], [], 0, 0
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            try:
                results = self.launcher.launch(batch, initial_job_idx=idx)
            except (Exception, SystemExit) as exc:
                if isinstance(exc, SystemExit) and not exc.code:
                    continue
                if _preempted(exc):
                    raise SweepPreempted(
                        f"preempted: the running jobs saved their checkpoints and the jobs not started yet were "
                        f"left as they are; run the same command to resume (`scalelab status {sweep_dir}`)") from None
                # submitit re-raises a job that died (or exited) here; the batch's other jobs still ran
                what = " ".join(batch[0]) if len(batch) == 1 else f"jobs #{idx}-#{idx + len(batch) - 1}"
                failed += len(batch)
                if isinstance(exc, SystemExit):
                    failures.append(f"{what}: exited with code {exc.code}")
                else:
                    last = (str(exc).strip().splitlines() or [""])[-1]
                    failures.append(f"{what}: {type(exc).__name__}: {last}")
                continue
            finally:
                idx += len(batch)
            returns.append(results)
            for r in results:
                if r.status != JobStatus.COMPLETED:
                    failed += 1
                    failures.append(f"{' '.join(r.overrides or [])}: {r._return_value!r}")
        if failures:
            raise JobsFailed(f"{'up to ' if failed > len(failures) else ''}{failed} of {len(todo)} IsoFLOP job(s) "
                             f"failed (see their summary.json / `scalelab status {sweep_dir}`):\n  "
                             + "\n  ".join(failures))
        return returns


def _preempted(exc: BaseException) -> bool:
    """A launch ended by a preemption signal (the trainer's or the packed launcher's exit code)."""
    from scalelab.train.preemption import EXIT_PREEMPTED

    return isinstance(exc, SystemExit) and exc.code == EXIT_PREEMPTED
