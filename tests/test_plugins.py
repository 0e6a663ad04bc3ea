"""Estimators from outside the package (bench.plugins): a file, a module or an installed entry
point registers an estimator that then runs everywhere a built-in one does, in spawned workers
too, and is named with its file's hash in estimators.csv, env.json and the report; a plugin that
breaks the contract is refused with one line and exit status 2, registering nothing."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import plugins
from bench.__main__ import main
from bench.results import read_rows
from bench.suites import make_suites
from tests.conftest import docs_estimator_example, untimed
from vae_core.estimators import REGISTRY

GOOD_BODY = docs_estimator_example()
RUN_PLUGIN = ["run", "--suite", "quick", "--device", "cpu", "--estimators", "score_half"]


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory) -> Path:
    """docs/estimators.md's example, saved as a user's own file outside the repository."""
    path = tmp_path_factory.mktemp("user") / "score_half.py"
    path.write_text(docs_estimator_example())
    return path


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Whatever a test loads is unloaded afterwards: the registry, the loaded plugins and their
    modules as they were."""
    registry, loaded, modules = dict(REGISTRY), dict(plugins._LOADED), set(sys.modules)
    yield
    REGISTRY.clear()
    REGISTRY.update(registry)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def test_a_plugin_file_joins_the_registry_and_every_suite_of_its_latent_type(
    plugin_file, clean_registry
):
    plugin = plugins.load_plugin(str(plugin_file))
    assert plugin.estimators == ("score_half",)
    assert REGISTRY["score_half"].min_particles == 2
    default = make_suites()["default"].runs
    assert {(r.kl, r.k) for r in default if r.estimator == "score_half"} == {
        ("analytic", 2),
        ("mc", 2),
    }
    assert not any(r.estimator == "score_half" for r in make_suites()["discrete"].runs)
    sha = hashlib.sha256(plugin_file.read_bytes()).hexdigest()
    assert plugins.source_of("score_half") == f"{plugin_file} sha256:{sha}"
    assert plugins.source_of("reparam") == ""
    assert plugins.load_plugin(str(plugin_file)) is plugin  # loading twice runs it once


