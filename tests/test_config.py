"""Config loading: defaults from configs/, overrides, and one-line errors before any work."""
import subprocess
import sys

import pytest
from curate.pipelines import laion_filter, score

from curate import config


def load(*sets, file=None):
    return config.load("laion_filter", laion_filter.SCHEMA, file, list(sets))


def test_default_yaml_sets_exactly_the_schema_keys():
    leaves = frozenset(k for k, o in laion_filter.SCHEMA.items() if o.kind is dict)
    assert set(config.read_yaml(config.CONFIG_DIR / "laion_filter.yaml", leaves)) == set(laion_filter.SCHEMA)
    assert set(config.read_yaml(config.CONFIG_DIR / "score.yaml")) == set(score.SCHEMA)
    cfg = load()
    assert cfg["filters.min_image_size"] == 200 and cfg["filters.max_aspect_ratio"] == 3.0


def test_set_overrides_and_reads_values_as_yaml():
    cfg = load("select.clip_threshold=0.25", "dedup.near=false", "input=/data/shards")
    assert cfg["select.clip_threshold"] == 0.25 and cfg["dedup.near"] is False and cfg["input"] == "/data/shards"


def test_integer_accepted_for_float():
    assert load("filters.max_aspect_ratio=4")["filters.max_aspect_ratio"] == 4.0


def test_unknown_key_names_key_and_allowed_siblings():
    with pytest.raises(config.ConfigError) as e:
        load("filters.min_size=100")
    msg = str(e.value)
    assert "\n" not in msg and "'filters.min_size'" in msg and "min_image_size" in msg


@pytest.mark.parametrize("item,expect", [
    ("filters.min_image_size=abc", "filters.min_image_size must be an integer >= 0"),
    ("filters.min_image_size=-1", "filters.min_image_size must be an integer >= 0"),
    ("select.clip_threshold=2", "select.clip_threshold must be a number >= -1 and <= 1"),
    ("scorer.device=tpu", "scorer.device must be one of auto, cpu, cuda"),
    ("dedup.exact=maybe", "dedup.exact must be true or false"),
    # YAML 1.1 reads no/yes/on/off as booleans: Norwegian "no" must not become False silently
    ("balance.language_caps={no: 1}", "balance.language_caps: key False is not a name; quote it"),
    ("safety.blocklists=[{path: x.txt, kind: term, language: no}]",
     r"safety.blocklists\[0\].language must be a string, got False; quote it"),
    ("safety.blocklists=[{path: x.txt, kind: term, language: 5}]", r"safety.blocklists\[0\].language must be a string"),
])
def test_bad_values_name_key_and_what_is_allowed(item, expect):
    with pytest.raises(config.ConfigError, match=expect):
        load(item)


def test_user_file_overrides_defaults(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("select:\n  clip_threshold: 0.4\nshards:\n  samples_per_shard: 10\n")
    cfg = load(file=str(f))
    assert cfg["select.clip_threshold"] == 0.4 and cfg["shards.samples_per_shard"] == 10
    assert cfg["filters.min_image_size"] == 200


def test_user_file_with_unknown_section(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("filterz:\n  min_image_size: 10\n")
    with pytest.raises(config.ConfigError, match="unknown key 'filterz.min_image_size'"):
        load(file=str(f))


def test_missing_config_file():
    with pytest.raises(config.ConfigError, match="does not exist"):
        load(file="/nonexistent/c.yaml")


@pytest.mark.parametrize("item,key", [
    ("select.clip_threshold=.nan", "select.clip_threshold"),    # NaN passes every < and > check
    ("select.clip_threshold=-.inf", "select.clip_threshold"),
    ("filters.max_aspect_ratio=.inf", "filters.max_aspect_ratio"),  # no upper bound to catch it
    ("select.language_thresholds.en=.nan", "select.language_thresholds.en"),
])
def test_nan_and_infinity_are_refused(item, key):
    with pytest.raises(config.ConfigError, match=f"{key} must be a number .*NaN and infinity") as e:
        load(item)
    assert "\n" not in str(e.value)


def test_language_thresholds_need_a_default_entry():
    """Without 'default' the run would stop mid-way on the first other language (a KeyError)."""
    with pytest.raises(config.ConfigError, match="select.language_thresholds must be a mapping of names to "
                                                 "numbers >= -1 and <= 1 with a 'default' entry") as e:
        load("select.mode=language", "select.language_thresholds={en: 0.3}")
    assert "\n" not in str(e.value)
    with pytest.raises(config.ConfigError, match="select.language_thresholds.de must be a number"):
        load("select.language_thresholds={en: 0.3, de: 2, default: 0.2}")
    assert load("select.language_thresholds={en: 0.3, default: 0.2}")["select.language_thresholds"] == {
        "default": 0.2, "en": 0.3}


@pytest.mark.parametrize("item,keys", [
    ("shards={samples_per_shard: 10}", "shards.samples_per_shard"),
    ("dedup.semdedup={enabled: true}", "dedup.semdedup.enabled, dedup.semdedup.eps"),
])
def test_a_section_given_as_one_value_names_its_keys(item, keys):
    with pytest.raises(config.ConfigError, match=f"is a section, not a key; set its keys one by one: {keys}") as e:
        load(item)
    assert "\n" not in str(e.value) and "unknown key" not in str(e.value)


def test_every_pipeline_schema_loads_without_beam_or_torch():
    """The CLI checks a config with these before it imports Beam, torch or open_clip."""
    code = ("import sys; from curate.pipelines.specs import PIPELINES; from curate import config; "
            "[config.load(n, s.schema, None, ['input=x']) for n, s in PIPELINES.items()]; "
            "print(sorted(m for m in ('apache_beam', 'torch', 'open_clip', 'webdataset') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"


def test_pipeline_modules_use_the_specs_schemas():
    from curate.pipelines import export, ingest
    from curate.pipelines.specs import PIPELINES

    for name, module in (("laion_filter", laion_filter), ("score", score), ("export", export), ("ingest", ingest)):
        assert module.SCHEMA is PIPELINES[name].schema
        assert set(config.read_yaml(config.CONFIG_DIR / f"{name}.yaml", frozenset(
            k for k, o in module.SCHEMA.items() if o.kind is dict))) == set(module.SCHEMA), name
