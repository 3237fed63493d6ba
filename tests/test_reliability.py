"""Reliability and security, one group of tests per guarantee, through the real command line.

Users run long trainings and load files and plugins written by others, so:
bad specs end in exit code 2 and one line naming the spec; faulty plugins are
reported by name while the rest keep working; interrupted or killed trainings
resume to the very same weights; a non-finite loss stops with the last good
checkpoint intact; nothing is unpickled; incompatible stitches are refused
with both blocks and shapes; outputs are never lost.

Builds that must be interrupted for real (SIGINT, SIGTERM, SIGKILL) run
``python -m stitchframe`` in a subprocess; the rest call
:func:`stitchframe.cli.main` in this process.  Both use one thread, so their
floating-point results are identical bit for bit.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from stitchframe import cli
from stitchframe.checkpoint import latest_checkpoint, load_checkpoint
from stitchframe.pipeline import partial_dir
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["--plugin", "tests.tiny:TinyPlugin", "--plugin", "tests.reliability:ReliabilityPlugin"]
BATCH, TRAIN_SIZE, CALIBRATION_BATCHES, EVERY = 8, 48, 1, 2
STEPS = TRAIN_SIZE // BATCH  # one epoch
#: Items of the training split read before training starts (the calibration batches).
READ_BEFORE_TRAINING = CALIBRATION_BATCHES * BATCH
SPEC = {
    "anchors": ["tiny:vit32", {"source": "tiny:vit48", "options": {"seed": 1}}],
    "stitch": {"space": "snnet"},
    "calibration": {"batches": CALIBRATION_BATCHES},
    "data": {"name": "signal_synthetic", "options": {"train_size": TRAIN_SIZE, "val_size": 16}},
    "train": {"epochs": 1, "batch_size": BATCH, "lr": 1e-3, "checkpoint_every": EVERY},
    "eval": {"batch_size": 16},
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """Only the plugins named on the command line; no triggers left over; one thread like the subprocesses."""
    monkeypatch.setenv("STITCHFRAME_LOAD_PLUGINS", "")
    for name in ("STITCHFRAME_PLUGINS", "STITCHFRAME_TEST_SIGNAL", "STITCHFRAME_TEST_KILL_WRITE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_spec(path: Path, data=SPEC) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m stitchframe ARGS`` with the test plugins, one thread, and ``env`` added."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STITCHFRAME_")}
    full = {**inherited, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "STITCHFRAME_LOAD_PLUGINS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "stitchframe", *PLUGINS, *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=240)


def _main(args: list[str], capsys) -> tuple[int, str]:
    """``stitchframe.cli.main`` in this process: the exit code and stderr."""
    capsys.readouterr()
    code = cli.main([*PLUGINS, *args])
    return code, capsys.readouterr().err


def _one_line_error(err: str) -> str:
    """The one ``error:`` line of stderr (warnings about broken plugins may come before it)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "snnet.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The spec and an uninterrupted build of it (a subprocess, like the interrupted ones)."""
    root = tmp_path_factory.mktemp("reference")
    spec = _write_spec(root / "spec.yaml")
    proc = _run(["build", str(spec), "--output", str(root / "out")])
    assert proc.returncode == 0, proc.stderr
    return spec, root / "out"


# ---------------------------------------------------------------------------
# bad specs: exit code 2 and one line naming the spec, never a traceback
# ---------------------------------------------------------------------------
_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(lambda s: s[0] != "_")
_NOT_NUMBERS = st.one_of(_WORDS, st.lists(st.integers(), min_size=1, max_size=2),
                         st.dictionaries(_WORDS, st.integers(), min_size=1, max_size=2), st.booleans())
_NOT_INTS = st.one_of(_NOT_NUMBERS, st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)))
_NOT_STRINGS = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                         st.lists(st.integers(), min_size=1, max_size=2))
_NOT_MAPPINGS = st.one_of(st.integers(), _WORDS, st.lists(st.integers(), max_size=2))
#: Leaves of SPEC by kind of value: (path, the key the message must name).
_INT_FIELDS = [("calibration", "batches"), ("train", "batch_size"), ("eval", "batch_size"), ("train", "max_steps"),
               ("data", "options", "train_size"), ("anchors", 1, "options", "depth"), ("seed",)]
