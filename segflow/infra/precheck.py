"""Every job's config checked before Hydra creates a folder or launches a sweep.

:func:`compose_jobs` composes the command line as Hydra will (the same search path,
``--config-dir``, ``--config-name``, a multirun's sweep expanded by the basic sweeper into
its jobs, in job-number order); :func:`check_job` resolves every interpolation of a job's
config (an unresolvable or recursive one is a :class:`ConfigError` naming the key) and runs
the command's own checks (e.g. :func:`segflow.infra.validate.validate_train`).

Nothing is written: the ``hydra`` node (whose resolvers claim folders) is never resolved,
``${hydra:runtime.output_dir}`` reads a placeholder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from segflow.infra.errors import ConfigError, SegflowError

#: What ``${hydra:runtime.output_dir}`` reads while a job is checked (no folder exists yet).
PLACEHOLDER_DIR = "/nonexistent/segflow-precheck"


@dataclass
class Job:
    """One job of the command line: its number in the sweep (0 for a single run), its
    overrides and, once checked, the sentence that refuses it (None: valid)."""

    num: int
    overrides: list[str]
    error: str | None = None


@dataclass
class Plan:
    """What the command line asks for: ``multirun``, its jobs; ``checked``: False where the
    jobs cannot be known in advance (another sweeper, e.g. Optuna, or ``--help``)."""

    multirun: bool
    jobs: list[Job]
    checked: bool = True

    @property
    def rejected(self) -> list[Job]:
        return [j for j in self.jobs if j.error is not None]


def _parse(argv: Sequence[str]):
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))


def compose_jobs(argv: Sequence[str], module: str, config_path: str, config_name: str,
                 check: Callable[[DictConfig], None]) -> Plan:
    """The jobs of ``argv`` (a command's arguments), each composed and checked with
    :func:`check_job` (``check``: the command's own validation)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    args = _parse(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info is not None:
        return Plan(bool(args.multirun), [], checked=False)
    name = args.config_name or config_name
    search_path = create_automatic_config_search_path(None, module, args.config_path or config_path)
    if args.config_dir is not None:
        import os

        from hydra.core.config_search_path import SearchPathQuery

        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(args.config_dir)}",
                            anchor=SearchPathQuery(provider="schema"))
    had = GlobalHydra.instance().is_initialized()
    hydra = Hydra.create_main_hydra2(task_name=module.rsplit(".", 1)[-1], config_search_path=search_path)
    try:
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
        overrides = list(args.overrides)
        try:
            base = hydra.compose_config(name, overrides, run_mode=mode, with_log_configuration=False)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"the config cannot be composed: {_first(exc)}") from exc
        except Exception:  # Hydra's own message (an unknown key, a missing group option)
            return Plan(bool(args.multirun), [], checked=False)
        if not args.multirun:
            job = Job(0, overrides)
            check_job(base, check, job)
            return Plan(False, [job])
        sweeper = str(OmegaConf.select(base, "hydra.sweeper._target_", default=""))
        if not sweeper.endswith("BasicSweeper"):
            return Plan(True, [], checked=False)
        params = OmegaConf.select(base, "hydra.sweeper.params", default=None) or {}
        parser = OverridesParser.create(config_loader=hydra.config_loader)
        parsed = parser.parse_overrides([*(f"{k}={v}" for k, v in params.items()), *overrides])
        batches = BasicSweeper.split_arguments(parsed, None)
        jobs = [Job(i, list(o)) for i, o in enumerate(batches[0])]
        for job in jobs:
            try:
                cfg = hydra.compose_config(name, job.overrides, run_mode=RunMode.RUN,
                                           with_log_configuration=False)
            except Exception as exc:  # a bad value of one job: refused, the others go on
                job.error = f"the config cannot be composed: {_first(exc)}"
                continue
            check_job(cfg, check, job)
        return Plan(True, jobs)
    finally:
        if not had:
            GlobalHydra.instance().clear()


def apply_overrides(base: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``base`` (a composed config) with ``key=value`` overrides applied as Hydra applies
    them after composing its defaults (group choices such as ``model=csnet`` need
    :func:`compose_jobs`); a refused override is a ConfigError naming it."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    cfg = base.copy()
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{' '.join(overrides)}: {_first(exc)}; see --cfg job for the keys "
                          f"there are (add a new one with +key=value)") from exc
    return cfg


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_job(cfg: DictConfig, check: Callable[[DictConfig], None], job: Job | None = None) -> None:
    """Resolve every key of ``cfg`` but ``hydra`` and run ``check``; the first problem is
    ``job.error`` (or raised, without a job) as one sentence."""
    try:
        _check(cfg, check)
    except SegflowError as exc:
        if job is None:
            raise
        job.error = str(exc)


def _check(cfg: DictConfig, check: Callable[[DictConfig], None]) -> None:
    from hydra.core.hydra_config import HydraConfig

    cfg = cfg.copy()
    hydra_node = cfg.get("hydra") if "hydra" in cfg else None
    previous = HydraConfig.instance().cfg
    if hydra_node is not None:
        OmegaConf.set_readonly(cfg.hydra, False)
        OmegaConf.update(cfg, "hydra.runtime.output_dir", PLACEHOLDER_DIR, force_add=True)
        HydraConfig.instance().set_config(cfg)
    try:
        raw = OmegaConf.to_container(cfg, resolve=False)
        # keys that read Hydra's own nodes (sweep_name from the overrides) last: a bad user
        # override is named as itself, not through a key that quotes the command line
        keys = sorted((k for k in cfg if k != "hydra"), key=lambda k: "hydra" in str(raw.get(k)))
        for key in keys:
            check_resolvable(cfg, str(key))
        job_cfg = cfg.copy()
        with open_dict(job_cfg):
            job_cfg.pop("hydra", None)
        check(job_cfg)
    finally:
        HydraConfig.instance().cfg = previous


def check_resolvable(cfg: DictConfig, key: str) -> None:
    """Raise a ConfigError naming the key whose interpolation cannot be resolved."""
    try:
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        if OmegaConf.is_config(node):
            OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        where = getattr(exc, "full_key", None) or key
        where = where if where.startswith(key) or key == where else f"{key}.{where}"
        raw = OmegaConf.select(cfg, where, default=None, throw_on_resolution_failure=False)
        shown = _raw(cfg, where) if raw is None else raw
        raise ConfigError(f"{where}={shown} cannot be resolved ({_first(exc).rstrip('.')}): give "
                          f"{where} a value, or interpolate a key that exists and is not "
                          f"{where} itself") from exc


def _raw(cfg: DictConfig, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    try:
        return str(node._get_node(leaf)._value())  # the text as written, e.g. ${nosuch.key}
    except Exception:
        return "?"
