from __future__ import annotations

import numpy as np
import pytest

from autodim.data.synthetic import CRITEO_KAGGLE_CARDINALITIES, make_planted, planted_dims
from autodim.errors import DataError


def test_deterministic_from_the_seed():
    a, b = make_planted("tiny", rows=500, seed=4), make_planted("tiny", rows=500, seed=4)
    c = make_planted("tiny", rows=500, seed=5)
    assert np.array_equal(a.train.ids, b.train.ids) and np.array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.ids, c.train.ids)


def test_metadata_and_splits(tiny_data):
    d = tiny_data
    assert d.meta["planted_ranks"] == {"f00": 2, "f01": 4, "f02": 8, "f03": 0, "f04": 0}
    assert (len(d.train), len(d.val), len(d.test)) == (4800, 600, 600)
    assert 0.75 < d.meta["bayes_auc"] < 0.95
    f0 = d.schema.fields[0]
    assert f0.vocab_size == 21 and f0.freqs.sum() == len(d.train) and f0.freqs[0] == 0
    # Zipf: id 1 is the most frequent
    assert f0.freqs[1] == f0.freqs.max()
    assert d.train.probs is not None and ((d.train.probs > 0) & (d.train.probs < 1)).all()


def test_noise_fields_do_not_move_the_teacher():
    d = make_planted("tiny", rows=3000, seed=0)
    from autodim.data.synthetic import PRESETS, _Teacher
    teacher = _Teacher(PRESETS["tiny"])
    teacher.calibrate(d.train.ids.astype(np.int64))
    ids = d.test.ids.astype(np.int64).copy()
    base = teacher.logits(ids)
    ids[:, 3] = 1 + (ids[:, 3] % 7)  # scramble a noise field
    assert np.allclose(teacher.logits(ids), base)
    ids[:, 2] = 1 + (ids[:, 2] % 7)  # scramble a signal field
    assert not np.allclose(teacher.logits(ids), base)


def test_criteo_preset_has_criteo_cardinalities():
    assert len(CRITEO_KAGGLE_CARDINALITIES) == 26
    assert 33.7e6 < sum(CRITEO_KAGGLE_CARDINALITIES) < 33.8e6
    d = make_planted("criteo_kaggle", rows=2000, seed=0)
    assert d.schema.num_fields == 26
    assert d.schema.total_rows == sum(CRITEO_KAGGLE_CARDINALITIES) + 26
    assert d.train.ids.max() <= max(CRITEO_KAGGLE_CARDINALITIES)


def test_bad_settings():
    with pytest.raises(DataError, match="unknown synthetic preset"):
        make_planted("nope")
    with pytest.raises(DataError, match="unknown synthetic option"):
        make_planted("tiny", colour=3)


@pytest.mark.slow
def test_planted_dims_beat_a_uniform_plan_of_equal_bytes():
    """The calibration promise: the planted allocation is learnably the right one."""
    from autodim.data.datamodule import CTRDataModule
    from autodim.plan import DimensionPlan
    from autodim.task import TrainConfig, train_plan

    data = make_planted("planted", rows=60_000, seed=0)
    dm = CTRDataModule(data, batch_size=1024)
    ranks = list(data.meta["planted_ranks"].values())
    planted = DimensionPlan.from_dims(data.schema, 16, planted_dims(ranks, 16))
    # The smallest uniform plan (d=1) already has more bytes than the planted one; d=2 has ~4x.
    uniform = DimensionPlan.from_dims(data.schema, 16, [2] * data.schema.num_fields)
    cfg = TrainConfig(max_epochs=8, lr=3e-3, patience=2)
    auc_planted = train_plan(planted, dm, config=cfg).metrics["test_auc"]
    auc_uniform = train_plan(uniform, dm, config=cfg).metrics["test_auc"]
    # uniform gets several times the bytes and still loses by a clear margin
    assert uniform.num_bytes() > 3 * planted.num_bytes()
    assert auc_planted > auc_uniform + 0.03, (auc_planted, auc_uniform)
