"""Running federated entries: ``zoo federate``'s two engines, and Flower on loopback.

:class:`LocalFederation` starts what a Flower deployment is made of on this machine: a SuperLink and
one SuperNode per client (``flower-superlink`` / ``flower-supernode``, insecure, free local ports,
no Ray, no dependency installation), then submits a Flower App whose components are
:data:`zoo.federated.flower.server_app` and :data:`zoo.federated.flower.client_app` (as ``flwr run``
does) and waits for the ServerApp's final global model. :func:`federate` runs an entry's card config
on the in-process simulator or on that federation and tests the final model the same way.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from zoo.federated.flower import APP_COMPONENTS

__all__ = ["ENGINES", "LocalFederation", "federate", "write_app"]

ENGINES = ("sim", "flower")


def write_app(folder: Path, config_yaml: str, rounds: int, num_clients: int, out: Path | None = None, poll: float = 0.1) -> Path:
    """A Flower App folder (``pyproject.toml`` only: the components live in the installed zoo) for ``flwr run``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "zoo-federated"
version = "1.0.0"
description = "a balance-zoo federated entry on Flower"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "balance-zoo"

[tool.flwr.app.components]
serverapp = "{APP_COMPONENTS["serverapp"]}"
clientapp = "{APP_COMPONENTS["clientapp"]}"

[tool.flwr.app.config]
zoo-config = {json.dumps(config_yaml)}
rounds = {int(rounds)}
num-clients = {int(num_clients)}
zoo-out = {json.dumps(str(out) if out is not None else "")}
poll-interval = {float(poll)}
"""
    (folder / "pyproject.toml").write_text(text)
    return folder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalFederation:
    """A SuperLink and one SuperNode per client on loopback (insecure, free ports), stopped on exit.

    >>> with LocalFederation(num_clients=2) as fed:  # doctest: +SKIP
    ...     params = fed.run(config_yaml, rounds=2)
    """

    def __init__(self, num_clients: int, workdir: str | Path | None = None, pythonpath: Sequence[str | Path] = (), timeout: float = 300.0) -> None:
        if num_clients < 1:
            raise ValueError(f"need at least one client, got {num_clients}")
        self.num_clients, self.timeout = num_clients, timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="zoo-flower-") if workdir is None else None
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.processes: list[subprocess.Popen] = []
        self.result: dict[str, Any] = {}  # the last run's result.json: rounds, seconds, step_seconds
        bin_dir = str(Path(sys.executable).parent)
        paths = [str(Path(p).resolve()) for p in pythonpath]
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # flwr-serverapp / flwr-clientapp of this venv
            "FLWR_HOME": str(self.workdir / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep),
        }

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True)
        log.close()
        self.processes.append(proc)

    def _listening(self, proc: subprocess.Popen, port: int, seconds: float) -> bool:
        """Whether ``proc`` accepts connections on ``port`` within ``seconds`` (False once it has exited)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return True
            time.sleep(0.1)
        return False

    def __enter__(self) -> LocalFederation:
        try:
            for _ in range(3):  # a port taken between choosing and binding it: take another
                self._start("superlink", ["flower-superlink", "--insecure", "--port", str(self.port), "--disable-runtime-dependency-installation"])
                if self._listening(self.processes[-1], self.port, self.timeout):
                    break
                self.close(cleanup=False)
                self.port = _free_port()
            else:
                raise RuntimeError(f"the SuperLink did not start\n{self.logs()}")
            home = Path(self.env["FLWR_HOME"])
            home.mkdir(parents=True, exist_ok=True)  # a connection named "zoo", for flwr ls / flwr log with this FLWR_HOME
            (home / "config.toml").write_text(f'[superlink]\ndefault = "zoo"\n\n[superlink.zoo]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
            for i in range(self.num_clients):
                node_config = f"partition-id={i} num-partitions={self.num_clients}"
                args = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--node-config", node_config]
                self._start(f"supernode-{i}", [*args, "--port", str(_free_port()), "--max-wait-time", str(self.timeout)])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, cleanup: bool = True) -> None:
        """Stop every process this federation started (their process groups: SuperExec and app children too)."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children left in the group (app processes)
            except ProcessLookupError:
                pass
        self.processes = []
        if cleanup and self._tmp is not None:
            self._tmp.cleanup()

    def logs(self, lines: int = 20) -> str:
        """The last lines of each process's log (for errors)."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def run(self, config_yaml: str, rounds: int, poll: float = 0.1) -> Tensor:
        """Submit the entry as a Flower run (as ``flwr run`` does) and wait for its final global model."""
        n = len(list(self.workdir.glob("run-*")))
        out = self.workdir / f"run-{n}" / "out"
        app = write_app(self.workdir / f"run-{n}" / "app", config_yaml, rounds, self.num_clients, out, poll)
        deadline = time.monotonic() + self.timeout
        while True:  # the SuperLink's Control API may still be starting
            try:
                self.run_id = _start_run(app, f"127.0.0.1:{self.port}", self.env["FLWR_HOME"])
                break
            except Exception as err:  # noqa: BLE001 - retried until the deadline, then reported
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                    raise RuntimeError(f"could not start the Flower run: {err}\n{self.logs()}") from err
                time.sleep(0.3)
        result = out / "global_params.safetensors"
        while not (out / "result.json").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result from the ServerApp after {self.timeout:.0f} s\n{self.logs()}")
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a Flower process stopped before the run ended\n{self.logs()}")
            if _run_failed(self.workdir / "superlink.log"):
                raise RuntimeError(f"the Flower run failed\n{self.logs(40)}")
            status, sub_status, details = _run_status(f"127.0.0.1:{self.port}", self.env["FLWR_HOME"], self.run_id)
            if status == "finished" and not (out / "result.json").exists():
                raise RuntimeError(f"the Flower run {self.run_id} finished ({sub_status}) without a result: {details}\n{self.logs()}")
            time.sleep(0.5)
        from safetensors.torch import load_file

        self.result = json.loads((out / "result.json").read_text())
        return load_file(str(result))["global_params"]


