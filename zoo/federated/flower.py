"""The Flower engine: a federated entry's schedule, client program and strategy as a Flower ServerApp / ClientApp.

Flower (``flwr``, pinned at 1.42.0) carries the messages; the maths is the entry's own objects, so both
engines compute the same numbers:

- the **ServerApp** (:data:`server_app`) builds the entry's ``FederatedModule`` from the run config
  and replays its schedule: at server step ``n`` it sends each client that starts from version ``n``
  the global model and its arrival (client, version, step, local steps), pulls the replies the
  schedule says return at step ``n`` and calls the same ``Strategy.aggregate`` as the simulator.
  Asynchronous schedules keep several messages in flight; a reply is pulled when its step is due.
  The first wave (version 0) goes to every SuperNode and also tells which node holds which partition;
- the **ClientApp** (:data:`client_app`) holds its partition of the entry's datamodule (node config
  ``partition-id`` / ``num-partitions``). For ``LocalSGD`` it trains a LightningModule holding the
  received flat parameters with ``Trainer(max_steps=K)`` and SGD(lr) over a DataLoader whose
  ``batch_sampler`` yields :func:`~zoo.federated.core.batch_indices` rows, the simulator's
  mini-batches; any other client program runs its own ``run`` on this one client (its state kept in
  ``Context.state`` between messages). It replies with the delta ``theta^K - theta_sent``.

Deploy with Flower's own tools: a Flower App whose ``pyproject.toml`` names the components
``zoo.federated.flower:server_app`` and ``zoo.federated.flower:client_app``
(:func:`zoo.federated.loopback.write_app` writes one) and sets the run config keys ``zoo-config``
(the LightningCLI config's model and data, as YAML text), ``rounds`` (server steps; 0 takes the
module's ``rounds``), ``num-clients`` and ``zoo-out`` (a folder where the ServerApp writes
``global_params.safetensors`` and ``result.json``; empty: nothing written). Then ``flwr run APP
CONNECTION`` against a SuperLink with one SuperNode per client started with ``--node-config
'partition-id=I num-partitions=C'``. :class:`zoo.federated.loopback.LocalFederation` does exactly
that on loopback and is what ``zoo federate NAME --engine flower`` runs. The apps instantiate the
classes the run config names (``class_path``), with the trust one gives the app's code.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from zoo.federated.core import Arrival, ClientData, LocalSGD, batch_indices

__all__ = [
    "APP_COMPONENTS",
    "arrival_from_record",
    "arrival_to_record",
    "build_from_config",
    "client_app",
    "lightning_local_sgd",
    "params_from_record",
    "params_to_record",
    "run_server",
    "server_app",
    "train_client",
]

APP_COMPONENTS = {"serverapp": "zoo.federated.flower:server_app", "clientapp": "zoo.federated.flower:client_app"}
_ARRIVAL_KEYS = ("client", "version", "step")


# ----------------------------------------------------------------------------- message conversion
def params_to_record(params: Tensor) -> ArrayRecord:
    """A flat parameter vector (or update) as a Flower ``ArrayRecord`` (float32 bytes, exact)."""
    return ArrayRecord({"params": Array(params.detach().cpu().float().contiguous().numpy())})


def params_from_record(record: ArrayRecord) -> Tensor:
    """The flat vector of :func:`params_to_record`."""
    if "params" not in record:
        raise ValueError(f"the message carries no 'params' array (it has {sorted(record)})")
    return torch.from_numpy(record["params"].numpy().copy()).reshape(-1)


def arrival_to_record(arrival: Arrival) -> ConfigRecord:
    """An :class:`~zoo.federated.core.Arrival` as a ``ConfigRecord``: client, version, step and its config."""
    clash = set(arrival.config) & set(_ARRIVAL_KEYS)
    if clash:
        raise ValueError(f"an arrival's config may not reuse the keys {sorted(clash)}")
    return ConfigRecord({"client": arrival.client, "version": arrival.version, "step": arrival.step, **arrival.config})


def arrival_from_record(record: ConfigRecord) -> Arrival:
    """The arrival of :func:`arrival_to_record`."""
    missing = [k for k in _ARRIVAL_KEYS if k not in record]
    if missing:
        raise ValueError(f"the arrival record lacks {missing}")
    config = {k: v for k, v in record.items() if k not in _ARRIVAL_KEYS}
    return Arrival(int(record["client"]), int(record["version"]), int(record["step"]), config)


# ----------------------------------------------------------------------------- building the entry
def _instantiate(spec: Any) -> Any:
    """Build ``{class_path, init_args}`` specs (nested ones too), as LightningCLI does for a dumped config."""
    from zoo.registry import import_object

    if isinstance(spec, dict) and "class_path" in spec:
        cls = import_object(str(spec["class_path"]))
        return cls(**{k: _instantiate(v) for k, v in (spec.get("init_args") or {}).items()})  # type: ignore[operator]
    if isinstance(spec, list):
        return [_instantiate(v) for v in spec]
    if isinstance(spec, dict):
        return {k: _instantiate(v) for k, v in spec.items()}
    return spec


def build_from_config(config: str | dict[str, Any]) -> tuple[Any, Any]:
    """The ``FederatedModule`` and datamodule a config (YAML text or dict with ``model`` and ``data``) names."""
    from zoo.templates.federated import FederatedModule

    spec = yaml.safe_load(config) if isinstance(config, str) else config
    if not isinstance(spec, dict) or "model" not in spec or "data" not in spec:
        raise ValueError("the federated run config needs 'model' and 'data' sections (class_path + init_args)")
    module = _instantiate(spec["model"])
    if not isinstance(module, FederatedModule):
        raise TypeError(f"{type(module).__name__} is not a FederatedModule: the Flower engine runs federated entries only")
    data = _instantiate(spec["data"])
    if not hasattr(data, "client_data"):
        raise TypeError(f"{type(data).__name__} has no client_data(): use a FederatedDataModule")
    return module, data


# ----------------------------------------------------------------------------- the client side
def lightning_local_sgd(model: Any, sent: Tensor, x: Tensor, y: Tensor, rows: Tensor, lr: float) -> Tensor:
    """``K = len(rows)`` SGD steps with Lightning from ``sent`` on the mini-batches ``x[rows[k]]``; the local model.

    The LightningModule holds the flat parameters (one ``nn.Parameter``) and evaluates the entry's
    network on them (``FunctionalModel.loss``); ``Trainer(max_steps=K)`` runs plain ``SGD(lr)``.
    """
    from lightning.pytorch import LightningModule, Trainer
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class _FlatParams(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.params = nn.Parameter(sent.detach().clone())

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return model.loss(self.params, batch[0], batch[1])  # the client's mean loss on its mini-batch

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD([self.params], lr=lr)  # x <- x - lr * grad (LocalSGD's step)

    net = _FlatParams()
    if len(rows) == 0:
        return net.params.detach().clone()
    loader = DataLoader(TensorDataset(x, y), batch_sampler=rows.tolist())  # the simulator's mini-batches, in order
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(rows),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(net, loader)
    return net.params.detach().clone()


def train_client(module: Any, data: ClientData, sent: Tensor, arrival: Arrival, state: bytes | None = None) -> tuple[Tensor, bytes | None]:
    """One client's update from the model it was sent: ``(delta, client program state)``.

    A plain ``LocalSGD`` trains with Lightning (:func:`lightning_local_sgd`); any other client
    program runs its own ``run`` on this one client, its ``state_dict`` restored from and returned as
    ``state`` (bytes of ``torch.save``, read back with ``weights_only=True``).
    """
    program = module.build_client()
    seed = int(module.hparams["seed"])
    if type(program).run is LocalSGD.run:
        x, y = data.client(arrival.client)
        k = program.steps_of(arrival)
        rows = batch_indices(seed, arrival, len(x), k, program.batch_size) if k > 0 else torch.zeros(0, program.batch_size, dtype=torch.long)
        return lightning_local_sgd(module.functional, sent, x, y, rows, program.lr) - sent, None
    if state is not None:
        program.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    delta = program.run(module.functional, sent[None], data, [arrival], seed)[0]
    buffer = io.BytesIO()
    torch.save(program.state_dict(), buffer)
    return delta, buffer.getvalue()


client_app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError:
        raise ValueError("start each SuperNode with --node-config 'partition-id=I num-partitions=C'") from None


def _client_side(context: Context) -> tuple[Any, ClientData, int]:
    torch.set_num_threads(1)
    pid, num = _partition(context)
    module, dm = build_from_config(str(context.run_config["zoo-config"]))
    dm.setup("fit")
    data = dm.client_data()
    if data.num_clients != num or not 0 <= pid < num:
        raise ValueError(f"the datamodule has {data.num_clients} clients; this SuperNode says partition {pid} of {num}")
    return module, data, pid


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    """Train from the received version for this client's arrival; reply with the delta and this node's partition.

    The message names the arrival (``arrival``) or, in the first wave that goes to every SuperNode
    before the server knows which node holds which partition, every version-0 arrival by client
    (``first``), of which this node trains its own, if any.
    """
    module, data, pid = _client_side(context)
    info = ConfigRecord({"partition-id": pid, "num-partitions": data.num_clients, "num-examples": int(data.counts[pid])})
    reply = RecordDict({"partition": info})
    records = msg.content.config_records
    if "arrival" in records:
        arrival: Arrival | None = arrival_from_record(records["arrival"])
    else:
        first = records["first"]
        arrival = arrival_from_record(ConfigRecord(json.loads(str(first[str(pid)])))) if str(pid) in first else None
    if arrival is not None:
        if arrival.client != pid:
            raise ValueError(f"message for client {arrival.client} reached the SuperNode of partition {pid}")
        sent = params_from_record(msg.content.array_records["params"])
        stored = context.state.config_records.get("zoo-client")
        delta, state = train_client(module, data, sent, arrival, stored["state"] if stored is not None else None)  # type: ignore[arg-type]
        if state is not None:
            context.state["zoo-client"] = ConfigRecord({"state": state})
        reply["update"], reply["arrival"] = params_to_record(delta), arrival_to_record(arrival)
    return Message(reply, reply_to=msg)


# ----------------------------------------------------------------------------- the server side
def _pull(grid: Grid, ids: set[str], poll: float, timeout: float) -> dict[str, Message]:
    """The replies to ``ids`` (by the id they answer), pulling every ``poll`` seconds; a client's error raises."""
    got: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(ids):
        for reply in grid.pull_messages(list(ids - set(got))):
            if reply.has_error():
                raise RuntimeError(f"a client failed: {reply.error.reason}")
            got[reply.metadata.reply_to_message_id] = reply
        if len(got) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids) - len(got)} of {len(ids)} replies missing after {timeout:.0f} s")
            time.sleep(poll)
    return got