_FLOAT_FIELDS = [("train", "lr"), ("train", "epochs"), ("calibration", "ridge"), ("train", "weight_decay")]
_STR_FIELDS = [("stitch", "space"), ("stitch", "layer"), ("data", "name"), ("anchors", 1, "source"), ("device",)]
_MAPPING_FIELDS = [("stitch",), ("train",), ("data",), ("data", "options"), ("anchors", 1, "options"),
                   ("stitch", "layer_options")]
#: Sizes and rates with a lower bound, and a value just below it.
_BOUNDED = [(("train", "batch_size"), 0), (("eval", "batch_size"), 0), (("calibration", "batches"), -1),
            (("train", "grad_accum"), 0), (("data", "options", "train_size"), 0), (("data", "img_size"), 7),
            (("anchors", 1, "options", "depth"), 0), (("train", "max_steps"), -1), (("train", "lr"), 0),
            (("train", "epochs"), -1), (("data", "num_workers"), -1), (("train", "checkpoint_every"), -1)]
_CONTAINERS = [(), ("stitch",), ("train",), ("data",), ("eval",), ("calibration",), ("anchors", 1),
               ("data", "options"), ("anchors", 1, "options"), ("stitch", "layer_options")]
_ENUMS = [("stitch", "final_norm"), ("train", "scheduler"), ("train", "sampling"), ("train", "amp"), ("device",)]


def _set(spec: dict, path: tuple, value) -> None:
    node = spec
    for key in path[:-1]:
        if isinstance(node, list) and isinstance(node[key], str):
            node[key] = {"source": node[key]}
        node = node[key] if isinstance(node, list) else node.setdefault(key, {})
    node[path[-1]] = value


def _get(spec: dict, path: tuple):
    node = spec
    for key in path:
        node = node[key]
    return node


def _field(path: tuple) -> str:
    return str(path[-1])


@st.composite
def bad_specs(draw) -> tuple[object, str | None]:
    """A malformed spec (a dict, or YAML text) and a word its error message must contain."""
    spec = json.loads(json.dumps(SPEC))
    kind = draw(st.sampled_from(["missing", "unknown_key", "wrong_type", "below_bound", "unknown_name",
                                 "bad_choice", "incompatible", "not_a_spec"]))
    if kind == "missing":
        path = draw(st.sampled_from([("anchors",), ("data", "name"), ("anchors", 1, "source")]))
        _set(spec, path, None)  # (turns a string anchor into a mapping first)
        del _get(spec, path[:-1])[path[-1]]
        return spec, _field(path)
    if kind == "unknown_key":
        where = draw(st.sampled_from(_CONTAINERS))
        _set(spec, (*where, "placeholder"), None)  # turns a string anchor into a mapping
        node = _get(spec, where)
        del node["placeholder"]
        key = draw(_WORDS.filter(lambda k: k not in node and k not in _known_keys(where)))
        node[key] = draw(st.integers(0, 3))
        return spec, key
    if kind == "wrong_type":
        group = draw(st.sampled_from(["int", "float", "str", "mapping", "anchors"]))
        if group == "anchors":
            spec["anchors"] = draw(st.one_of(_WORDS, st.integers(), st.dictionaries(_WORDS, _WORDS, max_size=1)))
            return spec, "anchors"
        fields, values = {"int": (_INT_FIELDS, _NOT_INTS), "float": (_FLOAT_FIELDS, _NOT_NUMBERS),
                          "str": (_STR_FIELDS, _NOT_STRINGS), "mapping": (_MAPPING_FIELDS, _NOT_MAPPINGS)}[group]
        path = draw(st.sampled_from(fields))
        _set(spec, path, draw(values))
        return spec, _field(path)
    if kind == "below_bound":
        path, limit = draw(st.sampled_from(_BOUNDED))
        _set(spec, path, draw(st.integers(max_value=limit, min_value=-10**6)))
        return spec, _field(path)
    if kind == "unknown_name":
        name = draw(_WORDS)
        which = draw(st.sampled_from(["space", "layer", "data", "prefix", "tiny_model"]))
        if which == "space" and name not in ("snnet", "snnet2", "cross", "anchors", "empty", "forced"):
            spec["stitch"]["space"] = name
            return spec, "stitch.space"
        if which == "layer" and name not in ("auto", "linear", "conv1x1", "lowrank"):
            spec["stitch"]["layer"] = name
            return spec, "stitch.layer"
        if which == "data" and name not in ("synthetic", "signal_synthetic", "fashion_mnist", "digits", "imagefolder"):
            spec["data"]["name"] = name
            return spec, "data.name"
        if which == "prefix" and name != "tiny":
            spec["anchors"][0] = f"{name}:model"
            return spec, "anchors[0]"
        spec["anchors"][0] = f"tiny:{draw(st.sampled_from(['vit33', 'mlp16', 'cnn', 'vit0']))}"
        return spec, "anchors[0]"
    if kind == "bad_choice":
        path = draw(st.sampled_from(_ENUMS))
        valid = ("keep", "skip_stitched", "cosine", "constant", "uniform", "flops_grouped", "auto", "off", "cpu", "cuda")
        _set(spec, path, draw(_WORDS.filter(lambda w: w not in valid)))
        return spec, _field(path)
    if kind == "incompatible":
        case = draw(st.sampled_from(["conv_on_tokens", "forced_conv", "empty", "layer_option"]))
        if case == "layer_option":
            spec["stitch"].update(layer="linear", layer_options={"rank": 4})
            return spec, "stitch.layer_options"
        spec["stitch"] = {"space": {"conv_on_tokens": "snnet", "forced_conv": "forced", "empty": "empty"}[case],
                          "layer": "auto" if case == "empty" else "conv1x1"}
        return spec, "stitch"
    text = draw(st.sampled_from(["anchors: [tiny:vit32\n", "- tiny:vit32\n", "42\n", "anchors: {a: [}\n", ""]))
    return text, None


