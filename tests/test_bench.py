"""The benchmarks and tools outside the library: what they import from it exists, and the pooled held-out figures
that README and bench/RESULTS.md quote come out right on fixed answers."""
import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from self_lengthen.stages.heldout import CHECK_TYPES, COLUMNS
from self_lengthen.stages.runner import save_dataset

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("eval/*.py"), *ROOT.glob("qwen/*.py"), *ROOT.glob("llama/*.py"),
                  ROOT / "collect_data.py"])


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def library_has(module: str, name: str | None = None) -> bool:
    """Whether the library has `module` and, if named, `name` in it (an attribute or a submodule)."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError:
        return False
    return name is None or hasattr(found, name) or hasattr(found, "__path__") and library_has(f"{module}.{name}")


def script_label(script: Path) -> str:
    """How a finding names its script: relative to the repository, or by its name outside it (a test's tmp file)."""
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else script.name


def missing_imports(script: Path) -> list[str]:
    """Names `script` imports, anywhere in it, from the library or from a script beside it, that are not there."""
    missing, label = [], script_label(script)
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            sibling = script.parent / f"{node.module}.py"
            if node.module.split(".")[0] == "self_lengthen":
                have = (lambda name, module=node.module: library_has(module, name))
            elif sibling.exists():
                defined = top_level_names(sibling)
                have = defined.__contains__
            else:
                continue
            missing += [f"{label}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                        if not have(a.name)]
        elif isinstance(node, ast.Import):
            missing += [f"{label}:{node.lineno}: {a.name}" for a in node.names
                        if a.name.split(".")[0] == "self_lengthen" and not library_has(a.name)]
    return missing


def test_every_script_imports_only_what_the_library_and_its_neighbours_have():
    assert len(SCRIPTS) > 20
    assert [m for script in SCRIPTS for m in missing_imports(script)] == []


SUBPROCESS_WAITS = {"run", "call", "check_call", "check_output"}


def waits_without_timeout(script: Path) -> list[str]:
    """Calls in `script` that wait on a child process with no timeout: subprocess.run (call, check_call,
    check_output) or .communicate() without `timeout=` (or a ** that may carry it)."""
    found, label = [], script_label(script)
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func, keywords = node.func, {k.arg for k in node.keywords}
        waits = (isinstance(func.value, ast.Name) and func.value.id == "subprocess" and func.attr in SUBPROCESS_WAITS
                 or func.attr == "communicate")
        if waits and "timeout" not in keywords and None not in keywords:
            found.append(f"{label}:{node.lineno}: {func.attr}")
    return found


def test_every_wait_on_a_child_process_has_a_timeout(tmp_path):
    everything = [*SCRIPTS, *sorted(ROOT.glob("self_lengthen/**/*.py"))]
    assert [w for script in everything for w in waits_without_timeout(script)] == []
    script = tmp_path / "waits.py"
    script.write_text("import subprocess\nsubprocess.run(['true'], check=True)\nsubprocess.run(['true'], timeout=5)\n"
                      "subprocess.check_output(['true'], **kw)\nproc.communicate()\nproc.communicate(timeout=1)\n")
    assert waits_without_timeout(script) == ["waits.py:2: run", "waits.py:5: communicate"]


def test_the_import_check_names_a_name_the_library_lost(tmp_path):
    script = tmp_path / "old_bench.py"
    script.write_text("from self_lengthen.profile import parse_sampling\n"
                      "def main():\n    from self_lengthen.client import parse_sampling, Client\n"
                      "    import self_lengthen.gone\n    from self_lengthen.gone import x\n")
    assert missing_imports(script) == ["old_bench.py:3: self_lengthen.client.parse_sampling",
                                       "old_bench.py:4: self_lengthen.gone", "old_bench.py:5: self_lengthen.gone.x"]


def heldout_run(results: Path, words_by_iter: dict[int, list[int]], base_capped_at: int | None = None) -> None:
    """A run's held-out answers per iteration, one of the base's (iteration 1) at max_tokens if asked."""
    for k, words in words_by_iter.items():
        rows = [{"prompt": f"p{i}", "response": "x", "words": w, "unfinished": False, "repetition": False,
                 "capped": k == 1 and i == base_capped_at} for i, w in enumerate(words)]
        save_dataset(rows, COLUMNS, results / f"iter_{k}" / "heldout", CHECK_TYPES)
    data = results / "iter_1" / "data"
    data.mkdir(parents=True)
    (data / "gen_sft.json").write_text(json.dumps([{"instruction": "p", "input": "", "output": "w " * 150}]))


def heldout_runs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, ROOT / "bench" / "heldout_runs.py", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_heldout_runs_pools_the_runs_and_counts_the_runs_above_the_base(tmp_path):
    # run a: base 100, 200 -> final 120, 240 (1.2x); run b: base 100, 100 -> final 90, 90 (0.9x), one base answer capped
    heldout_run(tmp_path / "a" / "results", {1: [100, 200], 2: [110, 220], 3: [120, 240]})
    heldout_run(tmp_path / "b", {1: [100, 100], 2: [90, 90]}, base_capped_at=1)  # a run named by its own dir
    proc = heldout_runs(tmp_path / "a" / "results", tmp_path / "b", "--plot", tmp_path / "runs.png")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[-1] == f"plot: {tmp_path / 'runs.png'}"
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| a | iter_3 | 150.0 | 180.0 | 1.20 | 150.0, 180.0 | 0.0, 0.0 | 0.0, 0.0 | -, - | 1.00 |" in out
    assert "| b | iter_2 | 100.0 | 90.0 | 0.90 | 100.0, 90.0 | 50.0, 0.0 | 0.0, 0.0 | -, - | 1.50 |" in out
    assert "final Generator's held-out mean above the base's: 1 of 2 runs" in out
    # pooled at iteration 2: (110+220+90+90)/(100+200+100+100) = 1.02; clean drops b's capped base answer of 100
    iter2 = next(line for line in out if line.startswith("| iter_2 "))
    assert iter2.startswith("| iter_2 (gen_sft of iteration 1) | 2 | 4 | 1.020 (")
    assert f"| 2, 4, {510 / 4 / (400 / 3):.3f} (" in iter2
    iter3 = next(line for line in out if line.startswith("| iter_3 "))
    assert iter3.startswith("| iter_3 (gen_sft of iteration 2) | 1 | 2 | 1.200 (1.200-1.200) | 1, 2, 1.200 (")


def test_heldout_runs_pools_saved_records_as_it_pooled_the_results_dirs(tmp_path):
    heldout_run(tmp_path / "a" / "results", {1: [100, 200], 2: [110, 220], 3: [120, 240]})
    heldout_run(tmp_path / "b", {1: [100, 100], 2: [90, 90]}, base_capped_at=1)
    saved = tmp_path / "runs.jsonl"
    from_dirs = heldout_runs("--save", saved, tmp_path / "a" / "results", tmp_path / "b")
    assert from_dirs.returncode == 0, from_dirs.stderr
    assert from_dirs.stdout.splitlines()[-1] == f"saved: {saved} (2 runs)"
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [(r["run"], sorted(r["iterations"])) for r in records] == [("a", ["1", "2", "3"]), ("b", ["1", "2"])]
    assert records[1]["iterations"]["1"] == {"n": 2, "mean": 100.0, "clean_n": 1, "clean_mean": 100.0, "capped": 1,
                                             "repetition": 0, "longen_following": None}
    # the same runs from the file: the same tables
    from_file = heldout_runs(saved)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.splitlines() == from_dirs.stdout.splitlines()[:-2]
    # a run recorded by hand, its iteration 2 without clean figures: in the pooled ratio of all answers, not the clean
    hand = tmp_path / "hand.jsonl"
    hand.write_text(json.dumps({"run": "c", "iterations": {
        "1": {"n": 2, "mean": 100.0, "clean_n": 2, "clean_mean": 100.0, "longen_following": 0.3},
        "2": {"n": 2, "mean": 200.0, "longen_following": 0.5}}}) + "\n")
    proc = heldout_runs("--save", saved, saved, hand)   # the file read, then written with one run more
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "| c | iter_2 | 100.0 | 200.0 | 2.00 | 100.0, - | -, - | -, - | 0.300, 0.500 | - |" in out
    assert "LonGen following above the base's: 1 of 1 runs (mean 0.300 -> 0.500)" in out
    iter2 = next(line for line in out if line.startswith("| iter_2 "))
    # all answers: (330 + 180 + 400) / (300 + 200 + 200); clean: c left out, as in the first test
    assert iter2.startswith(f"| iter_2 (gen_sft of iteration 1) | 3 | 6 | {910 / 6 / (700 / 6):.3f} (")
    assert f"| 2, 4, {510 / 4 / (400 / 3):.3f} (" in iter2
    assert len(saved.read_text().splitlines()) == 3


def test_heldout_runs_names_a_results_dir_and_records_what_it_ran(tmp_path):
    """NAME=DIR names the run (else the dir holding results/ does); --from goes with the runs read from results dirs,
    not with those read from a file; NAME= before a file of records is one clear line."""
    heldout_run(tmp_path / "demo_a" / "results", {1: [100, 200], 2: [110, 220]})
    heldout_run(tmp_path / "demo_b" / "results", {1: [100, 100], 2: [90, 90]})
    saved, more = tmp_path / "runs.jsonl", tmp_path / "more.jsonl"
    first = heldout_runs("--save", saved, f"A={tmp_path / 'demo_a' / 'results'}")
    assert first.returncode == 0, first.stderr
    proc = heldout_runs("--save", more, "--from", "cpu-demo at abc1234", saved, tmp_path / "demo_b" / "results")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in more.read_text().splitlines()]
    assert [(r["run"], r.get("from")) for r in records] == [("A", None), ("demo_b", "cpu-demo at abc1234")]
    bad = heldout_runs(f"A={saved}")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"error: A={saved}: NAME=DIR names a results dir; {saved} is a file of recorded runs"


def test_heldout_runs_also_compares_each_final_generator_with_the_bases_pooled_over_the_runs(tmp_path):
    # x: base 100 -> final 110; y: base 300 (clean: 1 answer of 200) -> final 320. Each above its own base; against
    # the bases pooled (800 words / 4 answers; clean 400 / 3), only y.
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps({"run": name, "iterations": {
        "1": {"n": 2, "mean": base, "clean_n": base_clean[0], "clean_mean": base_clean[1]},
        "2": {"n": 2, "mean": fin, "clean_n": 2, "clean_mean": fin}}}) + "\n"
        for name, base, base_clean, fin in [("x", 100.0, (2, 100.0), 110.0), ("y", 300.0, (1, 200.0), 320.0)]))
    proc = heldout_runs(runs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "final Generator's held-out mean above the base's: 2 of 2 runs" in out
    assert ("final Generator's mean above the base's mean pooled over the runs (200.0 words, 4 answers): "
            "1 of 2 runs") in out
    assert ("final Generator's clean mean above the base's clean mean pooled over the runs (133.3 words, 3 answers): "
            "1 of 2 runs") in out


@pytest.mark.parametrize("given", ["missing", "one_iteration", "twice", "no_base", "text_figure"])
def test_heldout_runs_names_a_run_it_cannot_use(tmp_path, given):
    results = tmp_path / "results"
    if given == "one_iteration":
        heldout_run(results, {1: [100]})
    args, expected = [results], "needs held-out answers of iteration 1"
    if given == "twice":
        heldout_run(results, {1: [100], 2: [120]})
        args, expected = [results, results], f"run {tmp_path.name} given more than once"
    if given == "no_base":
        args, expected = [tmp_path / "runs.jsonl"], "runs.jsonl: line 1: 'iterations' needs iteration \"1\""
        args[0].write_text(json.dumps({"run": "x", "iterations": {"2": {"n": 16, "mean": 400}}}) + "\n")
    if given == "text_figure":
        args, expected = [tmp_path / "runs.jsonl"], "its other figures numbers or null"
        args[0].write_text(json.dumps({"run": "x", "iterations": {"1": {"n": 16, "mean": 400, "clean_n": "14"},
                                                                  "2": {"n": 16, "mean": 420}}}) + "\n")
    proc = heldout_runs(*args)
    assert proc.returncode != 0 and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_endings_splits_each_text_at_its_first_closing_paragraph(tmp_path):
    body, close = "word " * 10, "In conclusion, " + "word " * 3   # 10 words; 5 words that open as a closing does
    after = "And so, the end came."                                   # 5 words, a second closing paragraph
    cjk = "一二三四五\n\n总之，六七八"        # 5 units, then a CJK closing paragraph of 6 (its comma counts)
    results = tmp_path / "results"
    for k, texts in {1: [body, f"{body}\n\n{close}"], 2: [f"{body}\n{close}\n\n{body}\n{after}", cjk]}.items():
        save_dataset([{"prompt": "p", "response": t, "words": 0, "unfinished": False, "repetition": False,
                       "capped": False} for t in texts], COLUMNS, results / f"iter_{k}" / "heldout", CHECK_TYPES)
    save_dataset([{"prompt": "p", "initial_response": body, "extended_response": f"{body}\n{body}\n{close}"}],
                 ["prompt", "initial_response", "extended_response"], results / "iter_1" / "extended_responses")
    proc = subprocess.run([sys.executable, ROOT / "bench" / "endings.py", results], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "| base | 2 | 12.5 | 10.0 | 2.5 | 0.50 | 50 | 0 |" in lines
    # a body, a closing, more body, a second closing: 10 words of body, 20 of ending; the CJK text 5 and 6
    assert "| gen_sft of iteration 1 | 2 | 20.5 | 7.5 | 13.0 | 1.50 | 100 | 50 |" in lines
    assert "| iteration 1, initial | 1 | 10.0 | 10.0 | 0.0 | 0.00 | 0 | 0 |" in lines
    assert "| iteration 1, extended | 1 | 25.0 | 20.0 | 5.0 | 1.00 | 100 | 0 |" in lines
    not_a_run = subprocess.run([sys.executable, ROOT / "bench" / "endings.py", tmp_path], capture_output=True,
                               text=True, timeout=300)
    assert not_a_run.returncode == 2 and "no iter_K directories" in not_a_run.stderr
    assert "Traceback" not in not_a_run.stderr


def test_rounds_after_growth_counts_what_a_kept_chains_later_rounds_cost_and_add(tmp_path):
    step2 = tmp_path / "results" / "iter_1" / "extended_responses"
    step2.parent.mkdir(parents=True)
    words = lambda n: " ".join(f"w{i}" for i in range(n))  # noqa: E731
    # chain a: 10 initial words, past 1.2x after round 1 (13 words), lengthened again in round 2 (15), round 3 not;
    # chain b: never grown (not kept). Tokens are cumulative per chain.
    a = [(0, "h", 10, 5), (1, None, 13, 20), (1, "h", 13, 25), (2, None, 15, 40), (2, "h", 15, 45), (3, None, 15, 60)]
    b = [(0, "h", 10, 10), (3, None, 10, 40)]
    journal = [{"key": key, "try": 0, "round": r, "prefix": prefix, "text": words(n), "tokens": tokens}
               for key, states in (("a", a), ("b", b)) for r, prefix, n, tokens in states]
    step2.with_name("extended_responses.journal.jsonl").write_text("".join(json.dumps(j) + "\n" for j in journal))
    step2.with_name("extended_responses.checkpoint.jsonl").write_text(
        json.dumps({"key": "a", "status": "accepted", "extended_response": words(15)}) + "\n"
        + json.dumps({"key": "b", "status": "exhausted"}) + "\n")
    script = ROOT / "bench" / "rounds_after_growth.py"
    proc = subprocess.run([sys.executable, script, tmp_path / "results"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # 2 chains, 1 kept, first past 1.2x in round 1, lengthened again; 13 of its 15 words; 40 of 100 tokens after
    lines = proc.stdout.splitlines()
    assert lines[2].endswith(", iter_1 | 2 | 1 | 1, 0, 0 | 1 | 0.867 | 100 | 40.0% |") and len(lines) == 4
    assert lines[3] == "| all | 2 | 1 | 1, 0, 0 | 1 | 0.867 | 100 | 40.0% |"
    not_a_run = subprocess.run([sys.executable, script, tmp_path], capture_output=True, text=True, timeout=300)
    assert not_a_run.returncode == 2 and "no iter_K/extended_responses.journal.jsonl" in not_a_run.stderr


def fit_check_run(results: Path, k: int, pairs: list[tuple[str, str, str]]) -> Path:
    """A run's iteration k as fit_check reads it: gen_sft.json rows (prompt, extended) and step2's output that
    extended each initial response; returns the gen_sft.json."""
    save_dataset([{"prompt": p, "initial_response": i, "extended_response": e} for p, i, e in pairs],
                 ["prompt", "initial_response", "extended_response"], results / f"iter_{k}" / "extended_responses")
    data = results / f"iter_{k}" / "data" / "gen_sft.json"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps([{"instruction": p, "input": "", "output": e} for p, _, e in pairs]))
    return data


def test_fit_check_s_control_answers_each_row_with_the_response_its_extension_started_from(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from fit_check import initial_targets, moved, pooled_rows

    from self_lengthen.errors import UsageError

    one = fit_check_run(tmp_path / "a" / "results", 1,
                        [("p1", "short one", "long one"), ("p2", "short two", "long two")])
    two = fit_check_run(tmp_path / "b" / "results", 2, [("p1", "short one", "long one"), ("p3", "s3", "l3")])
    rows = pooled_rows([one, two])   # a pair two runs share is trained on once
    assert [(r["instruction"], r["output"]) for r in rows] == [("p1", "long one"), ("p2", "long two"), ("p3", "l3")]
    control = initial_targets([one, two], rows)
    assert [(r["instruction"], r["input"], r["output"]) for r in control] == [
        ("p1", "", "short one"), ("p2", "", "short two"), ("p3", "", "s3")]
    with pytest.raises(UsageError, match="1 of 3 rows have no extension"):   # a row step2 never wrote
        initial_targets([one], rows)

    # a run trained under /old/results and moved: its paths follow it, others (the model, a sibling dir) stay
    config = {"dataset_dir": "/old/results/iter_2/data", "adapter_name_or_path": "/old/results/iter_1/lora/gen_sft",
              "model_name_or_path": "/models/base", "output_dir": "/old/results_x/out", "num_train_epochs": 1}
    assert moved(config, tmp_path / "b" / "results") == {
        **config, "dataset_dir": f"{tmp_path}/b/results/iter_2/data",
        "adapter_name_or_path": f"{tmp_path}/b/results/iter_1/lora/gen_sft"}


@pytest.mark.slow
def test_the_offline_engine_runs_with_the_stack_s_preloads_or_exactly_those_asked_for(default_model):
    """The benches compare the stack against vLLM offline; its engine must run as the stack's does (on CPU with
    tcmalloc and Intel's OpenMP where found), which the bench's own process, already started, cannot give it."""
    sys.path.insert(0, str(ROOT / "bench"))
    from serving import offline_run

    from self_lengthen.devices import ENGINE_PRELOAD
    from self_lengthen.serve.cluster import engine_env_defaults, gpu_count

    stack = engine_env_defaults(gpu_count()).get("LD_PRELOAD")
    run = offline_run(default_model, None, 4, raw_prompts=["The river"] * 2)
    assert len(run["rates"]) == 1 and run["rates"][0] > 0
    assert run["preloaded"] == (list(ENGINE_PRELOAD) if stack else [])
    if stack:  # a setting without them gets neither
        assert offline_run(default_model, None, 4, raw_prompts=["The river"], preload=[])["preloaded"] == []


IN_PROCESS_STEP2 = """
import json, os, sys
from pathlib import Path
sys.path[:0] = ["bench", "."]
from synthesis import SAME_WORK, STAGES, InProcessEngine, fixture_rows, new_workdir, run_stage
from self_lengthen.stages.runner import save_dataset

model = Path(sys.argv[1])
workdir = new_workdir("test-step2", [])
save_dataset(fixture_rows()[:1], ["prompt", "initial_response"], workdir / "results" / "iter_1" / STAGES["generate"])
engine = InProcessEngine(model)
try:
    run = run_stage("extend", workdir, model, "tiny", client=engine,
                    extra=[*SAME_WORK, "--attempts", "1", "--max_tries", "1", "--max_tokens", "48"])
finally:
    engine.close()
print("SUMMARY " + json.dumps(run["summary"]), flush=True)
os._exit(0)
"""


@pytest.mark.slow
def test_the_in_process_engine_serves_a_real_stage_as_a_client_does(default_model, tmp_path):
    """synthesis (a) and the benches built on InProcessEngine hand it to the stages in place of a Client, so it must
    give them what a Client gives: once a stage read a count it lacked, and (a) broke unnoticed. One chain of step2
    with short requests (cut at 48 tokens, so rejected at once), in a process with our workers' environment."""
    from self_lengthen.serve.cluster import engine_env

    proc = subprocess.run([sys.executable, "-c", IN_PROCESS_STEP2, str(default_model)], cwd=ROOT,
                          env={**engine_env(), "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    summary = json.loads(lines[-1][len("SUMMARY "):])
    assert summary["items"] == 1 and summary["tokens_generated"] > 0
    assert summary["tokens_received_this_run"] == summary["tokens_this_run"] == summary["tokens_generated"]
    assert summary["tokens_recorded_share"] == 1.0


def test_an_in_process_engine_refuses_a_process_without_the_workers_environment(default_model):
    """Without the preloads an engine in the bench's process would run differently from the stack's."""
    script = ("import sys; sys.path[:0] = ['bench', '.']\n"
              "from synthesis import InProcessEngine\nInProcessEngine(__import__('pathlib').Path(sys.argv[1]))")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VLLM_CPU_KVCACHE_SPACE")}
    proc = subprocess.run([sys.executable, "-c", script, str(default_model)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "call synthesis.run_with_engine_env()" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_engine_load_splits_the_engines_work_at_the_run_s_progress_lines(tmp_path):
    """Two engines' stats lines (10-s intervals) across a run log's segments: tokens, rate, running, under-full."""
    run_log = tmp_path / "demo.log"
    run_log.write_text("[rank 0 23:59:30] iteration 1: step1 Generator\nother output\n"
                       "[rank 0 00:00:30] iteration 1: step2 Extender\n[rank 0 00:01:10] iteration 1: done\n")

    def stat(t, name, gen, running):
        return (f"INFO {t} [loggers.py:250] [{name}] Engine 000: Avg prompt throughput: 5.0 tokens/s, Avg "
                f"generation throughput: {gen} tokens/s, Running: {running} reqs, Waiting: 0 reqs, CPU KV cache "
                f"usage: 3.0%, Prefix cache hit rate: 0.0%")
    worker = tmp_path / "worker0.log"  # step1: 3 ticks on gen_sft; step2: 4 ticks, two engines busy at one of them
    stats_lines = [stat("12-07 23:59:40", "gen_sft", 100.0, 40), stat("12-07 23:59:50", "gen_sft", 100.0, 40),
                   stat("12-08 00:00:00", "gen_sft", 50.0, 4), "INFO unrelated line",
                   stat("12-08 00:00:40", "ext_sft", 200.0, 32), stat("12-08 00:00:50", "ext_sft", 200.0, 32),
                   stat("12-08 00:00:51", "base", 10.0, 1), stat("12-08 00:01:00", "ext_sft", 150.0, 10),
                   stat("12-08 00:01:10", "ext_sft", 150.0, 10)]
    worker.write_text("\n".join(stats_lines) + "\n")
    proc = subprocess.run([sys.executable, ROOT / "bench" / "engine_load.py", run_log, worker, "--saturated", "200"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    # step1: 2500 tokens in 60 s; running (40+40+4)/3 = 28; one tick of 3 under 32 requests; 12.5 s at 200 tok/s
    assert "| iteration 1: step1 Generator (gen_sft) | 60 | 150 | 2500 | 41.7 | 28.0 | 0.33 | 12 | 48 |" in out
    # step2: 7100 tokens in 40 s; running 32, 33 (two engines' lines a second apart: one round), 10, 10; two of four
    # rounds under 32 (the busiest engine decides)
    assert "| iteration 1: step2 Extender (base, ext_sft) | 40 | 250 | 7100 | 177.5 | 21.2 | 0.50 | 36 | 4 |" in out


def test_engine_load_times_the_decode_step_by_requests_running(tmp_path):
    """--by-running: a lone engine's decode-only lines by running band, and the step's time fitted as a + b x running
    (here 25 + 2.5 x running ms); a round where two engines ran, or a line with prefill, is left out."""
    run_log = tmp_path / "demo.log"
    run_log.write_text("[rank 0 10:00:00] iteration 1: step2 Extender\n[rank 0 10:02:00] iteration 1: done\n")

    def stat(t, name, gen, running, prompt=5.0):
        return (f"INFO 12-08 10:{t} [loggers.py:250] [{name}] Engine 000: Avg prompt throughput: {prompt} tokens/s, "
                f"Avg generation throughput: {gen} tokens/s, Running: {running} reqs, Waiting: 0 reqs")
    lines = [stat("00:10", "base", 200.0, 10), stat("00:20", "base", 200.0, 10), stat("00:30", "base", 800 / 3, 20),
             stat("00:40", "base", 9.0, 30, prompt=900.0),  # prefill: left out
             stat("00:50", "gen_sft", 10.0, 1), stat("00:51", "ext_sft", 10.0, 40),  # two engines: left out
             stat("01:00", "base", 800 / 3, 20)]
    worker = tmp_path / "worker0.log"
    worker.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, ROOT / "bench" / "engine_load.py", run_log, worker, "--by-running"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "| 9-16 | 2 | 10 | 200.0 | 50.0 | 20.0 |" in out
    assert "| 17-24 | 2 | 20 | 266.7 | 75.0 | 13.3 |" in out
    assert not any(line.startswith(("| 25-32", "| 33-40", "| 1-4")) for line in out)
    assert "ms per decode step = 25.0 + 2.50 x running (least squares)" in out


def test_engine_load_says_what_is_missing_in_one_line(tmp_path):
    run_log = tmp_path / "demo.log"
    run_log.write_text("[rank 0 10:00:00] iteration 1: step1\n")
    quiet = tmp_path / "worker0.log"
    quiet.write_text("INFO the engine started\n")
    for args, message in [([run_log, tmp_path / "nope.log"], "is not a file"), ([run_log, quiet], "no stats line")]:
        proc = subprocess.run([sys.executable, ROOT / "bench" / "engine_load.py", *args], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
