"""The Generator on held-out instructions: the sets, step0 never emitting one, the stage and the report's table."""
import json
import shutil

from conftest import ROOT, jsonl_rows
from fake_endpoint import FakeEndpoint
from self_lengthen.report import heldout_line, heldout_row, run_report
from self_lengthen.stages.heldout import CHECK_TYPES, length_stats
from self_lengthen.stages.runner import save_dataset
from test_stages import STEP0, load_rows, step

HELDOUT_STEP = ROOT / "llama" / "heldout_generator.py"


def test_each_flavour_has_48_varied_held_out_instructions_that_are_not_seeds():
    for flavour, lang in (("llama", "en"), ("qwen", "zh")):
        rows = jsonl_rows(ROOT / "eval" / "data" / f"heldout_{lang}.jsonl")
        prompts = {r["prompt"].strip().lower() for r in rows}
        seeds = {r["prompt"].strip().lower() for r in jsonl_rows(ROOT / flavour / "seeds.jsonl")}
        assert len(prompts) == len(rows) >= 48 and len({r["genre"] for r in rows}) >= 8
        assert not prompts & seeds


def test_step0_never_emits_a_held_out_instruction(tmp_path):
    heldout = jsonl_rows(ROOT / "eval" / "data" / "heldout_en.jsonl")[0]["prompt"]

    def answer(payload):
        if "prompt" in payload:  # every few-shot completion proposes the held-out instruction
            return f" {heldout}\nInstruction 4: x"
        return "yes"

    with FakeEndpoint(text=answer, delay=0) as fake:
        proc = step(STEP0, tmp_path, "--count", "2", "--max_tries", "3", "--workers", "2", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    it = tmp_path / "results" / "iter_1"
    assert len(load_rows(it / "instructions")) == 0
    summary = json.loads((it / "instructions.summary.json").read_text())
    assert summary["reject_reasons"] == {"heldout": 6}


def test_the_stage_records_length_and_the_checks_of_each_answer(tmp_path):
    answers = {"end": "A full answer that ends here.", "cut": "An answer that stops in the middle of"}

    def answer(payload):
        return answers["cut"] if "zoos" in payload["messages"][-1]["content"] else answers["end"]

    sample = jsonl_rows(ROOT / "eval" / "data" / "longen_sample.jsonl")
    with FakeEndpoint(text=answer, delay=0) as fake:
        proc = step(HELDOUT_STEP, tmp_path, "--count", "16", "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 16 held-out instructions, then the LonGen-style sample; iteration 1's Generator is the base model
    assert fake.requests == 16 + len(sample) and all(p["model"] == "base" for p in fake.payloads)
    it = tmp_path / "results" / "iter_1"
    rows = load_rows(it / "heldout")
    by_prompt = {r["prompt"]: r for r in rows}
    zoo = next(p for p in by_prompt if "zoos" in p)
    assert by_prompt[zoo]["unfinished"] and by_prompt[zoo]["words"] == 8
    assert sum(r["unfinished"] for r in rows) == 1 and not any(r["repetition"] for r in rows)
    longen = load_rows(it / "heldout_longen")
    assert sorted((r["prompt"], r["constraint"]) for r in longen) == sorted((r["query"], r["constraint"]) for r in sample)
    assert all(r["words"] == 6 for r in longen)
    # A run measured before the LonGen part existed: a rerun adds only that part.
    for path in (it / "heldout_longen", it / "heldout_longen.checkpoint.jsonl", it / "heldout_longen.summary.json"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with FakeEndpoint(text=answer, delay=0) as fake:
        proc = step(HELDOUT_STEP, tmp_path, "--count", "16", "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == len(sample) and len(load_rows(it / "heldout_longen")) == len(sample)
    with FakeEndpoint(text=answer, delay=0, models=("base", "gen_sft")) as fake:  # iteration 2: gen_sft of 1
        proc = step(HELDOUT_STEP, tmp_path, "--count", "2", base_url=fake.base_url, iteration=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == 2 + 2 and {p["model"] for p in fake.payloads} == {"gen_sft"}  # --count: of each set


def test_length_stats_gives_a_95_percent_interval_of_the_mean():
    stats = length_stats([100, 200, 300, 400])
    assert stats["mean"] == 250 and stats["median"] == 250
    assert stats["ci95"] == [123.5, 376.5]  # 1.96 x 129.1 / 2
    assert length_stats([]) == {"n": 0}


def test_the_run_report_leads_with_the_held_out_curve(tmp_path):
    results = tmp_path / "results"
    for k, (model, words) in enumerate((("base", [100, 120, 140]), ("gen_sft", [300, 320, 400])), start=1):
        it = results / f"iter_{k}"
        rows = [{"prompt": f"p{i}", "response": "x", "words": w, "unfinished": i == 0, "repetition": False,
                 "capped": False} for i, w in enumerate(words)]
        save_dataset(rows, list(rows[0]), it / "heldout", CHECK_TYPES)
        (it / "heldout.summary.json").write_text(json.dumps({"model": model}))
        save_dataset([{"prompt": "p", "initial_response": "a b c"}], ["prompt", "initial_response"],
                     it / "initial_responses")
    # iteration 1's Generator on the LonGen-style sample: one answer inside its band, one at half its length
    longen = [{"prompt": "q", "response": "x", "words": w, "unfinished": False, "repetition": False, "capped": False,
               "type": "about", "constraint": "about 500 words"} for w in (500, 250)]
    save_dataset(longen, list(longen[0]), results / "iter_1" / "heldout_longen", CHECK_TYPES)
    report = run_report(results).read_text()
    assert report.index("held-out") < report.index("## Synthesis")
    assert "| 1 | base | 3 | 120 |" in report and "| 2 | gen_sft | 3 | 340 |" in report
    assert "| 33.3 |" in report  # one of three ended unfinished
    assert "| 2, 130 |" in report and "| 2, 360 |" in report  # the clean answers: the two that ended
    # following: (1 + (2 x 250 / 400 - 1)) / 2; S_l: (100 + 100 x (1 - (500 / 250 - 1) / 2)) / 2
    assert "| 0.625 | 75.0 |" in report
    row_2 = next(line for line in report.splitlines() if line.startswith("| 2 | gen_sft |"))
    assert row_2.endswith("| 33.3 | 0.0 | 0.0 | 2, 360 | - | - |")  # iteration 2 has no LonGen answers
    assert (results / "growth.png").stat().st_size > 0
    # another stage of answers in the same columns gets LonGen scores only from its own `{name}_longen`
    shutil.copytree(results / "iter_1" / "heldout", results / "iter_1" / "training_prompts")
    assert heldout_row(results / "iter_1")["longen_following"] == 0.625
    assert heldout_row(results / "iter_1", "training_prompts")["mean"] == 120
    assert "longen_following" not in heldout_row(results / "iter_1", "training_prompts")
    # the driver's one line per iteration
    assert heldout_line(results / "iter_1") == ("the Generator (base) on 3 held-out instructions: mean 120 words "
                                                "(95% CI 97.4-142.6), repetition 0.0%, hit max_tokens 0.0%, "
                                                "LonGen following 0.625")
    assert heldout_line(results / "iter_2").endswith("mean 340 words (95% CI 280.1-399.9), repetition 0.0%, "
                                                     "hit max_tokens 0.0%")
    assert heldout_line(results / "iter_3") == "no held-out answers recorded"


def test_the_iteration_report_shows_whether_training_moved_the_loss(tmp_path):
    from self_lengthen.report import iteration_report

    it = tmp_path / "iter_1"
    (it / "data").mkdir(parents=True)
    (it / "data" / "gen_sft.json").write_text(json.dumps([{"instruction": "p", "output": "x"}] * 2))
    (it / "lora" / "gen_sft").mkdir(parents=True)
    steps = [(0.5, 2.0), (1.0, 1.8), (1.5, 1.5), (2.0, 1.1)]  # 2 rows, batch 1, 2 epochs
    (it / "lora" / "gen_sft" / "trainer_log.jsonl").write_text(
        "".join(json.dumps({"current_steps": i + 1, "loss": loss, "epoch": e}) + "\n" for i, (e, loss) in enumerate(steps))
        + json.dumps({"current_steps": 4, "epoch": 2.0, "train_loss": 1.6}) + "\n")  # the summary line has no loss
    report = iteration_report(it).read_text()
    assert "| gen_sft | 2 | - | 4 | 2 | 1.9 | 1.3 |" in report   # no count of cut rows recorded
    assert "ext_sft" not in report  # not trained: no row
    (it / "data" / "tokenized_gen_sft.stats.json").write_text(json.dumps({"rows": 2, "cut": 1, "cutoff_len": 512}))
    assert "| gen_sft | 2 | 1 (at 512 tokens) | 4 | 2 | 1.9 | 1.3 |" in iteration_report(it).read_text()


def test_the_report_command_on_a_missing_dir_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "self_lengthen.report", str(tmp_path / "nope")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope'}: no such directory (pass a run's results/ dir)"
