"""Real Airflow for the DAG tests: `airflow dags test` runs of the repository's DAG files in Airflow's own
environment (the tests themselves run in the ML environment), what they left in its database, and a Celery
cluster of real Airflow components on PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import requests
import yaml
from PIL import Image
from services import free_port

from training.data import Record, read_split, write_split

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_BIN = REPO_ROOT / ".venvs" / "airflow" / "bin"

# The `handful` recipe of tests/conftest.py's train_config: four invoices memorised in a few hundred steps.
TRAIN = dict(
    base=None,  # from scratch: the shipped base reads at 960x720, three times this recipe's cost
    preset="tiny",
    image_size=[480, 320],  # enough to tell four pages apart, a third of the default's cost
    max_length=384,
    max_steps=400,
    batch_size=4,
    learning_rate=1e-3,
    warmup_steps=10,
    eval_every=100,
    eval_samples=4,
    patience=100,
    checkpoint_every=1000,
    vocab_size=800,
)


def memorisable_dataset(handful: Path, dataset: Path) -> Path:
    """`handful` as a dataset that passes validation: its four invoices for training, and as validation and
    test splits the same pages re-encoded (JPEG) under their own ids, so no image sits in two splits."""
    train = read_split(handful / "train")
    (dataset / "train").mkdir(parents=True)
    for record in train:
        shutil.copy(handful / "train" / record.file_name, dataset / "train")
    write_split(dataset / "train", train)
    for split, quality in (("validation", 97), ("test", 96)):
        (dataset / split).mkdir()
        records = []
        for record in read_split(handful / split):
            name = f"{Path(record.file_name).stem}-{split}.jpg"
            Image.open(handful / split / record.file_name).convert("RGB").save(
                dataset / split / name, quality=quality
            )
            records.append(Record(name, record.gt_parse, record.meta))
        write_split(dataset / split, records)
    return dataset


def airflow_env(home: Path, project: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow command on `home`, with the DAGs working in `project`."""
    # Nothing of a `make up` Airflow (make exports its settings) may leak into the test's own.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "PATH": f"{AIRFLOW_BIN}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "INVOICE_PROJECT_ROOT": str(project),
        "INVOICE_PARAMS": str(project / "params.yaml"),
        "INVOICE_ML_BIN": str(REPO_ROOT / ".venvs" / "ml" / "bin"),
        **extra,
    }
    env.pop("VIRTUAL_ENV", None)
    return env


def migrate(home: Path) -> Path:
    """Create (or upgrade) the SQLite metadata database of the Airflow home `home`; returns `home`."""
    result = subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), "db", "migrate"],
        env=airflow_env(home, REPO_ROOT),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return home


