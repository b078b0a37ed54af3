"""Flavours: config, templates, seeds, and prompts built over the model's chat template."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT, jsonl_rows
from self_lengthen.errors import UsageError
from self_lengthen.flavour import Flavour, PromptBuilder, load_seeds
from test_chat_template import LLAMA3_STYLE

KINDS = {"creative writing", "academic", "business", "journalism", "professional", "personal", "technical"}


@pytest.fixture(scope="module", params=["llama", "qwen"])
def flavour(request):
    return Flavour(ROOT / request.param)


@pytest.fixture(scope="module")
def tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def test_seeds_cover_the_seven_task_kinds(flavour):
    rows = jsonl_rows(flavour.dir / "seeds.jsonl")
    assert len(rows) >= 30 and {r["kind"] for r in rows} == KINDS
    from self_lengthen.text import is_cjk

    assert all(is_cjk(r["prompt"]) == (flavour.config.language == "zh") for r in rows)


def test_prompt_files_hold_no_special_tokens(flavour):
    for path in (flavour.dir / "prompt_templates").iterdir():
        text = path.read_text()
        assert "<|" not in text and "[INST]" not in text, path


def test_self_instruct_prompt_is_chat_template_plus_assistant_prefix(flavour, tokenizer):
    builder = PromptBuilder(flavour, tokenizer)
    prompt = builder.self_instruct("First task.", "Second task.")
    system = [{"role": "system", "content": flavour.config.system_prompt}] if flavour.config.system_prompt else []
    chat = tokenizer.apply_chat_template(system + [{"role": "user", "content": flavour.fill("self_instruct")}],
                                         tokenize=False, add_generation_prompt=True)
    label = flavour.config.instruction_label
    assert prompt == chat + f"{label} 1: First task.\n{label} 2: Second task.\n{label} 3:"


def test_prompts_follow_another_chat_template(flavour, tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = LLAMA3_STYLE
    builder = PromptBuilder(flavour, tokenizer)
    prompt = builder.extend_completion("Task", "Draft.", "Prefix ")
    assert "<|start_header_id|>user<|end_header_id|>" in prompt and prompt.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\nPrefix ")


@pytest.mark.parametrize("tail", ["\nInstruction 4: next", "\nInstructions 4: next", "\ninstruction 4：next", ""])
def test_parse_instruction_stops_before_a_fourth(tokenizer, tail):
    builder = PromptBuilder(Flavour(ROOT / "llama"), tokenizer)
    assert builder.parse_instruction(" Write a long report on ports." + tail) == "Write a long report on ports."


@pytest.mark.parametrize("answer,verdict", [
    ("Yes.", True), ("no", False), ("The answer is yes, clearly.", True), ("Hmm, no; yes", False), ("maybe", None),
    ("Nothing", None),
])
def test_lenient_verdict_parsing_en(tokenizer, answer, verdict):
    assert PromptBuilder(Flavour(ROOT / "llama"), tokenizer).parse_verdict(answer, lenient=True) is verdict


@pytest.mark.parametrize("answer,verdict", [("是", True), ("否。", False), ("不适合写成长文", False), ("适合", True), ("嗯", None)])
def test_lenient_verdict_parsing_zh(tokenizer, answer, verdict):
    assert PromptBuilder(Flavour(ROOT / "qwen"), tokenizer).parse_verdict(answer, lenient=True) is verdict


@pytest.mark.parametrize("answer,verdict", [
    ("yes", True), ("Yes", True), (" YES \n", True), ("Yes.", False), ("yes, it would", False), ("no", False),
    ("The answer is yes", False), ("", False),
])
def test_strict_verdict_en_is_the_whole_answer_in_any_case(tokenizer, answer, verdict):
    assert PromptBuilder(Flavour(ROOT / "llama"), tokenizer).parse_verdict(answer) is verdict


@pytest.mark.parametrize("answer,verdict", [
    ("是", True), ("  是\n", True), ("是。", False), ("适合", False), ("是的", False), ("否", False), ("yes", False),
])
def test_strict_verdict_zh_is_the_whole_answer(tokenizer, answer, verdict):
    assert PromptBuilder(Flavour(ROOT / "qwen"), tokenizer).parse_verdict(answer) is verdict


@given(st.text(max_size=80))
def test_verdict_parsing_never_fails(answer):
    from types import SimpleNamespace

    builder = PromptBuilder.__new__(PromptBuilder)
    builder.flavour = SimpleNamespace(config=SimpleNamespace(judge_yes=["yes", "是"], judge_no=["no", "否"],
                                                             judge_answer="yes"))
    assert builder.parse_verdict(answer, lenient=True) in (True, False, None)
    assert builder.parse_verdict(answer) in (True, False)


def test_seeds_from_a_saved_dataset_dir(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"prompt": ["Write a.", "Write b.", "Write c."]}).save_to_disk(str(tmp_path / "ds"))
    assert load_seeds(tmp_path / "ds") == ["Write a.", "Write b.", "Write c."]
    Dataset.from_dict({"text": ["x", "y"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(UsageError, match="no 'prompt' column"):
        load_seeds(tmp_path / "bad")


def test_yaml_booleans_in_judge_words_are_rejected(tmp_path):
    import shutil

    shutil.copytree(ROOT / "llama", tmp_path / "f")
    cfg = tmp_path / "f" / "config.yaml"
    cfg.write_text(cfg.read_text().replace('judge_yes: ["yes"]', "judge_yes: [yes]"))
    with pytest.raises(UsageError, match="quoted strings"):
        Flavour(tmp_path / "f")
