"""Configuration: every bad file fails before Spark starts, saying where and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from camenn.config import ConfigError, load_config, project_root

CONF = project_root() / "conf"


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def config_error(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


@pytest.mark.parametrize("name", ["demo.yaml", "demo-full.yaml", "grocery.yaml", "production.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONF / name)
    assert config.name == name.removesuffix(".yaml")
    assert config.scoring.max_records_per_batch % config.scoring.batch_size == 0


def test_the_quick_demo_is_the_full_demo_on_a_smaller_world():
    quick, full = load_config(CONF / "demo.yaml"), load_config(CONF / "demo-full.yaml")
    # the shipped model, trained on the full world, is only valid with the same model and featurizer
    assert quick.model == full.model and quick.featurizer == full.featurizer
    assert quick.world.defects == full.world.defects
    assert quick.scoring.thresholds == full.scoring.thresholds   # chosen for the shipped model's scores
    assert quick.world.n_items * 10 == full.world.n_items
    assert quick.training.shipped_artifact.endswith("models/demo") and full.training.shipped_artifact is None
    assert quick.data.root != full.data.root and quick.training.artifact_dir != full.training.artifact_dir


def test_configs_that_share_a_registered_model_register_comparable_models():
    # the promotion gate measures a candidate against the champion on the same inputs: versions of
    # one registered model must read the same features and carry the same heads
    configs = [load_config(path) for path in sorted(CONF.glob("*.yaml"))]
    registries: dict[tuple[str, str], list] = {}
    for config in configs:
        registries.setdefault((config.tracking.uri, config.tracking.registered_model), []).append(config)
    assert len(registries) > 1   # the grocery photos are not versions of the demo model
    for (uri, name), sharing in registries.items():
        first = sharing[0]
        for other in sharing[1:]:
            assert other.featurizer == first.featurizer, f"{first.name} and {other.name} share {name} at {uri}"
            assert other.model.tasks == first.model.tasks, f"{first.name} and {other.name} share {name} at {uri}"


def test_production_uses_the_papers_encoders_from_local_files():
    config = load_config(CONF / "production.yaml")
    assert config.featurizer.text_model_dir.endswith("bert-base-chinese")
    assert config.featurizer.image_arch == "inception_v4"
    assert config.featurizer.max_text_tokens == 50 and config.featurizer.patch_grid == 3
    assert config.spark.conf["spark.executor.resource.gpu.amount"] == "1"


def test_unknown_key_names_file_and_key(tmp_path):
    path = write_yaml(tmp_path, """
        name: x
        data: {root: data/x}
        training: {epochs: 3, learning_rate: 0.1}
    """)
    message = config_error(path)
    assert str(path) in message and "training.learning_rate: unknown key" in message


def test_wrong_type_says_what_was_expected(tmp_path):
    path = write_yaml(tmp_path, """
        name: x
        data: {root: data/x}
        training: {epochs: three}
    """)
    message = config_error(path)
    assert "training.epochs" in message and "integer" in message and "'three'" in message


def test_missing_required_value(tmp_path):
    path = write_yaml(tmp_path, "name: x\n")
    assert "data: required value is missing" in config_error(path)


def test_missing_file():
    message = config_error(Path("conf/nope.yaml"))
    assert "config file not found: conf/nope.yaml" in message


def test_invalid_yaml(tmp_path):
    path = write_yaml(tmp_path, "name: [unclosed\n")
    assert "not valid YAML" in config_error(path)


def test_batch_sizes_must_divide(tmp_path):
    message = config_error(CONF / "demo.yaml", "scoring.max_records_per_batch=1000")
    assert "scoring.max_records_per_batch" in message and "multiple of scoring.batch_size (256)" in message


def test_overrides_replace_single_values_and_are_validated():
    config = load_config(CONF / "demo.yaml", ["training.epochs=2", "world.seed=99", "model.top_k=2"])
    assert (config.training.epochs, config.world.seed, config.model.top_k) == (2, 99, 2)
    assert "model.top_k" in config_error(CONF / "demo.yaml", "model.top_k=0")
    assert "override 'epochs'" in config_error(CONF / "demo.yaml", "epochs")


def test_relative_paths_resolve_against_the_project_root():
    config = load_config(CONF / "demo.yaml")
    assert config.data.root == str(project_root() / "data" / "demo")
    assert config.table("items") == str(project_root() / "data" / "demo" / "items")
    production = load_config(CONF / "production.yaml")
    assert production.table("items") == "s3a://retail-ml/camenn/tables/items"


def test_unknown_table_name_is_rejected(tmp_path):
    path = write_yaml(tmp_path, "name: x\ndata: {root: d, tables: {itmes: /x}}\n")
    assert "unknown table(s) ['itmes']" in config_error(path)


def logit(p):
    import numpy as np

    return np.log(p / (1 - p))


def test_recentred_thresholds_flag_the_held_out_share_of_a_night_that_scores_lower_as_a_whole():
    """A night whose listings score 3 logits under the held-out items (photos taken otherwise): the held-out
    2% quantile flags 29% of it, the same quantile moved to the night's median flags 2% again."""
    import numpy as np

    from camenn.config import ThresholdConfig

    rng = np.random.default_rng(0)
    held_out = rng.normal(5.0, 2.0, size=(2, 20001))                      # (ita/tia, items) logits
    night = 1 / (1 + np.exp(-(held_out - 3.0)))
    held_out = 1 / (1 + np.exp(-held_out))
    metrics = {f"{t}_clean_{q}": float(np.quantile(held_out[k], v)) for k, t in enumerate(("ita", "tia"))
               for q, v in (("q02", 0.02), ("q50", 0.5))}
    rule = ThresholdConfig(mode="calibrated", quantile=0.02, recentre=True).for_model(metrics, "m1")
    assert (rule.mode, rule.ita, rule.centre_ita) == ("absolute", metrics["ita_clean_q02"], metrics["ita_clean_q50"])
    assert rule.recentred(rule.centre_ita, rule.centre_tia) == rule        # a night like the held-out items
    moved = rule.recentred(*np.median(night, axis=1))
    for k, t in enumerate(("ita", "tia")):
        assert (night[k] < getattr(rule, t)).mean() > 0.2                  # the held-out quantile as it is: 29%
        assert (night[k] < getattr(moved, t)).mean() == pytest.approx(0.02, abs=0.002)
        assert logit(getattr(moved, t)) - logit(getattr(rule, t)) == pytest.approx(-3.0, abs=0.05)
    # never up: a night that scores higher (a catalogue of the model's own training listings) keeps them
    assert rule.recentred(0.9999, 0.9999) == rule
    one_side = rule.recentred(0.9999, float(np.median(night[1])))
    assert one_side.ita == rule.ita and one_side.tia == moved.tia
    plain = ThresholdConfig(mode="calibrated", quantile=0.02).for_model(metrics, "m1")
    assert plain.recentred(0.5, 0.5) == plain                              # recentre off: nothing moves


