"""Where the members of a run train: one after the other in this process ("local"), or as Ray tasks ("ray") on a
local Ray instance (loopback only) or on an existing cluster.

    ctx = prepare_run(recipe)          # kit.context
    records = train_members(ctx, ctx.plan.members, executor="ray", address="10.0.0.5:6379")  # or None: local
    finish(ctx)                       # kit.run: blend, submit, record, as after a sequential run

Each Ray task gets one planned member by its index and reopens the run itself (kit.context.prepare_run on the
run's saved recipe, which re-reads plan.json), so nothing of the plan is pickled and every decision made at planning
stays made. The run directory and the recipe's relative paths (data.root) must mean the same on every node: shared
storage mounted at the same path, and the task works in the driver's current directory. Only the driver writes the
leaderboard. The driver logs the tasks' lines as they come, through a ray.util.queue.Queue (Ray's own forwarding of
stdout folds lines that differ only in numbers, such as the epoch lines of two members). A task whose worker dies
is retried once (Ray's max_retries, for system failures only); a member that still fails is reported by name after
the others have finished and been recorded.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from kit.context import load_run_recipe, member_done
from kit.errors import KitError, RecipeError, RunDirError
from kit.member_train import train_member
from kit.record import record_member
from kit.results import blend_round
from kit.rundir import round_dir

EXECUTORS = ("local", "ray")
LOG_POLL_S = 0.5  # how often the driver passes the tasks' log lines on while it waits
CPUS_PER_MEMBER = 1  # Ray's CPU share of one member task (and its OMP_NUM_THREADS); a GPU task gets one GPU too
# Ray gives a local instance the machine's outward address unless told it is no cluster (its processes read this)
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def train_members(ctx, members, executor: str = "local", address: str | None = None, *, resume: bool = True,
                  cpus_per_member: float = CPUS_PER_MEMBER, runtime_env: dict | None = None,
                  progress_factory=None, log=print) -> list[dict]:
    """Train `members` (MemberPlans of ctx.plan) and record each on the leaderboard as it finishes; finished members
    are skipped. Returns the records of the finished members in plan order (a member another process holds is left
    out). With executor="ray": `address` of a cluster (else $RAY_ADDRESS, else a local instance); `runtime_env` is
    merged into the tasks' (env_vars: OMP_NUM_THREADS and the driver's KIT_* settings). Raises RunDirError naming
    the members that failed, after the others are recorded; a bug in a task is raised with its traceback."""
    check_executor(executor, address)
    if executor == "local":
        return _train_local(ctx, members, resume, progress_factory, log)
    ray = import_ray()
    opened = connect_ray(address)
    try:
        return _train_ray(ray, ctx, members, resume, cpus_per_member, runtime_env or {}, log)
    finally:
        if opened:
            ray.shutdown()  # a local instance stops; a cluster only loses this driver


def check_executor(executor: str, address: str | None) -> None:
    """Refuse an unknown executor, or an address without Ray, before any work starts."""
    if executor not in EXECUTORS:
        raise RecipeError(f"--executor {executor!r} is not an executor; valid: {', '.join(EXECUTORS)}")
    if executor == "local" and address is not None:
        raise RecipeError(f"--address {address} is the address of a Ray cluster; add --executor ray")
    if executor == "ray":
        import_ray()


def _train_local(ctx, members, resume: bool, progress_factory, log) -> list[dict]:
    from kit import distributed
    records, n = [], len(ctx.plan.members)
    main = distributed.is_main()  # under torchrun: rank 0 logs and records, all ranks train (kit.distributed)
    for m in members:
        if main:
            _teach_round(ctx, m.round, log)
        distributed.barrier()
        done = distributed.broadcast(member_done(ctx.run_dir, m))
        if done is not None:
            log(f"member {m.index} {m.name}: finished before, skipped")
            records.append(done)
            continue
        log(f"member {m.index}/{n - 1} {m.name}: training")
        rec = train_member(ctx, m, resume=resume, progress_factory=progress_factory,
                           on_epoch_end=epoch_logger(m.recipe, log), log=log)
        if rec is None:
            continue  # another process is training it
        log(f"member {m.name}: {format_scores(rec, ctx.recipe.train.metric)} ({rec['wall_time_s']:.0f} s)")
        if main:
            record_member(ctx, rec)
        records.append(rec)
    return records


def _teach_round(ctx, round: int, log) -> None:
    """Pseudo-label round `round` > 0 learns from round - 1's blend: made here, in the driver, once."""
    if round > 0 and not (round_dir(ctx.run_dir, round - 1) / "report.json").exists():
        blend_round(ctx, round - 1, log)


