"""Profiles are checked whole when loaded: each bad field is one line naming it and what it takes."""
import pytest
import yaml

from self_lengthen.client import DEFAULT_SAMPLING
from self_lengthen.errors import UsageError
from self_lengthen.profile import PROFILES, SAMPLING_RANGES, SCHEMA, load_profile, parse_sampling, problems


@pytest.mark.parametrize("name", ["gpu", "cpu-demo", "tiny", "study"])
def test_the_shipped_profiles_pass(name):
    assert problems(load_profile(name), SCHEMA) == []


def test_every_shipped_profile_is_tested():
    assert sorted(p.stem for p in PROFILES.glob("*.yaml")) == ["cpu-demo", "gpu", "study", "tiny"]


def with_change(tmp_path, change: dict) -> str:
    """cpu-demo with `change` applied (a dotted path -> value; the value None deletes the field), as a file."""
    profile = yaml.safe_load((PROFILES / "cpu-demo.yaml").read_text())
    for dotted, value in change.items():
        *parents, leaf = dotted.split(".")
        node = profile
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


@pytest.mark.parametrize("change,message", [
    ({"generation.workerz": 4}, "unknown field generation.workerz (known in generation: max_tokens, workers"),
    ({"trainng": {}}, "unknown field trainng (known: generation, training, collect, barrier_timeout)"),
    ({"training.lora_rnak": 8}, "unknown field training.lora_rnak"),
    ({"generation.max_tries.extnd": 2}, "unknown field generation.max_tries.extnd"),
    ({"generation.workers": 0}, "generation.workers=0 is not null or a positive whole number"),
    ({"generation.workers": "many"}, "generation.workers='many' is not null or a positive whole number"),
    ({"generation.max_tokens": -1}, "generation.max_tokens=-1 is not a positive whole number, or a mapping"),
    ({"generation.max_tokens": {"generate": 100}}, "generation.max_tokens={'generate': 100} is not"),
    ({"generation.max_tries.extend": -2}, "generation.max_tries.extend=-2 is not a positive whole number"),
    ({"generation.finish_fraction": {"extend": 1.5}}, "generation.finish_fraction.extend=1.5 is not a number above 0"),
    ({"generation.time_budget.extend": "10m"}, "generation.time_budget.extend='10m' is not a positive number"),
    ({"generation.drop_short.generate": "no"}, "generation.drop_short.generate='no' is not true or false"),
    ({"generation.keep_in_flight.extend": "yes"}, "generation.keep_in_flight.extend='yes' is not true or false"),
    ({"generation.extend_stop_when_grown": 1}, "generation.extend_stop_when_grown=1 is not true or false"),
    ({"generation.keep_in_flight.self_instruct": True}, "unknown field generation.keep_in_flight.self_instruct"),
    ({"generation.sampling": {"generate": {"temprature": 1}}}, "generation.sampling.generate={'temprature': 1} is not"),
    ({"generation.sampling": {"generate": {"top_k": 0.5}}}, "generation.sampling.generate={'top_k': 0.5} is not"),
    ({"generation.sampling": {"extend": {"temperature": -1}}}, "generation.sampling.extend={'temperature': -1} is not"),
    ({"generation.sampling": {"extend": {"top_p": "all"}}}, "generation.sampling.extend={'top_p': 'all'} is not"),
    ({"generation.sampling": {"heldout": {"top_p": 1}}}, "unknown field generation.sampling.heldout"),
    ({"generation.judge_parse": "loose"}, "generation.judge_parse='loose' is not strict or lenient"),
    ({"training.num_train_epochs": 0}, "training.num_train_epochs=0 is not a positive number"),
    ({"training.bf16": 1}, "training.bf16=1 is not true or false"),
    ({"training.cutoff_len": 10.5}, "training.cutoff_len=10.5 is not a positive whole number"),
    ({"collect.total_count": -5}, "collect.total_count=-5 is not a whole number, 0 or more"),
    ({"barrier_timeout": 0}, "barrier_timeout=0 is not a positive number of seconds"),
    ({"generation.max_tokens": None}, "generation.max_tokens is missing"),
    ({"training": None}, "training is missing"),
    ({"generation": [1, 2]}, "generation must be a mapping of max_tokens"),
])
def test_a_bad_field_is_one_line_naming_it(tmp_path, change, message):
    with pytest.raises(UsageError) as err:
        load_profile(with_change(tmp_path, change))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_profile_file_that_is_not_yaml_or_not_there(tmp_path):
    (tmp_path / "broken.yaml").write_text("generation: {max_tokens: [\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_profile(str(tmp_path / "broken.yaml"))
    with pytest.raises(UsageError, match="unknown profile"):
        load_profile(str(tmp_path / "absent.yaml"))
    assert load_profile(with_change(tmp_path, {"generation.workers": 3}))["generation"]["workers"] == 3
    in_range = {"generate": {"temperature": 0, "top_k": 0}, "extend": {"top_p": 1, "repetition_penalty": 1.0}}
    assert load_profile(with_change(tmp_path, {"generation.sampling": in_range}))["generation"]["sampling"] == in_range


@pytest.mark.parametrize("text, problem", [
    ("temperature=hot", "temperature='hot' is not a number, 0 or more"),
    ("min_p=0.1", "unknown field 'min_p' (known: temperature, top_p, top_k, repetition_penalty)"),
    ("top_p=inf", "top_p=inf is not a number above 0 and at most 1"),
    ("top_p=0", "top_p=0.0 is not a number above 0 and at most 1"),
    ("temperature=-0.5", "temperature=-0.5 is not a number, 0 or more"),
    ("top_k=2.5", "top_k='2.5' is not a whole number: -1 or 0 (off), or 1 or more"),
    ("top_k=-2", "top_k=-2 is not a whole number: -1 or 0 (off), or 1 or more"),
    ("repetition_penalty=0", "repetition_penalty=0.0 is not a positive number"),
    ("temperature", "temperature='' is not a number, 0 or more"),
])
def test_a_bad_sampling_is_one_line_naming_the_field(text, problem):
    with pytest.raises(UsageError) as err:
        parse_sampling(text)
    assert str(err.value) == f"sampling {text!r}: {problem} (write FIELD=NUMBER,...)"


def test_sampling_in_range_parses_and_the_ranges_cover_the_methods_fields():
    assert parse_sampling("temperature=0,top_p=1,top_k=0,repetition_penalty=1") == {
        "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    assert parse_sampling(" top_k=-1 , temperature=1.5") == {"top_k": -1, "temperature": 1.5}
    assert set(SAMPLING_RANGES) == set(DEFAULT_SAMPLING)