def test_rescaled_thresholds_stretch_to_a_wider_night_and_never_narrow():
    import numpy as np

    from camenn.config import ThresholdConfig
    from camenn.logits import logit, sigmoid

    rng = np.random.default_rng(1)
    held_out = rng.normal(5.0, 1.0, size=200_001)                        # held-out logits
    metrics = {f"{t}_clean_q{round(q * 100):02d}": float(sigmoid(np.quantile(held_out, q)))
               for t in ("ita", "tia") for q in (0.01, 0.25, 0.5)}
    rule = ThresholdConfig(mode="calibrated", quantile=0.01, recentre=True, rescale=True).for_model(metrics, "m1")
    assert (rule.quartile_ita, rule.rescale) == (metrics["ita_clean_q25"], True)
    wide = rng.normal(4.0, 2.0, size=200_001)                            # a night one lower and twice as wide
    median, quartile = (float(sigmoid(np.quantile(wide, q))) for q in (0.5, 0.25))
    moved = rule.recentred(median, median, {"ita": quartile, "tia": quartile})
    only_recentred = rule.recentred(median, median)                      # no quartiles: the median's move alone
    assert (wide < logit(only_recentred.ita)).mean() > 0.1              # 12% of this night under the 1% line
    assert (wide < logit(moved.ita)).mean() == pytest.approx(0.01, abs=0.002)
    # a narrower night keeps the median's move; a higher one keeps the thresholds: neither move goes up
    narrow = rng.normal(4.0, 0.5, size=200_001)
    kept = rule.recentred(median, median, {t: float(sigmoid(np.quantile(narrow, 0.25))) for t in ("ita", "tia")})
    assert kept == only_recentred
    higher = rule.recentred(0.9999, 0.9999, {"ita": quartile, "tia": quartile})
    assert higher.ita < rule.ita                                         # still stretched: the night spreads wider
    assert rule.recentred(rule.centre_ita, rule.centre_tia, {"ita": rule.quartile_ita, "tia": rule.quartile_tia}) == rule