def epoch_logger(recipe: Recipe, log):
    metric = recipe.train.metric

    def on_epoch_end(epoch: int, row: dict) -> None:
        if "val_" + metric in row:
            head = f"epoch {epoch + 1}/{recipe.train.epochs}"
            second = "log_loss" if metric != "log_loss" and "val_log_loss" in row else \
                next((k[4:] for k in row if k.startswith("val_") and k != "val_" + metric), None)
            val = f"val {metric} {row['val_' + metric]:.4f}  " + (f"{second} {row['val_' + second]:.4f}  "
                                                                   if second else "")
        else:  # a refit: its epochs are those its validated twin kept, nothing is validated
            head, val = f"epoch {epoch + 1} (refit)", ""
        log(f"  {head}  loss {row['train_loss']:.4f}  {val}"
            f"{row.get('train_images_per_s', 0):.0f} img/s  {row.get('seconds', 0):.0f} s")
    return on_epoch_end


def format_scores(rec: dict, metric: str) -> str:
    if rec.get("refit_of"):
        return f"refitted on every labelled image for {rec['epochs']} epochs (the epochs {rec['refit_of']} kept)"
    return ", ".join(f"{mode} {s[metric]:.4f}" for mode, s in rec["scores"].items()) + f" val {metric}"


# ---------------------------------------------------------------- Ray

def import_ray():
    """Ray, imported only when asked for: an optional extra."""
    try:
        import ray
    except ImportError as e:
        raise RecipeError(f"--executor ray needs Ray, which is not installed ({e}); install it with: "
                          f"pip install 'kit[ray]'") from None
    return ray


def connect_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at `address` (else $RAY_ADDRESS), or start a local instance bound to 127.0.0.1
    with `num_cpus` CPUs (default: Ray counts them). True when this call opened the connection (the caller shuts
    it down); False when Ray was already initialised in this process, which is then used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address)
        return True
    _init_loopback(ray, num_cpus)
    return True


def _init_loopback(ray, num_cpus: int | None) -> None:
    """ray.init resolves 127.0.0.1 to the outward address on Linux; the variable (read by every process Ray starts,
    and by this one when it imported Ray: hence the constant too) keeps each of its servers on loopback."""
    import ray._private.ray_constants as constants
    old_env, old_flag = os.environ.get(_LOOPBACK_ENV), getattr(constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[_LOOPBACK_ENV], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, dashboard_host="127.0.0.1")
    finally:  # the processes Ray started keep it; a later ray.init(address=...) in this process must not
        constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old_env
    ip = ray.util.get_node_ip_address()
    if ip != "127.0.0.1":
        ray.shutdown()
        raise RecipeError(f"--executor ray: the local Ray instance took the address {ip}, not 127.0.0.1 (this Ray "
                          f"version ignores {_LOOPBACK_ENV}=0), and was stopped; start a cluster yourself "
                          f"(ray start --head) and pass its --address")


def _task_options(ray, member, cpus: float, runtime_env: dict) -> dict:
    """One GPU a member where the cluster has GPUs (and the member may use one), else a CPU share."""
    env_vars = {"OMP_NUM_THREADS": str(max(1, int(cpus))),
                **{k: v for k, v in os.environ.items() if k.startswith("KIT_")},
                **runtime_env.get("env_vars", {})}
    gpu = member.recipe.train.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    return {"num_cpus": cpus, "num_gpus": 1 if gpu else 0, "max_retries": 1, "retry_exceptions": False,
            "runtime_env": {**runtime_env, "env_vars": env_vars}}


def _train_ray(ray, ctx, members, resume: bool, cpus: float, runtime_env: dict, log) -> list[dict]:
    """The members of one pseudo-label round at once, round after round (each learns from the one before); a
    round's refits (data.refit) after its validated members, whose chosen epochs they train for."""
    from ray.util.queue import Queue
    task = ray.remote(member_task)
    lines = Queue(actor_options={"num_cpus": 0})  # the tasks' log lines, logged here as they come
    args = (str(Path(ctx.run_dir).resolve()), os.getcwd(), resume, lines)
    records = {}
    try:
        for rnd, refit in sorted({(m.round, m.refit_of is not None) for m in members}):
            _teach_round(ctx, rnd, log)
            wave = [m for m in members if m.round == rnd and (m.refit_of is not None) == refit]
            refs = _submit(ray, task, ctx, wave, args, records, cpus, runtime_env, log)
            records.update(_collect(ray, ctx, refs, lines, log))  # raises for failed members: no later round
    finally:
        lines.shutdown()
    return [records[i] for i in sorted(records)]