@contextlib.contextmanager
def _control(address: str, flwr_home: str) -> Iterator[Any]:
    """A client of the SuperLink's Control API (what the ``flwr`` command talks to), insecure, on ``address``."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = flwr_home  # credentials are looked up under the federation's own home
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "Using SuperLink ..." line
            client = init_http_client_from_connection(SuperLinkConnection(name="zoo", address=address, insecure=True))
        try:
            yield client
        finally:
            client.close()
    finally:
        if before is None:
            os.environ.pop("FLWR_HOME")
        else:
            os.environ["FLWR_HOME"] = before


def _start_run(app: Path, address: str, flwr_home: str) -> int:
    """What ``flwr run APP CONNECTION`` does (validate, build the FAB, StartRun on the Control API), in this process.

    In process because ``flwr run`` checks the components with ``find_spec``, which imports the
    ``zoo`` package (and Lightning) once more in a fresh interpreter.
    """
    import hashlib

    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.fab import Fab

    load_and_validate(app / "pyproject.toml")
    fab_bytes = build_fab_from_disk(app)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    with _control(address, flwr_home) as client:
        res = client.StartRun(StartRunRequest(fab=fab_to_proto(fab), override_config=user_config_to_proto({}), federation=""))
    if not res.HasField("run_id"):
        raise RuntimeError("the SuperLink did not start the run")
    return int(res.run_id)


def _run_status(address: str, flwr_home: str, run_id: int) -> tuple[str, str, str]:
    """The run's ``(status, sub_status, details)`` as ``flwr ls --run-id`` shows them."""
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=no-name-in-module

    with _control(address, flwr_home) as client:
        res = client.ListRuns(ListRunsRequest(run_id=run_id))
    if run_id not in res.run_dict:
        return "unknown", "", ""
    status = run_from_proto(res.run_dict[run_id]).status
    return status.status, status.sub_status, status.details


