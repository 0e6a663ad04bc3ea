"""Estimators from outside the package: a file (`--plugin my_estimator.py`), a module
(`--plugin my_package.estimators`) or an installed package's entry point in the group
`vae_bench.estimators`.

A plugin is written as docs/estimators.md ("Adding an estimator") says: it subclasses
`Estimator` and registers itself with `@register(name)`. Loading it runs its code once in this
process, checks each estimator it registered against the interface's contract (`check_contract`)
and keeps its source, so that worker processes and Ray tasks, which may not see the file, run the
same code (`install`): a plugin travels as its text and its SHA-256, and a worker refuses one whose
importable version has another hash. A plugin that breaks the contract is refused with one line
naming it and the problem (`PluginError`), before anything trains.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_core.estimators import REGISTRY, Estimator, EstimatorError, EstimatorOutput, make_estimator
from vae_core.estimators.base import KL_MODES, VARIANCE_REFERENCES
from vae_core.models import ModelConfig, build_model

ENTRY_POINT_GROUP = "vae_bench.estimators"
FILE_MODULE_PREFIX = "vae_bench_plugin_"  # a file plugin's module name: prefix + file stem


class PluginError(Exception):
    """A plugin that cannot be loaded or breaks the estimator contract; the message is one line
    naming the plugin and the problem."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: the text it was given as (`spec`), the module name its code runs under,
    its file, that file's SHA-256 and text, and the estimators it registered."""

    spec: str
    module: str
    path: str
    sha256: str
    source: str
    estimators: tuple[str, ...]

    def record(self) -> dict[str, object]:
        """What env.json says of it."""
        return {
            "spec": self.spec,
            "path": self.path,
            "sha256": self.sha256,
            "estimators": list(self.estimators),
        }


# Plugins loaded in this process, by module name, in load order.
_LOADED: dict[str, Plugin] = {}


def loaded() -> tuple[Plugin, ...]:
    """The plugins loaded in this process, to ship to workers."""
    return tuple(_LOADED.values())


def source_of(estimator: str) -> str:
    """Where an estimator's code comes from, for estimators.csv: '' for a built-in one,
    'PATH sha256:HASH' for a plugin's."""
    for plugin in _LOADED.values():
        if estimator in plugin.estimators:
            return f"{plugin.path} sha256:{plugin.sha256}"
    return ""


def locate(spec: str) -> tuple[str, Path]:
    """(module name, file) of a plugin given as a path to a .py file or as a module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PluginError(f"plugin {spec}: no such file")
        return FILE_MODULE_PREFIX + _identifier(path.stem), path.resolve()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as error:
        raise PluginError(f"plugin {spec}: cannot import it: {error}") from None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise PluginError(
            f"plugin {spec}: neither a .py file nor an importable module with a .py file"
        )
    return spec, Path(found.origin).resolve()


def _identifier(stem: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in stem)


def load_plugin(spec: str) -> Plugin:
    """Run the plugin `spec` once in this process, check every estimator it registers and keep
    it for `loaded()`. Loading the same file again returns the plugin already loaded."""
    module, path = locate(spec)
    try:
        raw = path.read_bytes()
        source = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PluginError(f"plugin {path}: cannot read it: {error}") from None
    sha256 = hashlib.sha256(raw).hexdigest()  # the file's, as `sha256sum` prints it
    if module in _LOADED:
        if _LOADED[module].sha256 != sha256:
            raise PluginError(f"plugin {spec}: another file named {module!r} is already loaded")
        return _LOADED[module]
    before = set(REGISTRY)
    try:
        _execute(module, path, source)
    except Exception as error:  # a plugin's import error of any kind: one line, exit 2
        _forget(module, before)
        reason = _one_line(error)
        raise PluginError(
            f"plugin {path}: import failed: {type(error).__name__}: {reason}"
        ) from None
    added = tuple(name for name in REGISTRY if name not in before)
    if not added:
        _forget(module, before)
        raise PluginError(
            f"plugin {path}: registers no estimator (decorate an Estimator subclass with"
            " @register(name))"
        )
    for name in added:
        try:
            check_contract(REGISTRY[name])
        except PluginError as error:
            _forget(module, before)
            raise PluginError(f"plugin {path}: estimator {name!r}: {error}") from None
    plugin = Plugin(spec, module, str(path), sha256, source, added)
    _LOADED[module] = plugin
    return plugin


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _execute(module: str, path: Path, source: str) -> None:
    """Run `source` as the module `module` (registered in sys.modules first, as an import does)."""
    namespace = types.ModuleType(module)
    namespace.__file__ = str(path)
    sys.modules[module] = namespace
    exec(compile(source, str(path), "exec"), namespace.__dict__)


def _forget(module: str, before: set[str]) -> None:
    """Undo a failed load: its module and whatever it registered."""
    sys.modules.pop(module, None)
    for name in set(REGISTRY) - before:
        del REGISTRY[name]


def load_plugins(specs: Iterable[str], entry_points: bool = True) -> tuple[Plugin, ...]:
    """Each of `specs`, then (with `entry_points`) every installed package's entry point in the
    group `vae_bench.estimators` (whose value names a module)."""
    plugins = [load_plugin(spec) for spec in specs]
    if entry_points:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            plugins.append(load_plugin(entry.value.split(":")[0]))
    return tuple(plugins)


def install(plugins: Iterable[Plugin]) -> None:
    """In a worker process or Ray task: make the driver's plugins' estimators registered here,
    running each plugin's shipped source unless its module is already loaded with the same hash.
    """
    for plugin in plugins:
        known = _LOADED.get(plugin.module)
        if known is not None and known.sha256 == plugin.sha256:
            continue
        present = sys.modules.get(plugin.module)
        if present is None:
            before = set(REGISTRY)
            try:
                _execute(plugin.module, Path(plugin.path), plugin.source)
            except Exception:
                _forget(plugin.module, before)
                raise
            _LOADED[plugin.module] = plugin
            continue
        if _file_sha256(getattr(present, "__file__", None)) != plugin.sha256:
            raise PluginError(
                f"plugin {plugin.spec}: this worker has another version of {plugin.module}"
                f" (the driver's has sha256 {plugin.sha256})"
            )
        _LOADED.setdefault(plugin.module, plugin)


def _file_sha256(path: str | None) -> str | None:
    try:
        return hashlib.sha256(Path(path or "").read_bytes()).hexdigest()
    except OSError:
        return None


# The contract ------------------------------------------------------------------------------------

CONTRACT_BATCH = 3


def contract_model(cls: type[Estimator]) -> torch.nn.Module:
    """A small model of the estimator's latent type (6 inputs, 5 hidden units, 3 latents)."""
    classes = 3 if cls.latent == "categorical" else 1
    torch.manual_seed(0)
    config = ModelConfig(input_dim=6, hidden=(5,), latent_dim=3, latent=cls.latent, classes=classes)
    return build_model(config).double()