def _first_wave(grid: Grid, params: Tensor, arrivals: list[Arrival], num: int, poll: float, timeout: float) -> tuple[dict[int, int], Tensor, dict]:
    """Version 0 to every SuperNode with the version-0 arrivals: node by partition, example counts, the updates.

    Every client starts from version 0, so this one wave both maps SuperNodes to partitions (and
    their sizes, the importances ``p_i``) and runs the first local updates, all in flight together.
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(node_ids)} of {num} SuperNodes connected after {timeout:.0f} s")
        time.sleep(poll)
    if len({a.client for a in arrivals}) != len(arrivals):
        raise ValueError("a client starts twice from version 0: the schedule must keep one job per client in flight")
    first = ConfigRecord({str(a.client): json.dumps({"client": a.client, "version": a.version, "step": a.step, **a.config}) for a in arrivals})
    out = [Message(RecordDict({"params": params_to_record(params), "first": first}), n, MessageType.TRAIN, group_id="0") for n in node_ids]
    ids = dict(zip(grid.push_messages(out), node_ids, strict=True))
    nodes: dict[int, int] = {}
    counts: dict[int, int] = {}
    updates: dict[tuple[int, int, int], Tensor] = {}
    for mid, reply in _pull(grid, set(ids), poll, timeout).items():
        info = reply.content.config_records["partition"]
        pid = int(info["partition-id"])
        if int(info["num-partitions"]) != num or pid in nodes:
            raise ValueError(f"SuperNode partitions must be 0..{num - 1} once each; got partition {pid} of {info['num-partitions']} again or extra")
        nodes[pid], counts[pid] = ids[mid], int(info["num-examples"])
        if "update" in reply.content.array_records:
            updates[_key(arrival_from_record(reply.content.config_records["arrival"]))] = params_from_record(reply.content.array_records["update"])
    if len(nodes) != num:
        raise ValueError(f"no SuperNode holds partitions {sorted(set(range(num)) - set(nodes))}")
    return nodes, torch.tensor([counts[i] for i in range(num)]), updates


def _key(arrival: Arrival) -> tuple[int, int, int]:
    return arrival.client, arrival.version, arrival.step


def run_server(grid: Grid, module: Any, rounds: int, num_clients: int, poll: float = 0.1, timeout: float = 600.0, times: list[float] | None = None) -> Tensor:
    """Replay ``module``'s schedule for ``rounds`` server steps over Flower messages; the final global model.

    Every version ``v`` is sent when it exists (after step ``v - 1``) to the clients the schedule
    starts from it (version 0 in the first wave, :func:`_first_wave`); their replies are pulled at
    the step they return; the strategy aggregates them in the schedule's order, as
    :meth:`~zoo.federated.simulator.Simulator.step` does. ``times`` (if given) receives each server
    step's wall-clock seconds.
    """
    tick = time.perf_counter()
    schedule, strategy = module.build_schedule(num_clients), module.build_strategy()
    plan = [schedule.arrivals(n) for n in range(rounds)]  # the virtual clock never looks at parameters
    starts: dict[int, list[Arrival]] = {}
    for arrivals in plan:
        for a in arrivals:
            starts.setdefault(a.version, []).append(a)
    params = module.global_params.detach().clone()
    nodes, counts, done = _first_wave(grid, params, starts.get(0, []), num_clients, poll, timeout)
    strategy.start(params, num_clients, ClientData(torch.empty(0), torch.empty(0), counts).importance(str(module.hparams["importance"])))
    sent: dict[tuple[int, int, int], str] = {}
    for n, arrivals in enumerate(plan):
        tick = tick if n == 0 else time.perf_counter()
        later = starts.get(n, []) if n > 0 else []
        out = [
            Message(RecordDict({"params": params_to_record(params), "arrival": arrival_to_record(a)}), nodes[a.client], MessageType.TRAIN, group_id=str(a.step))
            for a in later
        ]
        for a, mid in zip(later, grid.push_messages(out), strict=True):
            if not mid:
                raise RuntimeError(f"the SuperLink refused the message for client {a.client}")
            sent[_key(a)] = mid
        replies = _pull(grid, {sent[_key(a)] for a in arrivals if _key(a) not in done}, poll, timeout)
        for a in arrivals:
            if _key(a) not in done:
                done[_key(a)] = params_from_record(replies[sent.pop(_key(a))].content.array_records["update"])
        updates = torch.stack([done.pop(_key(a)) for a in arrivals]) if arrivals else params.new_zeros((0, params.numel()))
        params = strategy.aggregate(params, arrivals, updates, n).detach()
        if times is not None:
            times.append(time.perf_counter() - tick)
    return params


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    config = context.run_config
    module, _ = build_from_config(str(config["zoo-config"]))
    rounds = int(config.get("rounds", 0)) or int(module.hparams["rounds"])
    start, times = time.perf_counter(), []
    num = int(config.get("num-clients", 0))
    if num < 1:
        raise ValueError("set the run config's num-clients (one SuperNode per client, node config partition-id / num-partitions)")
    params = run_server(grid, module, rounds, num, poll=float(config.get("poll-interval", 0.1)), times=times)
    out = str(config.get("zoo-out", ""))
    if out:
        from safetensors.torch import save_file

        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({"global_params": params.contiguous()}, str(Path(out) / "global_params.safetensors"))
        result = {"rounds": rounds, "seconds": time.perf_counter() - start, "step_seconds": times}
        (Path(out) / "result.json.part").write_text(json.dumps(result))
        (Path(out) / "result.json.part").rename(Path(out) / "result.json")  # whole or absent for a reader