def _run_failed(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "Traceback" in text or "ServerApp raised an exception" in text


# ----------------------------------------------------------------------------- zoo federate
def federate(
    name: str,
    engine: str = "sim",
    rounds: int | None = None,
    clients: int | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run an entry's card config (or ``config``) on an engine; the test metrics, rounds, clients and seconds.

    ``sim``: the in-process simulator under ``trainer.fit`` (what ``zoo fit`` trains). ``flower``: a
    SuperLink and one SuperNode per client on loopback (:class:`LocalFederation`), the rounds run by
    :data:`server_app` with Lightning clients; the final global model is then tested like the sim's.
    ``overrides`` are LightningCLI arguments (``--model.init_args.scheme=sync``).
    """
    from zoo.errors import ZooError
    from zoo.lightning_cli import build_lightning_cli
    from zoo.registry import get_entry
    from zoo.templates.federated import FederatedModule

    if engine not in ENGINES:
        raise ZooError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    entry = get_entry(name)
    if not any(issubclass(entry.load_module_class(path), FederatedModule) for path in entry.module_paths):
        raise ZooError(f"{name} is not a federated entry (its module is not a FederatedModule); zoo federate runs entries such as fedfix, afl, admm-fl")
    path = Path(config) if config is not None else entry.card_dir / "config.yaml"
    if not path.is_file():
        raise ZooError(f"no config at {path}: pass --config PATH")
    if (rounds is not None and rounds < 1) or (clients is not None and clients < 1):
        raise ZooError(f"--rounds and --clients must be >= 1, got {rounds}, {clients}")
    for arg in overrides:
        if not arg.startswith(("--model.", "--data.", "--seed_everything")):
            raise ZooError(f"override {arg!r}: only --model.*, --data.* and --seed_everything are passed on")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-run device banner around the table
    with tempfile.TemporaryDirectory(prefix="zoo-federate-") as tmp:
        args = ["--config", str(path), *overrides]
        args += [f"--model.init_args.rounds={rounds}"] if rounds is not None else []
        args += [f"--data.init_args.num_clients={clients}"] if clients is not None else []
        args += ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        args += ["--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp}"]
        try:
            lcli = build_lightning_cli(args, run=False)
        except (ValueError, TypeError) as err:  # a value the model or data refuses (e.g. --clients): bad input
            while (err.__cause__ or err.__context__) is not None:
                err = err.__cause__ or err.__context__  # type: ignore[assignment]
            raise ZooError(f"{path}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
        module, data, trainer = lcli.model, lcli.datamodule, lcli.trainer
        if not isinstance(module, FederatedModule):
            raise ZooError(f"{path} trains {type(module).__name__}, not a FederatedModule")
        start = time.perf_counter()
        if engine == "sim":
            trainer.fit(module, datamodule=data)
        else:
            dumped = yaml.safe_load(lcli.parser.dump(lcli.config, skip_none=False))
            spec = yaml.safe_dump({"model": dumped["model"], "data": dumped["data"]}, sort_keys=False)
            data.setup("fit")
            with LocalFederation(data.client_data().num_clients, workdir=Path(tmp) / "flower", timeout=timeout) as fed:
                params = fed.run(spec, rounds=int(module.hparams["rounds"]))
            module.global_params.data.copy_(params)
        seconds = time.perf_counter() - start
        metrics = trainer.test(module, datamodule=data, verbose=False)[0]
    return {
        "engine": engine,
        "rounds": module.simulator.steps_done if module.simulator is not None else int(module.hparams["rounds"]),
        "clients": data.client_data().num_clients,
        "seconds": seconds,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        "global_params": module.global_params.detach().clone(),
    }