def _submit(ray, task, ctx, members, args, records: dict, cpus: float, runtime_env: dict, log) -> dict:
    """Send each unfinished member to Ray ({ObjectRef: member}); finished ones go into `records` as they are."""
    run_dir, cwd, resume, lines = args
    refs, n = {}, len(ctx.plan.members)
    for m in members:
        done = member_done(ctx.run_dir, m)
        if done is not None:
            log(f"member {m.index} {m.name}: finished before, skipped")
            records[m.index] = done
            continue
        opts = _task_options(ray, m, cpus, runtime_env)
        refs[task.options(**opts).remote(run_dir, m.index, cwd, resume, lines)] = m
        log(f"member {m.index}/{n - 1} {m.name}: sent to Ray ({'1 GPU' if opts['num_gpus'] else f'{cpus:g} CPU'})")
    return refs


def _collect(ray, ctx, refs: dict, lines, log) -> dict:
    """Log the tasks' lines and record each member as its task returns; then raise for those that failed."""
    records, failed, bugs = {}, [], []  # failed: (member, why)
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=LOG_POLL_S)
            _drain(lines, log)  # a task's lines are all queued before it returns
            if not ready:
                continue
            m = refs.pop(ready[0])
            try:
                rec = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                why, bug = _failure(ray, e)
                failed.append((m, why))
                bugs += [e] if bug else []
                log(f"member {m.name}: failed on Ray: {why}")
                continue
            if rec is None:
                log(f"member {m.name}: being trained by another process; skipped")
                continue
            log(f"member {m.name}: {format_scores(rec, ctx.recipe.train.metric)} ({rec['wall_time_s']:.0f} s)")
            record_member(ctx, rec)
            records[m.index] = rec
    except KeyboardInterrupt:
        for ref in refs:  # on a cluster they would go on training with no one to record them
            ray.cancel(ref, force=True)
        raise
    _raise_failures(ctx, failed, bugs)
    return records


def _drain(lines, log) -> None:
    n = lines.qsize()
    for name, line in lines.get_nowait_batch(n) if n else []:
        log(f"[{name}] {line}")


def _failure(ray, e) -> tuple[str, bool]:
    """(one line on why a task failed, whether it is a bug in kit). A worker or node that died (after its retry)
    is not a bug; an exception in the task is one unless it is a KitError."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, KitError):
            return f"{type(cause).__name__}: {cause}", False
        return f"{type(cause or e).__name__}: {str(cause or e).strip().splitlines()[-1][:300]}", True
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__} after one retry: {first[:300]}", False


def _raise_failures(ctx, failed: list, bugs: list) -> None:
    if bugs:
        raise bugs[0]  # the remote traceback is in its message
    if failed:
        failed = sorted(failed, key=lambda f: f[0].index)
        ids = ",".join(str(m.index) for m, _ in failed)
        why = "; ".join(f"{m.name}: {reason}" for m, reason in failed)
        raise RunDirError(f"{len(failed)} member(s) failed on Ray ({why}); the other members' results are kept: "
                          f"train these again with: kit train {ctx.run_dir} --member {ids} --executor ray")


def member_task(run_dir: str, index: int, cwd: str, resume: bool, lines=None) -> dict | None:
    """The body of one Ray task: reopen the run from its directory, train member `index`, return its record.
    Log lines go to the driver through `lines` (a ray.util.queue.Queue), or to stdout without one."""
    from kit.context import prepare_run
    host = socket.gethostname()
    for path in (cwd, run_dir):
        if not Path(path).is_dir():
            raise RunDirError(f"node {host} has no {path}: kit's Ray tasks need the run directory and the driver's "
                              f"current directory at the same paths on every node (shared storage)")
    os.chdir(cwd)  # relative paths of the recipe (data.root, weight files) mean what they meant to the driver
    ctx = prepare_run(load_run_recipe(run_dir))
    member = next(m for m in ctx.plan.members if m.index == index)

    def log(msg: str) -> None:
        if lines is not None:
            import ray
            try:
                return lines.put((member.name, msg))
            except ray.exceptions.RayError:  # the driver and its queue have gone: keep the line in the worker log
                pass
        print(f"[{member.name}] {msg}", flush=True)
    log(f"training on {host} (pid {os.getpid()})")
    return train_member(ctx, member, resume=resume, on_epoch_end=epoch_logger(member.recipe, log), log=log)
