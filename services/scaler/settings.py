from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from tideserve.settings import TlsFields, load_settings

RUNTIMES = ("process", "docker", "swarm", "kubernetes")


@dataclass(frozen=True)
class ScalerSettings(TlsFields):
    host: str = "127.0.0.1"
    port: int = 8200
    balancers: tuple[str, ...] = ("127.0.0.1:8100",)
    # Marks this scaler's containers; a restarted scaler with the same id adopts them.
    scaler_id: str = ""
    # This process's role token for the balancers (`authorization: Bearer` on every call), a
    # file readable by its owner alone; "" sends none (a balancer on mutual TLS, or one started
    # with --allow-unauthenticated).
    balancer_token_file: str = ""
    # The workers' token file, handed by path to the workers this scaler starts (as their
    # balancer_token_file); container runtimes must mount it at the same path.
    worker_token_file: str = ""
    # swarm: the Docker secret that holds the workers' token, attached to every worker service
    # as /run/secrets/worker.token (a scaler in a stack has its worker_token_file as a secret
    # itself, which no host path can mount). Empty: worker_token_file is bind-mounted.
    worker_token_secret: str = ""
    runtime: str = "process"
    min_replicas: int = 1
    max_replicas: int = 4
    # The most replicas this scaler will ever run: no admin RPC (SetBounds, ScaleTo) can go above
    # it, only a restart with a new setting. With the process runtime every replica is a worker
    # process on this host, each loading its own copy of the model: lower it to what the host
    # holds. With containers, to what the cluster's quota allows.
    replica_ceiling: int = 64
    # "learned" runs the trained policy with the HPA rule as fallback (policy_parameters then
    # configure that HPA); see services/scaler/learning/fallback.py.
    policy: str = "learned"
    # Policy parameters as name=value pairs, e.g. "target=0.6,tolerance=0.1".
    policy_parameters: tuple[str, ...] = ()
    # The learned policy: its .zip, with the .npz and .json beside it ("" = the shipped one).
    policy_file: str = ""
    # Measured service profile of the served model (`tideserve profile`); "" = fit the service
    # times the workers report. Sets the utilisation and per-replica rate the policies see.
    profile: str = ""
    slo_ms: float = 100.0
    tick_s: float = 1.0
    up_cooldown_s: float = 2.0
    down_cooldown_s: float = 10.0
    # A scale-down goes only as low as the highest count proposed within this window, whatever
    # the policy. Without it the learned policy, following the rate's noise, changed the count
    # 2.3x as often as HPA, each start paying a cold start for capacity it soon let go. 3 s (a
    # worker goes once the proposals have stayed below the count for 3 s) was chosen on the
    # validation traces: it brings the learned policy's actions near HPA's at about its cost
    # before; longer windows hold it at the top of its swings (30 s: 1.17x HPA's worker-seconds).
    # 0 turns it off.
    down_stabilisation_s: float = 3.0
    max_step_up: int = 2
    max_step_down: int = 1
    drain_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    # Drain and stop every worker when the scaler exits (else a restarted scaler adopts them).
    stop_workers_on_exit: bool = True
    # process runtime: keep each worker's pid here so a restarted scaler adopts the live ones
    # ("" = workers stop with the scaler). `tideserve up` sets it.
    worker_state_dir: str = ""
    # What workers are started with.
    model_repository: str = "model_repository"
    worker_threads: int = 0
    worker_device: str = "auto"
    worker_slowdown: float = 1.0
    # The worker's service_profile: pad each batch to this profile's t(b) (a path the workers
    # can read; for containers, a path inside the image or a mounted volume). "" = off.
    worker_service_profile: str = ""
    # docker runtime only.
    worker_image: str = "tideserve-worker:dev"
    worker_cpus: float = 1.0
    worker_memory: str = "2g"
    # swarm: placement constraints ("node.labels.gpu==true"); kubernetes: see the pod template.
    worker_constraints: tuple[str, ...] = ()
    # swarm: the address workers bind and register ("{{.Node.Hostname}}" on several nodes).
    worker_host: str = "127.0.0.1"
    # kubernetes: the worker pod template (YAML) and its namespace ("" = the scaler's own).
    worker_pod_template: str = ""
    kubernetes_namespace: str = ""
    grace_s: float = 5.0
    # Admin RPCs need `authorization: Bearer <token>`, the token being the first line of
    # admin_token_file (readable by its owner only), or, with mutual TLS, a client certificate
    # whose CN or SAN is one of admin_identities. None set: admin is open (loopback).
    admin_token_file: str = ""
    # Refused when set, with a pointer to admin_token_file: a token given as a value sits in the
    # environment of every process the scaler starts (workers run model code) and in process
    # listings. Kept as a setting so an old deployment fails loudly instead of running open.
    admin_token: str = ""
    admin_identities: tuple[str, ...] = ()
    # Prometheus /metrics.
    metrics_port: int = 8202
    log_level: str = "INFO"
    json_logs: bool = False

    def __post_init__(self) -> None:
        if not self.scaler_id:
            object.__setattr__(self, "scaler_id", f"{socket.gethostname()}-{os.getpid()}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of {list(RUNTIMES)}")
        self.parsed_policy_parameters()
        self._check_replicas()
        if self.admin_token:
            raise ValueError(
                "admin_token (TIDESERVE_SCALER_ADMIN_TOKEN, --admin-token) is not accepted: a "
                "token in the environment or on the command line reaches every worker process "
                "and process listing. Write it to a file only you can read (chmod 600) and pass "
                "--admin-token-file FILE (or TIDESERVE_SCALER_ADMIN_TOKEN_FILE=FILE)"
            )
        if self.admin_identities and not self.tls_ca:
            raise ValueError(
                "admin_identities need mutual TLS: set tls_cert, tls_key and tls_ca, "
                "or use admin_token_file"
            )

    def _check_replicas(self) -> None:
        if self.replica_ceiling < 1:
            raise ValueError(f"replica_ceiling must be >= 1, got {self.replica_ceiling}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                "need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got "
                f"min_replicas {self.min_replicas}, max_replicas {self.max_replicas}"
            )
        if self.max_replicas > self.replica_ceiling:
            raise ValueError(
                f"max_replicas {self.max_replicas} is above replica_ceiling "
                f"{self.replica_ceiling}; lower --max-replicas or raise --replica-ceiling"
            )

    def worker_settings_env(self) -> dict[str, str]:
        """The worker settings this scaler passes on, as a container worker's environment."""
        env = {
            "TIDESERVE_WORKER_THREADS": str(self.worker_threads),
            "TIDESERVE_WORKER_DEVICE": self.worker_device,
            "TIDESERVE_WORKER_SLOWDOWN": str(self.worker_slowdown),
            "TIDESERVE_WORKER_SERVICE_PROFILE": self.worker_service_profile,
        }
        if self.worker_token_file:
            # The path only: the token stays in its file (container runtimes mount it at this
            # path), out of the environment.
            env["TIDESERVE_WORKER_BALANCER_TOKEN_FILE"] = os.path.abspath(self.worker_token_file)
        return env

    def parsed_policy_parameters(self) -> dict[str, float]:
        parameters = {}
        for pair in self.policy_parameters:
            name, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"policy parameter {pair!r} is not name=value")
            parameters[name.strip()] = float(value)
        return parameters


def parse(argv: Sequence[str] | None = None) -> ScalerSettings:
    return load_settings(
        ScalerSettings, argv, env_prefix="TIDESERVE_SCALER_", description="tideserve scaler"
    )