def dags_test(
    env: dict[str, str], dag_id: str, conf: dict | None = None, timeout: int = 900
) -> tuple[str, str]:
    """`airflow dags test` one run of `dag_id`; returns (the run's final state, the log)."""
    command = [str(AIRFLOW_BIN / "airflow"), "dags", "test", dag_id]
    if conf:
        command += ["-c", json.dumps(conf)]
    result = subprocess.run(
        command, env=env, cwd=env["INVOICE_PROJECT_ROOT"], capture_output=True, text=True, timeout=timeout
    )
    log = result.stdout + result.stderr
    # the whole log stays beside the metadata database (failures print only its tail)
    runs = len(list(Path(env["AIRFLOW_HOME"]).glob(f"{dag_id}-*.log")))
    (Path(env["AIRFLOW_HOME"]) / f"{dag_id}-{runs + 1}.log").write_text(log)
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        row = db.execute(
            "select state from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()
    return (row[0] if row else "missing"), log


def task_states(env: dict[str, str], dag_id: str) -> dict[str, str]:
    """task_id[map_index] -> state of the latest run of `dag_id`."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        run_id = db.execute(
            "select run_id from dag_run where dag_id = ? order by id desc limit 1", (dag_id,)
        ).fetchone()[0]
        rows = db.execute(
            "select task_id, map_index, state from task_instance where dag_id = ? and run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return {f"{task}[{index}]" if index >= 0 else task: state for task, index, state in rows}


def asset_events(env: dict[str, str], name: str) -> int:
    """How many events the Asset `name` has received."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute(
            "select count(*) from asset_event e join asset a on a.id = e.asset_id where a.name = ?", (name,)
        ).fetchone()[0]


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(root: Path, dataset: Path, params: dict) -> Path:
    """A project folder as the DAGs expect one: a git + DVC repository whose `data/` (a copy of `dataset`)
    is versioned and pushed to a folder remote, and a params.yaml (the repository's, updated by `params`)."""
    root.mkdir(parents=True)
    run("git", "init", "-q", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    run("dvc", "remote", "add", "-d", "storage", str(root.parent / f"{root.name}-remote"), cwd=root)
    run("cp", "-r", str(dataset), str(root / "data"), cwd=root)
    run("dvc", "add", "-q", "data", cwd=root)
    run("dvc", "push", "-q", cwd=root)
    settings = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in params.items():
        settings.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return root


class Cluster:
    """Airflow as production runs it: api-server, scheduler and dag-processor on a PostgreSQL metadata database,
    and Celery workers (Redis broker), each a real process in its own session. `stop()` ends them all."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.home / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            [str(AIRFLOW_BIN / "airflow"), *args],
            env=self.env,
            cwd=self.env["INVOICE_PROJECT_ROOT"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.processes[name]

    def start_worker(self, name: str, queues: str, concurrency: int = 2) -> subprocess.Popen:
        return self.start(
            name,
            *("celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs"),
            *("--queues", queues, "--concurrency", str(concurrency)),
        )

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def wait_until(self, condition, what: str, seconds: float = 180):
        """Poll `condition()` until it returns something truthy; fails naming `what`, with the logs' tails."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(1)
        tails = "\n".join(f"--- {name}\n{self.log(name)[-1500:]}" for name in self.processes)
        raise AssertionError(f"{what}: not within {seconds} s\n{tails}")

    def kill(self, name: str) -> list[int]:
        """SIGKILL a component and every process under it, as a lost machine would; returns the pids."""
        import psutil

        root = psutil.Process(self.processes[name].pid)
        victims = [*root.children(recursive=True), root]
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.processes[name].wait()
        return [process.pid for process in victims]

    def descendants(self, name: str) -> set[int]:
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            return {p.pid for p in psutil.Process(self.processes[name].pid).children(recursive=True)}
        return set()

    def stop(self) -> None:
        for name in list(self.processes):
            if self.processes[name].poll() is None:
                self.kill(name)


def empty_broker(db: int) -> str:
    """The URL of Redis database `db` on this machine, emptied first (no queued message of an earlier run),
    with the redis client of Airflow's environment."""
    subprocess.run(
        [str(AIRFLOW_BIN / "python"), "-c", f"import redis; redis.Redis(db={db}).flushdb()"], check=True
    )
    return f"redis://127.0.0.1:6379/{db}"


def celery_env(home: Path, project: Path, metadata_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """`airflow_env` for a Celery cluster: PostgreSQL metadata and result backend, the broker, its own
    api-server port and JWT secret, and failure detection quick enough for a test (a task whose worker died
    is failed and retried after 20 s without a heartbeat); `extra` overrides any of it (e.g. the executor)."""
    port = free_port()
    settings = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    }
    return airflow_env(home, project, **{**settings, **extra})


def start_cluster(env: dict[str, str], workers: dict[str, str]) -> Cluster:
    """Migrate the metadata database, start api-server, scheduler, dag-processor and the Celery `workers`
    (name -> queues), and wait until the scheduler is healthy and every worker is ready."""
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cluster = Cluster(home, env)
    port = env["AIRFLOW__API__PORT"]
    cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", port)
    cluster.start("scheduler", "scheduler", "--skip-serve-logs")
    cluster.start("dag-processor", "dag-processor")
    for name, queues in workers.items():
        cluster.start_worker(name, queues)

    def healthy() -> bool:
        try:
            health = requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        return all(health[part]["status"] == "healthy" for part in ("metadatabase", "scheduler"))

    try:
        cluster.wait_until(healthy, "Airflow healthy")
        for name in workers:
            cluster.wait_until(
                lambda name=name: f"{name}@" in cluster.log(name) and " ready" in cluster.log(name),
                f"{name} ready",
            )
    except AssertionError:
        cluster.stop()
        raise
    return cluster


def metadata_query(url: str, sql: str, **values) -> list:
    """Rows of `sql` on a PostgreSQL (or any SQLAlchemy) metadata database."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(sql), values).all()
    finally:
        engine.dispose()


def trigger(cluster: Cluster, dag_id: str, run_id: str) -> None:
    """`airflow dags trigger` once the dag-processor has parsed `dag_id`."""
    metadata = cluster.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    cluster.wait_until(
        lambda: metadata_query(metadata, "select 1 from dag where dag_id = :dag", dag=dag_id),
        f"{dag_id} parsed",
    )
    result = subprocess.run(
        [str(AIRFLOW_BIN / "airflow"), "dags", "trigger", dag_id, "--run-id", run_id],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_state(cluster: Cluster, run_id: str) -> str | None:
    """The run's state once it is final (success or failed), else None."""
    rows = metadata_query(
        cluster.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "select state from dag_run where run_id = :run",
        run=run_id,
    )
    return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None
