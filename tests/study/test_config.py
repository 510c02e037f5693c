"""Study-file validation: the sampler table that validation and construction share; the
search-space names that autodim.study.config re-exports."""

from __future__ import annotations

import optuna
import pytest

from autodim.errors import ConfigError
from autodim.study.config import SAMPLERS, StudyConfig
from autodim.study.runner import make_sampler

#: A valid value for every setting kind of the table.
VALUES = {"int": 3, "bool": False, "float": 0.25}


def _config(sampler) -> StudyConfig:
    return StudyConfig.from_dict({"dataset": "synthetic:tiny", "sampler": sampler,
                                  "seed": 5}, source="s.yaml")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_constructs_with_defaults_and_every_setting(name, monkeypatch):
    spec = SAMPLERS[name]
    cls = getattr(optuna.samplers, spec.cls)
    assert isinstance(make_sampler(_config(name)), cls)
    full = {"name": name, **{k: VALUES[kind] for k, (kind, *_) in spec.options.items()}}
    cfg = _config(full)
    assert cfg.sampler == {**full, "seed": 5}
    seen = {}

    def record(**kwargs):
        seen.update(kwargs)
        return cls(**kwargs)

    monkeypatch.setattr(optuna.samplers, spec.cls, record)
    assert isinstance(make_sampler(cfg, seed_offset=2), cls)
    assert seen["seed"] == 7
    for key in spec.options:  # each setting reaches the constructor
        assert seen[key] == full[key]


def test_tpe_defaults_and_group_follows_multivariate():
    default = make_sampler(_config("tpe"))
    assert default._multivariate and default._group and default._constant_liar
    off = make_sampler(_config({"name": "tpe", "multivariate": False}))
    assert not off._multivariate and not off._group and off._constant_liar


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_unknown_sampler_key_is_refused(name):
    with pytest.raises(ConfigError) as err:
        _config({"name": name, "n_trees": 3})
    assert str(err.value) == (f"s.yaml: sampler: unknown key 'n_trees'; valid keys: "
                              f"{', '.join(SAMPLERS[name].keys)}")


def test_sampler_settings_are_checked_by_their_kind():
    with pytest.raises(ConfigError, match=r"sampler.population_size: must be >= 2, got 1"):
        _config({"name": "nsga2", "population_size": 1})
    with pytest.raises(ConfigError, match=r"sampler.multivariate: expected true or false"):
        _config({"name": "tpe", "multivariate": "yes"})
    with pytest.raises(ConfigError, match=r"sampler.mutation_prob: expected a number"):
        _config({"name": "nsga2", "mutation_prob": "often"})


def test_search_space_names_stay_importable_from_config():
    import autodim.study.config as config
    import autodim.study.space as space

    for name in (*space.__all__, "SPACE_KEYS", "COMPRESS_KEYS", "METHOD_KEYS", "MEMCOM_KEYS",
                 "PARAM_KEYS"):
        assert getattr(config, name) is getattr(space, name), name
