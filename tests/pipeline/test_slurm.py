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
