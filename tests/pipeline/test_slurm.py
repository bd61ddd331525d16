"""SLURM configuration: TOML -> SLURMCluster arguments -> job script (no SLURM needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from myocomp.errors import ConfigError
from myocomp.pipeline.runner import load_slurm_config, parse_slurm_config

CONFIG = """
[slurm]
queue = "cpu-long"
account = "nako-muscle"
cores = 8
memory = "32GB"
walltime = "04:00:00"
job_extra_directives = ["--qos=normal"]
job_script_prologue = ["module load python/3.11", "source /opt/venvs/myocomp/bin/activate"]
log_directory = "{logs}"
scheduler_options = {{ host = "127.0.0.1" }}
jobs = 3

[batch]
model = "mrsegmentator"
"""


def test_slurm_config_builds_the_job_script(tmp_path: Path) -> None:
    path = tmp_path / "slurm.toml"
    path.write_text(CONFIG.format(logs=tmp_path / "logs"))
    cfg = load_slurm_config(path)
    assert cfg.jobs == 3 and cfg.maximum_jobs is None
    assert cfg.cluster_kwargs["processes"] == 8  # one single-threaded worker per core
    cluster = cfg.make_cluster()  # starts only a local scheduler; submits nothing
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu-long" in script
    assert "#SBATCH -A nako-muscle" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH -t 04:00:00" in script
    assert "#SBATCH --qos=normal" in script
    assert "#SBATCH --mem=" in script
    assert "module load python/3.11" in script
    # the workers run without Dask's statistical profiler (a third of a small participant's time)
    assert script.index("export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False") < script.index(
        "module load python/3.11"
    )
    assert "--nthreads 1" in script and "--nworkers 8" in script
    assert f"{tmp_path / 'logs'}/dask-worker-%J.err" in script


def test_adaptive_scaling_and_validation() -> None:
    cfg = parse_slurm_config({"cores": 4, "memory": "8GB", "minimum_jobs": 1, "maximum_jobs": 20})
    assert (cfg.jobs, cfg.minimum_jobs, cfg.maximum_jobs) == (None, 1, 20)
    with pytest.raises(ConfigError, match="unknown \\[slurm\\] keys: partition"):
        parse_slurm_config({"cores": 4, "memory": "8GB", "partition": "x"})
    with pytest.raises(ConfigError, match="needs memory"):
        parse_slurm_config({"cores": 4})
    with pytest.raises(ConfigError, match="either jobs"):
        parse_slurm_config({"cores": 4, "memory": "8GB", "jobs": 2, "maximum_jobs": 3})
    with pytest.raises(ConfigError, match="cores must be a positive integer"):
        parse_slurm_config({"cores": "four", "memory": "8GB"})
    with pytest.raises(ConfigError, match="list of strings"):
        parse_slurm_config({"cores": 4, "memory": "8GB", "job_extra_directives": "--qos=x"})


def test_missing_table_and_bad_toml(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[batch]\nmodel = 'x'\n")
    with pytest.raises(ConfigError, match="no \\[slurm\\] table"):
        load_slurm_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[slurm\n")
    with pytest.raises(ConfigError, match="cannot read TOML"):
        load_slurm_config(tmp_path / "b.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_slurm_config(tmp_path / "c.toml")


# --- a real single-node SLURM cluster (fixture `slurm`, see slurm_local.py) ---------------------

SLURM_TOML = """
[slurm]
queue = "debug"
cores = 1
processes = 1
memory = "1GB"
walltime = "00:30:00"
jobs = 2
death_timeout = 60
log_directory = "{logs}"
python = "{python}"
scheduler_options = {{ host = "127.0.0.1" }}
"""


def slurm_toml(tmp_path: Path) -> tuple[Path, Path]:
    import sys

    logs = tmp_path / "job-logs"
    path = tmp_path / "slurm.toml"
    path.write_text(SLURM_TOML.format(logs=logs, python=sys.executable))
    return path, logs


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_real_slurm_jobs_give_the_same_tables(slurm, cohort, reference, tmp_path, capsys) -> None:
    import pandas as pd

    from myocomp.cli import main

    config, logs = slurm_toml(tmp_path)
    out = tmp_path / "out"
    code = main(["batch", str(cohort), "--out", str(out), "--slurm", str(config), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "20 participants: 17 done, 0 skipped, 3 failed" in text, text
    for name in ("metrics.parquet", "slices.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(reference / name))
    assert (out / "errors.csv").read_text() == (reference / "errors.csv").read_text()
    job_logs = sorted(p.name for p in logs.glob("dask-worker-*.err"))
    assert job_logs, f"no job logs in {logs}"  # where log_directory says
    assert any("Starting Worker" in p.read_text() for p in logs.glob("dask-worker-*.err"))
    import time

    deadline = time.monotonic() + 60
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not slurm.jobs()  # the jobs ended with the batch


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_a_cancelled_worker_job_loses_and_duplicates_nothing(slurm, tmp_path, capsys) -> None:
    import subprocess
    import sys
    import time

    import pandas as pd

    from myocomp.cli import main
    from myocomp.synth.phantom import write_phantom

    from .cohort import PHANTOM

    n = 240
    write_phantom(tmp_path / "ph", seed=5, **PHANTOM)
    rows = [f"S{i:03d},ph/water.nii.gz,ph/fat.nii.gz,ph/labels.nii.gz,mrsegmentator"
            for i in range(n)]  # fmt: skip
    manifest = tmp_path / "m.csv"
    manifest.write_text("participant_id,water,fat,labels,profile\n" + "\n".join(rows) + "\n")
    config, _ = slurm_toml(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from myocomp.cli import main; sys.exit(main(sys.argv[1:]))",
           "batch", str(manifest), "--out", str(out), "--slurm", str(config), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    cancelled = None
    try:
        deadline = time.monotonic() + 240
        while cancelled is None:
            done = len(list((out / "participants").glob("*/provenance.json")))
            jobs = slurm.jobs()
            if done >= 20 and len(jobs) == 2:
                cancelled = jobs[0]
                slurm.run("scancel", cancelled)
            assert proc.poll() is None, f"the batch ended before a job was cancelled: {done} done"
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_at_cancel = done
    assert done_at_cancel < n, "cancelled too late to test anything"
    if proc.returncode != 0 or " 0 failed" not in output:  # Dask gave up on some: resume
        assert main(["batch", str(manifest), "--out", str(out), "--workers", "2", "--resume",
                     "--no-progress"]) == 0  # fmt: skip
        assert " 0 failed" in capsys.readouterr().out
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics["participant_id"].unique()) == [f"S{i:03d}" for i in range(n)]
    assert not metrics.duplicated(["participant_id", "group"]).any()
    first = metrics[metrics["participant_id"] == "S000"].drop(columns="participant_id")
    for _, rows_ in metrics.groupby("participant_id"):
        pd.testing.assert_frame_equal(
            rows_.drop(columns="participant_id").reset_index(drop=True),
            first.reset_index(drop=True),
        )
