"""The training schedule fits the data size: a step floor for small data, the cap for large."""

from __future__ import annotations

import pytest

from schelix.config import SCHelixConfig
from schelix.train import decoder_width, schedule, sized_for_run, warm_starts_fusion


@pytest.mark.parametrize(
    ("n_cells", "total"),
    [
        (100, 250),  # the floor stops at 250 epochs (1 step each)
        (300, 500),  # 250 epochs of 2 steps, not 60 epochs (120 steps)
        (1_000, 1_000),  # the 1,000-step floor, not 60 epochs (240 steps)
        (2_000, 1_000),
        (5_000, 1_200),  # 60 epochs are more than the floor
        (8_000, 1_920),
        (14_000, 2_000),  # the step cap (60 epochs would be 3,300)
        (100_000, 2_000),
    ],
)
def test_schedule_floor_and_cap(n_cells, total):
    steps, warmup = schedule(n_cells, SCHelixConfig())
    assert steps == total and warmup == min(3000, total // 2)


@pytest.mark.parametrize("n_cells", [100, 300, 1_000, 5_000, 14_000])
def test_schedule_does_not_depend_on_the_mini_batch(n_cells):
    """Epochs are counted in schedule_batch_size-cell steps: the mini-batch changes what one
    step sees, not how many steps a run takes."""
    cfg = SCHelixConfig()
    assert cfg.batch_size < cfg.schedule_batch_size
    for batch_size in (32, cfg.batch_size, 256, 1024):
        assert schedule(n_cells, cfg.replace(batch_size=batch_size)) == schedule(n_cells, cfg)
    assert schedule(5_000, cfg.replace(schedule_batch_size=128))[0] == 2_000  # 60 x 40 steps


def test_schedule_explicit_steps_and_settings():
    assert schedule(300, SCHelixConfig(), max_steps=40) == (40, 20)  # an explicit cap wins
    assert schedule(300, SCHelixConfig(min_steps=0))[0] == 120  # floor off: 60 epochs
    assert schedule(300, SCHelixConfig(min_steps_epochs=1000))[0] == 1000


@pytest.mark.parametrize(
    ("n_cells", "warm"),
    [(300, False), (768, False), (769, True), (1_000, True), (14_000, True)],
)
def test_fusion_warm_start_only_from_the_step_floor_up(n_cells, warm):
    cfg = SCHelixConfig()
    assert warm_starts_fusion(schedule(n_cells, cfg)[0], cfg) is warm
    off = cfg.replace(fusion_warm_start=False)
    assert not warm_starts_fusion(schedule(n_cells, off)[0], off)
    assert not warm_starts_fusion(schedule(n_cells, cfg, max_steps=500)[0], cfg)  # a short run


@pytest.mark.parametrize(("n_cells", "width"), [(300, 128), (768, 128), (769, 256), (14_000, 256)])
def test_decoders_are_wide_only_from_the_step_floor_up(n_cells, width):
    cfg = SCHelixConfig()
    assert decoder_width(schedule(n_cells, cfg)[0], cfg) == width
    assert sized_for_run(cfg, schedule(n_cells, cfg)[0]).decoder_hidden == width
    assert decoder_width(schedule(n_cells, cfg, max_steps=500)[0], cfg) == 128  # a short run
    narrow = cfg.replace(decoder_hidden=64)  # a width the user chose holds on small data too
    assert decoder_width(500, narrow) == 64 and decoder_width(2_000, narrow) == 64
    wide = cfg.replace(decoder_hidden_small=256)
    assert decoder_width(500, wide) == 256