def check_contract(cls: type[Estimator]) -> None:
    """PluginError naming the first broken rule: the declarations (`latent`, `kl_modes`,
    `min_particles`, `objective`, `bias_reference`), a `forward` of its own whose output has the
    documented shapes (a scalar surrogate, an (M,) ELBO, a (·, M) learning signal), the same
    output for the same noise, no change to any parameter or buffer, and a finite gradient."""
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise PluginError("is not a subclass of vae_core.estimators.Estimator")
    if cls.forward is Estimator.forward:
        raise PluginError("has no forward(x, noise) of its own")
    if cls.latent not in VARIANCE_REFERENCES:
        raise PluginError(f"latent {cls.latent!r} is not one of {', '.join(VARIANCE_REFERENCES)}")
    if not cls.kl_modes or not set(cls.kl_modes) <= set(KL_MODES):
        raise PluginError(f"kl_modes {cls.kl_modes!r} must be a non-empty subset of {KL_MODES}")
    if not isinstance(cls.min_particles, int) or cls.min_particles < 1:
        raise PluginError(f"min_particles must be an integer >= 1, got {cls.min_particles!r}")
    if cls.objective not in ("elbo", "iwae"):
        raise PluginError(f"objective must be 'elbo' or 'iwae', got {cls.objective!r}")
    if cls.bias_reference is not None and cls.bias_reference not in REGISTRY:
        raise PluginError(f"bias_reference {cls.bias_reference!r} is not a registered estimator")
    k = -(-cls.min_particles // cls.particles_multiple) * cls.particles_multiple
    try:
        estimator = make_estimator(cls.name, contract_model(cls), cls.kl_modes[0], k).double()
    except EstimatorError as error:
        raise PluginError(f"cannot be built at its smallest K = {k}: {error}") from None
    x = torch.bernoulli(torch.full((CONTRACT_BATCH, 6), 0.4, dtype=torch.float64))
    noise = estimator.sample_noise(CONTRACT_BATCH, torch.Generator().manual_seed(0)).double()
    before = {name: t.detach().clone() for name, t in estimator.state_dict().items()}
    try:
        first, second = estimator(x, noise), estimator(x, noise)
    except Exception as error:
        raise PluginError(f"forward failed: {type(error).__name__}: {_one_line(error)}") from None
    _check_output(first)
    changed = [n for n, t in estimator.state_dict().items() if not torch.equal(t, before[n])]
    if changed:
        raise PluginError(f"forward changed its state ({', '.join(changed)}): use update_state")
    if not torch.equal(first.surrogate.detach(), second.surrogate.detach()):
        raise PluginError("forward gave two surrogates for the same x and noise (is it pure?)")
    first.surrogate.backward()
    for name, parameter in estimator.named_parameters():
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            raise PluginError(f"the surrogate's gradient of {name} is not finite")


def _check_output(output: object) -> None:
    if not isinstance(output, EstimatorOutput):
        raise PluginError(f"forward returned {type(output).__name__}, not an EstimatorOutput")
    shapes = (output.surrogate.shape, output.elbo.shape, output.learning_signal.shape)
    if (
        shapes[0] != ()
        or shapes[1] != (CONTRACT_BATCH,)
        or len(shapes[2]) != 2
        or shapes[2][1] != CONTRACT_BATCH
    ):
        raise PluginError(
            f"forward's output has shapes surrogate {tuple(shapes[0])}, elbo {tuple(shapes[1])},"
            f" learning_signal {tuple(shapes[2])}; expected (), (M,) and (K, M) with"
            f" M = {CONTRACT_BATCH}"
        )
    if not output.surrogate.requires_grad:
        raise PluginError("the surrogate has no gradient (detached?)")