def _known_keys(where: tuple) -> set[str]:
    """The valid keys at ``where`` in SPEC."""
    import attrs

    from stitchframe import LinearStitch
    from stitchframe.datasets import SyntheticOptions
    from stitchframe.spec import AnchorSpec, CalibrationSpec, DataSpec, EvalSpec, Spec, StitchSpec, TrainSpec
    from stitchframe.stitch_layers import Conv1x1Stitch

    classes = {(): [Spec], ("stitch",): [StitchSpec], ("train",): [TrainSpec], ("data",): [DataSpec],
               ("eval",): [EvalSpec], ("calibration",): [CalibrationSpec], ("anchors", 1): [AnchorSpec],
               ("data", "options"): [SyntheticOptions], ("anchors", 1, "options"): [tiny.TinyOptions],
               ("stitch", "layer_options"): [LinearStitch.Options, Conv1x1Stitch.Options]}
    return {a.name for cls in classes[where] for a in attrs.fields(cls)}


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bad_specs())
def test_bad_specs_exit_2_with_one_line_naming_the_spec(case, tmp_path_factory, capsys):
    spec, word = case
    root = tmp_path_factory.mktemp("bad")
    path = _write_spec(root / "bad spec.yaml", spec)
    out = root / "out"
    code, err = _main(["build", str(path), "--output", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 2, line
    assert str(path) in line
    assert not re.search(r"\b[A-Z][a-z]+Error\b|object has no attribute|not iterable", line), line  # not a bug's words
    if word is not None:
        assert word in line, line
    assert not out.exists() and not partial_dir(out).exists()  # nothing done, nothing left behind


# ---------------------------------------------------------------------------
# faulty plugins: reported by name, listed as broken, the rest keep working
# ---------------------------------------------------------------------------
FAULTY = {
    "tests.reliability:RaisingPlugin": "failed in hook 'stitchframe_register_stitch_spaces': RuntimeError",
    "tests.reliability:DuplicatePlugin": "stitch layer 'linear', which plugin 'stitchframe.stitch_layers' already",
    "tests.reliability:WrongTypePlugin": "stitch space 'not_a_space' as EmptySpace",
    "broken_on_import": "cannot be imported: ZeroDivisionError",
}


@pytest.fixture
def faulty(tmp_path, monkeypatch) -> list[str]:
    (tmp_path / "broken_on_import.py").write_text("import stitchframe\n\nRATIO = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return [arg for ref in FAULTY for arg in ("--plugin", ref)]


def test_faulty_plugins_are_listed_as_broken_by_name(faulty, capsys):
    assert cli.main([*PLUGINS, *faulty, "plugins"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    for ref, message in FAULTY.items():
        assert rows[ref]["status"] == "broken"
        (error,) = rows[ref]["errors"]
        assert f"Plugin {ref!r}" in error and message in error
    ok = {name for name, row in rows.items() if row["status"] == "ok"}
    assert {"tests.tiny:TinyPlugin", "tests.reliability:ReliabilityPlugin", "stitchframe.stitch_layers"} <= ok
    assert rows["tests.reliability:WrongTypePlugin"]["registered"] == {"anchor_adapters": ["wrongtype"]}


def test_the_rest_keep_working_and_broken_plugins_are_named(faulty, reference, tmp_path, capsys):
    spec, _ = reference
    code, err = _main([*faulty, "validate", str(spec)], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(FAULTY) and all(any(ref in w for w in warnings) for ref in FAULTY)
    assert cli.main([*PLUGINS, *faulty, "routes", str(spec), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 12
    # an unknown name points at the broken plugins, which may be the ones that should have provided it
    unknown = _write_spec(tmp_path / "unknown.yaml", {**SPEC, "stitch": {"space": "not_a_space"}})
    code, err = _main([*faulty, "validate", str(unknown)], capsys)
    line = [x for x in err.splitlines() if x.startswith("error:")][0]
    assert code == 2 and "stitch.space" in line and "Broken plugins" in line and "WrongTypePlugin" in line
    # an adapter returning a wrong type is reported with its plugin when it is used
    wrong = _write_spec(tmp_path / "wrong.yaml", {**SPEC, "anchors": ["wrongtype:x", "tiny:vit32"]})
    code, err = _main(["--plugin", "tests.reliability:WrongTypePlugin", "routes", str(wrong)], capsys)
    line = _one_line_error(err)
    assert code == 1 and "tests.reliability:WrongTypePlugin" in line and "'wrongtype'" in line and "str" in line


# ---------------------------------------------------------------------------
# interrupted training: a checkpoint, a clean exit, and --resume to the same weights
# ---------------------------------------------------------------------------
def _read_at_step(step: int, item: int = 3) -> int:
    """How many training items were read before ``item`` of (0-based) training step ``step``."""
    return READ_BEFORE_TRAINING + step * BATCH + item


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_save_a_checkpoint_exit_cleanly_and_resume_to_the_same_weights(
        sig, reference, tmp_path, capsys):
    spec, ref_out = reference
    out = tmp_path / "out"
    proc = _run(["build", str(spec), "--output", str(out)], {"STITCHFRAME_TEST_SIGNAL": f"{sig}@train:{_read_at_step(2)}"})
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    line = _one_line_error(proc.stderr)
    assert f"interrupted by {sig}" in line and "step 3 of 6" in line and "--resume" in line
    assert not out.exists()
    ckpt = latest_checkpoint(partial_dir(out) / "checkpoints")
    assert ckpt is not None and ckpt.name == "step-00000003"  # the step in flight finished, then a checkpoint
    code, err = _main(["build", str(spec), "--output", str(out), "--resume"], capsys)
    assert code == 0, err
    _assert_same_weights(_weights(out), _weights(ref_out))


def test_sigkill_at_a_random_step_loses_at_most_the_steps_since_the_last_checkpoint(reference, tmp_path, capsys):
    spec, ref_out = reference
    out = tmp_path / "out"
    step = random.Random(0).randrange(STEPS)  # 3: the checkpoint of step 2 is the last one, step 3 is lost
    proc = _run(["build", str(spec), "--output", str(out)], {"STITCHFRAME_TEST_SIGNAL": f"SIGKILL@train:{_read_at_step(step)}"})
    assert proc.returncode == -signal.SIGKILL
    ckpt = latest_checkpoint(partial_dir(out) / "checkpoints")
    saved = 0 if ckpt is None else load_checkpoint(ckpt, model=_fresh_net(spec)).state["step"]
    assert saved == step - step % EVERY  # steps done when killed: ``step``; lost: fewer than checkpoint_every
    code, err = _main(["build", str(spec), "--output", str(out), "--resume"], capsys)
    assert code == 0, err
    _assert_same_weights(_weights(out), _weights(ref_out))


def _fresh_net(spec: Path):
    from stitchframe import assemble, get_plugin_manager, load_registries, load_spec

    pm = get_plugin_manager(load_entrypoints=False, plugins=["tests.tiny:TinyPlugin"])
    return assemble(load_spec(spec), load_registries(pm))


# the second checkpoint (step 4) writes model.safetensors, state.safetensors, state.json, then 'latest'
@pytest.mark.parametrize("nth", [random.Random(7).randrange(5, 8), 8])
def test_a_kill_during_a_checkpoint_write_never_corrupts_the_latest_checkpoint(nth, reference, tmp_path, capsys):
    spec, ref_out = reference
    out = tmp_path / "out"
    proc = _run(["build", str(spec), "--output", str(out)], {"STITCHFRAME_TEST_KILL_WRITE": str(nth)})
    assert proc.returncode == -signal.SIGKILL
    checkpoints = partial_dir(out) / "checkpoints"
    assert any(checkpoints.rglob(".*.tmp")), "the kill should have left a half-written temporary file"
    ckpt = latest_checkpoint(checkpoints)
    assert ckpt.name == "step-00000002"
    load_checkpoint(ckpt, model=_fresh_net(spec))  # complete and readable
    code, err = _main(["build", str(spec), "--output", str(out), "--resume"], capsys)
    assert code == 0, err
    _assert_same_weights(_weights(out), _weights(ref_out))
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------
# non-finite loss
# ---------------------------------------------------------------------------
def test_a_non_finite_loss_stops_the_run_with_its_last_good_checkpoint_intact(reference, tmp_path, monkeypatch,
                                                                             capsys):
    spec, _ = reference
    out = tmp_path / "out"
    monkeypatch.setenv("STITCHFRAME_TEST_SIGNAL", f"NAN@train:{_read_at_step(3)}")
    code, err = _main(["build", str(spec), "--output", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 1
    good = partial_dir(out) / "checkpoints" / "step-00000002"
    assert "Training stopped at step 3" in line and "the loss is nan" in line and str(good) in line
    assert latest_checkpoint(good.parent) == good
    net = _fresh_net(spec)
    state = load_checkpoint(good, model=net).state  # refuses non-finite tensors
    assert state["step"] == 2 and all(v == v for v in state["losses"])
    assert not out.exists()


# ---------------------------------------------------------------------------
# files: safetensors and JSON only, never pickle; clear errors for bad files
# ---------------------------------------------------------------------------
_PICKLERS = ("pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "cloudpickle")


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """Imports of pickle & co, and calls that may unpickle: torch.load without weights_only=True, np.load(allow_pickle=...)."""
    from_picklers = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and (node.module or "").split(".")[0] in _PICKLERS for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in _PICKLERS for m in modules):
                found.append(f"line {node.lineno}: imports {', '.join(modules)}")
            continue
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}

        def given(name: str, value: object) -> bool:
            return isinstance(kwargs.get(name), ast.Constant) and kwargs[name].value is value

        if func.split(".")[0] in _PICKLERS or func in from_picklers or func.endswith(("read_pickle", "jit.load")):
            found.append(f"line {node.lineno}: {func}()")
        elif func.endswith("torch.load") and not given("weights_only", True):
            found.append(f"line {node.lineno}: {func}() without weights_only=True")
        elif func in ("np.load", "numpy.load") and "allow_pickle" in kwargs and not given("allow_pickle", False):
            found.append(f"line {node.lineno}: {func}(allow_pickle=...)")
        elif func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"line {node.lineno}: {func}() (use yaml.safe_load)")
    return found


def test_no_code_path_can_unpickle():
    files = [p for d in ("stitchframe", "plugins", "docs/examples") for p in sorted((ROOT / d).rglob("*.py"))
             if "tests" not in p.relative_to(ROOT).parts]
    assert len(files) > 30
    problems = {str(p.relative_to(ROOT)): bad for p in files if (bad := _unsafe_loads(ast.parse(p.read_text())))}
    assert not problems
    # the checker itself finds what it is meant to find
    sample = ast.parse("import pickle\npickle.loads(b'')\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
                       "torch.load(f, weights_only=True)\nnp.load(f, allow_pickle=True)\nnp.load(f)\n"
                       "from dill import load\nload(f)\nyaml.load(t)\nyaml.safe_load(t)\nexcept_ = pickle.UnpicklingError\n")
    found = sorted(int(x.split(":")[0].removeprefix("line ")) for x in _unsafe_loads(sample))
    assert found == [1, 2, 3, 4, 6, 8, 9, 10]


class _Hostile:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_hostile_pth_is_refused_without_running_its_code(tmp_path):
    weights = pytest.importorskip("stitchframe_timm.weights")
    from stitchframe import CheckpointError

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match=r"'.*evil\.pth'.*cannot be read safely.*weights_only=True"):
        weights.read_state_dict(path)
    assert not marker.exists()


def test_outputs_hold_only_safetensors_json_and_reports(reference):
    _, out = reference
    allowed = {".safetensors", ".json", ".jsonl", ".yaml", ".md", ".png", ""}
    assert {p.suffix for p in out.rglob("*") if p.is_file()} <= allowed
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin")]


def test_truncated_corrupted_and_mismatched_files_name_the_file_and_tensor(reference, tmp_path, capsys):
    _, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    weights = out / "snnet.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    code, err = _main(["routes", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 2 and str(weights) in line and "corrupt or truncated" in line
    weights.write_bytes(b"\x00" * 8 + data[8:])  # header length destroyed
    code, err = _main(["routes", str(out)], capsys)
    assert code == 2 and str(weights) in _one_line_error(err)
    from safetensors import safe_open

    with safe_open(str(ref_out / "snnet.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(ref_out / "snnet.safetensors"))
    name = sorted(k for k in tensors if k.endswith(".weight"))[0]
    tensors[name] = torch.zeros(3, 3)  # mismatched shape
    save_file(tensors, str(weights), metadata=meta)
    code, err = _main(["routes", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 2 and str(weights) in line and repr(name) in line and "(3, 3)" in line


def test_a_corrupt_checkpoint_on_resume_names_the_file(reference, tmp_path, capsys):
    spec, _ = reference
    out = tmp_path / "out"
    proc = _run(["build", str(spec), "--output", str(out)], {"STITCHFRAME_TEST_SIGNAL": f"SIGTERM@train:{_read_at_step(1)}"})
    assert proc.returncode == 143, proc.stderr
    model = latest_checkpoint(partial_dir(out) / "checkpoints") / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    code, err = _main(["build", str(spec), "--output", str(out), "--resume"], capsys)
    line = _one_line_error(err)
    assert code == 2 and str(model) in line
    assert partial_dir(out).is_dir()  # the unfinished build is still there to rescue


# ---------------------------------------------------------------------------
# shapes: an incompatible stitch is refused at build time with both blocks and shapes
# ---------------------------------------------------------------------------
def test_an_incompatible_stitch_is_refused_with_both_block_names_and_shapes(tmp_path, capsys):
    spec = _write_spec(tmp_path / "forced.yaml", {**SPEC, "stitch": {"space": "forced", "layer": "conv1x1"}})
    out = tmp_path / "out"
    code, err = _main(["build", str(spec), "--output", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 2
    assert "vit32.blocks[0] (B,17,32) -> vit48.blocks[1] (B,17,48)" in line and "'conv1x1'" in line
    assert not out.exists() and not partial_dir(out).exists()


# ---------------------------------------------------------------------------
# output folders: never overwritten without --overwrite; a failed build keeps the previous output
# ---------------------------------------------------------------------------
def test_an_existing_output_needs_overwrite_and_a_failed_build_keeps_it(reference, tmp_path, monkeypatch, capsys):
    spec, ref_out = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    before = _snapshot(out)
    code, err = _main(["build", str(spec), "--output", str(out)], capsys)
    line = _one_line_error(err)
    assert code == 2 and "--overwrite" in line and str(out) in line
    assert _snapshot(out) == before
    monkeypatch.setenv("STITCHFRAME_TEST_SIGNAL", f"NAN@train:{_read_at_step(1)}")
    code, err = _main(["build", str(spec), "--output", str(out), "--overwrite"], capsys)
    assert code == 1 and "the loss is nan" in _one_line_error(err)
    assert _snapshot(out) == before  # the failed build never touched it
    # --overwrite also discards the failed build's unfinished folder; the new build replaces the output
    monkeypatch.delenv("STITCHFRAME_TEST_SIGNAL")
    code, err = _main(["build", str(spec), "--output", str(out), "--overwrite"], capsys)
    assert code == 0, err
    _assert_same_weights(_weights(out), _weights(ref_out))
    assert not partial_dir(out).exists()
