"""A local Airflow for ehrlift's DAGs, bound to loopback: API server, scheduler, DAG processor, triggerer.

`airflow standalone` runs the same four components, but its scheduler and triggerer also start Airflow's
log servers, which listen on every interface and have no host setting. On one machine the API server
reads task logs from disk, so this launcher starts the components itself with `--skip-serve-logs` and
nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POOLS = REPO / "schemas" / "airflow_pools.json"
COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
PASSWORDS = "simple_auth_manager_passwords.json.generated"


def airflow_env(home: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every component shares: ehrlift's DAGs only, loopback only, one stable secret."""
    home = home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        }
    )
    return env


def _secret(home: Path) -> str:
    """One signing secret for tokens, kept in AIRFLOW_HOME (mode 0600) so every component and restart
    agree on it."""
    path = home / "ehrlift-jwt-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def prepare(env: dict[str, str]) -> None:
    """Create or upgrade the metadata database and the pools the DAGs use."""
    airflow = [sys.executable, "-m", "airflow"]
    # Fixed arguments throughout: this interpreter's airflow, names from this module and schemas/.
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=900)  # noqa: S603
    for name, pool in json.loads(POOLS.read_text())["pools"].items():
        args = ["pools", "set", name, str(pool["slots"]), pool["description"]]
        subprocess.run([*airflow, *args], env=env, check=True, capture_output=True, timeout=300)  # noqa: S603


def start(env: dict[str, str], logs: Path) -> dict[str, subprocess.Popen]:
    """Start the four components, each in its own session (stopping one stops its children)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, args in COMPONENTS.items():
        with (logs / f"{name}.log").open("ab") as log:
            procs[name] = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "airflow", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    return procs


def stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def serve(home: Path, port: int) -> int:
    """Prepare, start, say where everything is, and run until Ctrl-C or a component exits."""
    env = airflow_env(home, port)
    print(f"AIRFLOW_HOME: {env['AIRFLOW_HOME']}")
    print("preparing the metadata database and pools ...", flush=True)
    prepare(env)
    logs = Path(env["AIRFLOW_HOME"]) / "component-logs"
    procs = start(env, logs)
    print(f"Airflow UI and REST API: http://127.0.0.1:{port} (loopback only)")
    print(f"user admin; its password is written by the API server to {Path(env['AIRFLOW_HOME']) / PASSWORDS}")
    print(f"DAGs: {env['AIRFLOW__CORE__DAGS_FOLDER']}; component logs: {logs}")
    print('trigger `ehr_migration` with a config such as {"sources": ["/path/to/files"]}; Ctrl-C stops')
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        failed = [name for name, p in procs.items() if p.poll() is not None]
        print(f"stopped: {', '.join(failed)} exited; see its log in {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a local Airflow for ehrlift's DAGs, on loopback")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("AIRFLOW_HOME", "ehrlift-data/airflow"))
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    args = parser.parse_args(argv)
    return serve(args.home, args.port)


if __name__ == "__main__":
    sys.exit(main())