def test_rescaled_thresholds_need_a_lower_quartile_and_a_recentre():
    from camenn.config import ThresholdConfig

    with pytest.raises(ValueError, match="records no held-out lower quartile"):
        ThresholdConfig(mode="calibrated", quantile=0.01, recentre=True, rescale=True).for_model(
            {"ita_clean_q01": 0.5, "tia_clean_q01": 0.5, "ita_clean_q50": 0.9, "tia_clean_q50": 0.9}, "old-model")
    with pytest.raises(ValueError, match="set thresholds.recentre true"):
        ThresholdConfig(mode="calibrated", quantile=0.01, rescale=True)
    with pytest.raises(ValueError, match="needs quartile_ita and quartile_tia"):
        ThresholdConfig(mode="absolute", recentre=True, rescale=True, centre_ita=0.9, centre_tia=0.9)


def test_contrast_reads_each_side_against_the_others_distance_above_the_night_median():
    import numpy as np

    from camenn.config import ThresholdConfig
    from camenn.logits import logit, sigmoid

    rule = ThresholdConfig(ita=0.5, tia=0.5, recentre=True, centre_ita=0.9, centre_tia=0.9, contrast=0.25)
    moved = rule.recentred(0.8, 0.7)                                         # the night's medians, under the centres
    assert (moved.contrast_ita, moved.contrast_tia) == (0.8, 0.7)
    t = logit(moved.ita)                                                      # ITA just under / over its threshold
    p_ita = sigmoid(np.array([t - 0.2, t + 0.2, t - 0.2, 5.0]))
    p_tia = np.array([float(sigmoid(logit(0.7) - 2.0)), float(sigmoid(logit(0.7) + 2.0)), 0.7, 0.3])
    alone = ThresholdConfig(**{**moved.model_dump(), "contrast": 0.0})
    low_ita, low_tia = moved.below(p_ita, p_tia)
    # ITA 0.2 under its threshold while TIA lies 2 logits under the night's median: half a logit back, not flagged;
    # ITA 0.2 over it while TIA lies 2 logits above: flagged; TIA at the median: as alone
    assert low_ita.tolist() == [False, True, True, False]
    assert alone.below(p_ita, p_tia)[0].tolist() == [True, False, True, False]
    assert low_tia.tolist() == (logit(p_tia) - 0.25 * (logit(p_ita) - logit(0.8)) < logit(moved.tia)).tolist()
    assert ThresholdConfig(**{**moved.model_dump(), "contrast": 0.0}).below(p_ita, p_tia)[1].tolist() == (p_tia < moved.tia).tolist()
    with pytest.raises(ValueError, match="set thresholds.recentre true"):
        ThresholdConfig(mode="calibrated", quantile=0.01, contrast=0.25)
    with pytest.raises(ValueError, match="recentre the thresholds first"):
        rule.below(p_ita, p_tia)                                              # no night's medians yet
    calibrated = ThresholdConfig(mode="calibrated", quantile=0.01, recentre=True, contrast=0.25).for_model(
        {"ita_clean_q01": 0.5, "tia_clean_q01": 0.4, "ita_clean_q50": 0.9, "tia_clean_q50": 0.9}, "m1")
    assert calibrated.contrast == 0.25


def test_recentred_thresholds_need_a_centre():
    from camenn.config import ThresholdConfig

    with pytest.raises(ValueError, match="records no held-out median"):
        ThresholdConfig(mode="calibrated", quantile=0.02, recentre=True).for_model(
            {"ita_clean_q02": 0.5, "tia_clean_q02": 0.5}, "old-model")
    with pytest.raises(ValueError, match="needs centre_ita and centre_tia"):
        ThresholdConfig(mode="absolute", recentre=True, centre_ita=0.9)
    with pytest.raises(ValueError, match="already follows the night"):
        ThresholdConfig(mode="category_quantile", recentre=True)
    with pytest.raises(ConfigError, match="centre_ita"):
        load_config(project_root() / "conf" / "demo.yaml", ["scoring.thresholds.centre_ita=1.5"])


def test_training_on_views_needs_views_to_be_encoded():
    message = config_error(CONF / "demo.yaml", "training.view_share=0.5")
    assert "training.view_share=0.5" in message and "scoring.test_time_views is 0" in message
    config = load_config(CONF / "grocery.yaml", ["training.view_share=0.5"])
    assert (config.training.view_share, config.scoring.test_time_views) == (0.5, 4)
