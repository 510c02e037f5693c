"""Safe loading: weights never unpickle code, YAML never builds Python objects, plans are
validated before use; and the source holds no unsafe loader."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_study

from autodim.errors import AutodimError, ConfigError


class _Bomb:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _pickle_bomb(path: Path, target: Path) -> Path:
    path.write_bytes(pickle.dumps({"state": _Bomb(target)}))
    return path


@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors"])
def test_pickle_bomb_weights_are_refused(name, tmp_path):
    from autodim.export import load_weights

    target = tmp_path / "PWNED"
    path = _pickle_bomb(tmp_path / name, target)
    with pytest.raises(ConfigError) as info:
        load_weights(path)
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not target.exists(), "unpickling ran code"


def test_pickle_bomb_in_a_trial_folder_is_refused(tmp_path, tiny_data):
    from autodim.data.synthetic import make_planted
    from autodim.export import load_model
    from autodim.plan import DimensionPlan

    data = make_planted("tiny", rows=3000, seed=0)
    plan = DimensionPlan.from_dims(data.schema, 8, [2, 4, 8, 8, 8])
    plan_path = plan.save(tmp_path / "plan.json")
    target = tmp_path / "PWNED"
    for name in ("weights.safetensors", "weights.pt"):
        w = _pickle_bomb(tmp_path / name, target)
        with pytest.raises(AutodimError):
            load_model(plan_path, w)
    assert not target.exists()


@pytest.mark.parametrize("which", ["study", "search space", "data spec"])
def test_yaml_python_tags_are_rejected(which, tmp_path, one_line_error):
    target = tmp_path / "PWNED"
    tag = f"!!python/object/apply:os.system ['touch {target}']\n"
    path = write_study(tmp_path)
    if which == "study":
        path.write_text(tag)
        argv = ["search", str(path)]
    elif which == "search space":
        (tmp_path / "space.yaml").write_text("candidate_dims: " + tag)
        argv = ["search", str(path)]
    else:
        csv = tmp_path / "c.csv"
        csv.write_text("user,clicked\nu1,1\nu2,0\n")
        (tmp_path / "spec.yaml").write_text("label: " + tag)
        argv = ["data", "info", str(csv), "--spec", str(tmp_path / "spec.yaml")]
    rc, _, err = run_cli(argv)
    one_line_error(rc, err, "not valid YAML", "python/object")
    assert not target.exists()


def test_plan_is_validated_before_any_model_is_built(tmp_path, monkeypatch):
    import autodim.plan as plan_mod
    from autodim.export import load_model

    path = tmp_path / "plan.json"
    path.write_text('{"format": "autodim.plan", "version": 1, "D": 8, "fields": '
                    '[{"name": "a", "vocab_size": 10, "dim": 99}]}')
    monkeypatch.setattr(plan_mod, "build_embedding",
                        lambda *a, **k: pytest.fail("built a model from an invalid plan"))
    with pytest.raises(AutodimError, match="dim 99 exceeds the common dim D=8"):
        load_model(path, tmp_path / "w.safetensors")


UNSAFE = [
    (re.compile(r"\bpickle\b"), "pickle"),
    (re.compile(r"(?<![.\w])eval\("), "eval("),
    (re.compile(r"\bexec\("), "exec("),
    (re.compile(r"yaml\.load\((?![^)]*SafeLoader)"), "yaml.load( without SafeLoader"),
    (re.compile(r"yaml\.(unsafe_load|full_load)"), "yaml.unsafe_load/full_load"),
    (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load( without "
                                                             "weights_only=True"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_no_unsafe_loader_in_the_source():
    found = []
    for py in sorted((ROOT / "autodim").rglob("*.py")):
        for i, line in enumerate(py.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in UNSAFE:
                if pattern.search(code):
                    found.append(f"{py.relative_to(ROOT)}:{i}: {what}: {line.strip()}")
    assert not found, "\n".join(found)