def test_a_module_plugin_and_an_entry_point_load(clean_registry, tmp_path, monkeypatch):
    (tmp_path / "my_estimators.py").write_text(
        GOOD_BODY.replace('"score_half"', '"score_half_module"')
    )
    (tmp_path / "their_estimators.py").write_text(
        GOOD_BODY.replace('"score_half"', '"score_half_entry"')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint(
        name="theirs", value="their_estimators", group=plugins.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [entry] if group == plugins.ENTRY_POINT_GROUP else [],
    )
    loaded = plugins.load_plugins(["my_estimators"])
    assert [p.estimators for p in loaded] == [("score_half_module",), ("score_half_entry",)]
    assert loaded[0].path == str(tmp_path / "my_estimators.py")


BROKEN = {
    "clash": (GOOD_BODY.replace('"score_half"', '"reparam"'), "is already registered"),
    "no_forward": (
        GOOD_BODY.replace("def forward(self, x, noise):", "def forwards(self, x, noise):"),
        "has no forward(x, noise) of its own",
    ),
    "shapes": (
        GOOD_BODY.replace(
            "self.elbo_per_example(f, kl_analytic), f.detach())",
            "self.elbo_per_example(f, kl_analytic).sum(), f.detach())",
        ),
        "forward's output has shapes",
    ),
    "stateful": (
        GOOD_BODY.replace(
            "    def forward(self, x, noise):\n",
            "    def build_state(self):\n"
            "        self.register_buffer('calls', torch.zeros(()))\n\n"
            "    def forward(self, x, noise):\n"
            "        self.calls += 1\n",
        ).replace("from vae_core", "import torch\nfrom vae_core", 1),
        "forward changed its state (calls)",
    ),
    "import_error": ("import not_a_module_anywhere\n" + GOOD_BODY, "import failed"),
    "nothing": ("x = 1\n", "registers no estimator"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_plugin_breaking_the_contract_is_refused_with_one_line(
    case, clean_registry, tmp_path, capsys
):
    source, problem = BROKEN[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    registered = dict(REGISTRY)
    assert main(["list", "--plugin", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: plugin {path}"), err[0]
    assert problem in err[0], err[0]
    assert REGISTRY == registered
    assert not (set(sys.modules) & {plugins.FILE_MODULE_PREFIX + case})


def test_a_broken_plugin_writes_nothing(clean_registry, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN["no_forward"][0])
    out = tmp_path / "out"
    assert main([*RUN_PLUGIN, "--plugin", str(path), "--out", str(out)]) == 2
    assert not out.exists()


def test_a_worker_runs_the_shipped_source_and_refuses_another_version(clean_registry, tmp_path):
    copy = tmp_path / "shipped.py"
    copy.write_text(GOOD_BODY)
    shipped = plugins.load_plugin(str(copy))
    del REGISTRY["score_half"]  # as in a fresh worker process, where the file may not exist
    plugins._LOADED.clear()
    del sys.modules[shipped.module]
    copy.unlink()
    plugins.install([shipped])
    assert "score_half" in REGISTRY
    plugins.install([shipped])  # a reused worker: nothing to do
    changed = plugins.Plugin(**{**shipped.__dict__, "sha256": "0" * 64})
    with pytest.raises(plugins.PluginError, match="another version"):
        plugins.install([changed])


def bench_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench *args` run from `directory` (a user's own, outside the repository)."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def plugin_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """docs/estimators.md's example, saved in a user's directory and run from there, one
    configuration at a time and on two spawned workers."""
    home = tmp_path_factory.mktemp("user")
    plugin = home / "score_half.py"
    plugin.write_text(GOOD_BODY)
    serial, pooled = home / "serial", home / "pooled"
    for out, workers in ((serial, "1"), (pooled, "2")):
        done = bench_in(
            home, *RUN_PLUGIN, "--plugin", "score_half.py", "--out", str(out), "--workers", workers
        )
        assert done.returncode == 0, done.stderr
    return plugin, serial, pooled


def test_a_plugin_estimator_trains_on_spawned_workers_as_in_the_driver(plugin_runs):
    _, serial, pooled = plugin_runs
    rows = untimed(serial / "runs.csv")
    assert {(r[2], r[3]) for r in rows} == {("score_half", "analytic"), ("score_half", "mc")}
    assert untimed(pooled / "runs.csv") == rows


def test_the_results_name_the_plugin_file_and_its_hash(plugin_runs):
    plugin, serial, _ = plugin_runs
    sha = hashlib.sha256(plugin.read_bytes()).hexdigest()
    facts = (serial / "estimators.csv").read_text().splitlines()
    assert facts[1].endswith(f",{plugin} sha256:{sha}")
    record = json.loads((serial / "env.json").read_text())
    assert record["plugins"] == [
        {"spec": "score_half.py", "path": str(plugin), "sha256": sha, "estimators": ["score_half"]}
    ]
    assert main(["report", "--out", str(serial)]) == 0
    summary = (serial / "summary.md").read_text()
    assert f"plugin estimators: score_half from {plugin} (sha256 {sha[:12]})" in summary
    assert "**score_half**" in summary
    assert read_rows(serial / "runs.csv")


def test_the_console_script_lists_a_plugin_from_a_users_directory(plugin_file):
    """`make install` (pip install -e .) puts `vae-bench` beside the interpreter."""
    script = Path(sys.executable).parent / "vae-bench"
    assert script.is_file(), "vae-bench is not installed: run make install"
    done = subprocess.run(
        [str(script), "list", "--plugin", plugin_file.name],
        cwd=plugin_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "score_half " in done.stdout and f"[plugin {plugin_file}]" in done.stdout
