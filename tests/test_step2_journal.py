"""step2 keeps every finished request: a chain (tries x rounds x two requests) is journaled after each request, so
kill -9, a time budget or finish_fraction loses at most the requests in flight and a rerun continues each chain.

A fake endpoint stands in for the model here only to make the answers deterministic (so an interrupted run can be
compared with an uninterrupted one) and fast enough to kill at many points; the stage code is the real one.
"""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from fake_endpoint import FakeEndpoint
from self_lengthen.io import read_jsonl
from self_lengthen.stages.runner import MARKER, save_dataset
from self_lengthen.text import count_words
from test_stages import STEP2, load_rows, step

ROWS = [{"prompt": f"Write a long story about harbour {i}.",
         "initial_response": f"Harbour {i} wakes early.\n\nBoats leave at dawn.\n\nGulls follow them out."}
        for i in range(8)]
ARGS = ("--max_tries", "2", "--no-drop_short", "--finish_fraction", "1")  # 8 rows x 2 attempts = 16 chains


def chain_answers(delay: float, stagger: bool = False):
    """The chat half: three blocks (two kept). The continuation: as many words as its prompt, ended, unless the
    prompt's hash says to leave it unfinished (a rejected round). Deterministic in the request. `stagger`: each
    request takes 1 to 4 times `delay` (by its hash), so that chains do not move in step."""
    def answer(payload):
        request = json.dumps(payload, sort_keys=True).encode()
        time.sleep(delay * (1 + int(hashlib.sha1(request).hexdigest(), 16) % 4 if stagger else 1))
        if "messages" in payload:
            return "Head one opens the text.\n\nHead two goes on.\n\nHead three is cut."
        prompt = payload["prompt"]
        words = " ".join(f"w{i}" for i in range(len(prompt.split())))  # no repeated n-gram
        if int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 2:
            return f" {words} and then it stops mid"
        return f" {words} and it ends."
    return answer


def prepare(workdir: Path) -> Path:
    save_dataset(ROWS, ["prompt", "initial_response"], workdir / "results" / "iter_1" / "initial_responses")
    return workdir / "results" / "iter_1"


def checkpoint(iter_dir: Path) -> list[dict]:
    """step2's checkpoint: one record per finished item."""
    return read_jsonl(iter_dir / "extended_responses.checkpoint.jsonl", allow_empty=True)


def outcome(iter_dir: Path):
    rows = load_rows(iter_dir / "extended_responses")
    return (sorted(zip(rows["prompt"], rows["extended_response"])),
            sorted((r["key"], r["status"], r["tries"]) for r in checkpoint(iter_dir)))


def assert_no_request_redone(journal: Path):
    """Each chain's journaled progress (try, round, half a round done) only ever moves forward."""
    seen: dict[str, tuple] = {}
    for state in read_jsonl(journal):
        progress = (state["try"], state["round"], state["prefix"] is not None)
        assert progress > seen.get(state["key"], (-1,)), f"{state['key']} went back to {progress}"
        seen[state["key"]] = progress


def run_clean(tmp_path: Path, delay: float):
    iter_dir = prepare(tmp_path / "clean")
    with FakeEndpoint(text=chain_answers(delay)) as fake:
        proc = step(STEP2, tmp_path / "clean", *ARGS, "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return outcome(iter_dir), fake.requests


def kill_9_at_random_points(workdir: Path, args, fake: FakeEndpoint, times: int, rng: random.Random) -> int:
    """Start step2 `times` times, each killed with SIGKILL after a random 2-12 more journaled requests (if it has not
    finished by then), then run it to the end. Returns how many runs were killed."""
    journal = workdir / "results" / "iter_1" / "extended_responses.journal.jsonl"
    kills = 0
    for _ in range(times):
        lines = journal.read_bytes().count(b"\n") if journal.exists() else 0
        target = lines + rng.randint(2, 12)
        running = step(STEP2, workdir, *args, "--workers", "4", base_url=fake.base_url, wait=False)
        deadline = time.monotonic() + 120
        while running.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= target:
                os.kill(running.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        running.communicate(timeout=60)
    final = step(STEP2, workdir, *args, "--workers", "4", base_url=fake.base_url)
    assert final.returncode == 0, final.stderr[-2000:]
    return kills


def test_kill_9_at_random_points_continues_every_chain_where_it_was(tmp_path):
    expected, clean_requests = run_clean(tmp_path, delay=0.02)
    workdir = tmp_path / "killed"
    iter_dir = prepare(workdir)
    journal = iter_dir / "extended_responses.journal.jsonl"
    with FakeEndpoint(text=chain_answers(0.02)) as fake:
        kills = kill_9_at_random_points(workdir, ARGS, fake, times=8, rng=random.Random(13))
    assert kills >= 6
    assert outcome(iter_dir) == expected  # the same rows and the same records, each once
    assert_no_request_redone(journal)
    # what was redone is at most the requests in flight at each kill (4 workers)
    assert clean_requests <= fake.requests <= clean_requests + 4 * kills


def test_time_budget_records_every_finished_request_and_a_rerun_continues(tmp_path):
    expected, clean_requests = run_clean(tmp_path, delay=0.1)
    workdir = tmp_path / "budget"
    iter_dir = prepare(workdir)
    # staggered: when the budget ends the stage, the chains in flight are at different points of their tries
    with FakeEndpoint(text=chain_answers(0.1, stagger=True)) as fake:
        proc = step(STEP2, workdir, *ARGS, "--workers", "4", "--time_budget", "0.03", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time budget" in proc.stdout
    summary = json.loads((iter_dir / "extended_responses.summary.json").read_text())
    assert summary["items"] < 16 and summary["chains_unfinished"] >= 1
    # the requests in flight when the budget ended were finished and journaled: every token is in a record
    assert summary["tokens_recorded_share"] == 1.0 and summary["tokens_received_this_run"] > 0
    first = fake.requests
    # The stage is complete with what it finished; asked for the rest, the rerun continues the journaled chains.
    shutil.rmtree(iter_dir / "extended_responses")
    with FakeEndpoint(text=chain_answers(0.0)) as fake:
        proc = step(STEP2, workdir, *ARGS, "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (iter_dir / "extended_responses" / MARKER).is_file()
    assert first + fake.requests == clean_requests  # not one request redone
    assert outcome(iter_dir) == expected
    assert_no_request_redone(iter_dir / "extended_responses.journal.jsonl")


def test_capped_tokens_are_split_by_whether_the_request_already_repeats(tmp_path):
    """Of the tokens in requests cut at max_tokens, the summary counts apart those whose own text already repeats a
    10-gram: a larger cap would not have saved them."""
    completions = []  # (repeats, tokens) of each completion sent back

    def answer(payload):
        if "messages" in payload:
            return "Head one opens the text.\n\nHead two goes on.\n\nHead three is cut."
        repeats = int(hashlib.sha1(payload["prompt"].encode()).hexdigest(), 16) % 2 == 1
        text = (" round and round the river bends again" * 3 if repeats
                else " " + " ".join(f"w{i}" for i in range(12)))  # both cut mid-sentence
        completions.append((repeats, len(text.split())))
        return text

    iter_dir = prepare(tmp_path)
    with FakeEndpoint(text=answer, finish_reason=lambda p: "stop" if "messages" in p else "length") as fake:
        proc = step(STEP2, tmp_path, *ARGS, "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((iter_dir / "extended_responses.summary.json").read_text())
    capped = sum(tokens for _, tokens in completions)
    repeating = sum(tokens for repeats, tokens in completions if repeats)
    assert 0 < repeating < capped
    assert summary["tokens_capped_this_run"] == capped
    assert summary["tokens_capped_repeating_this_run"] == repeating
    assert summary["tokens_rejected_this_run"] == {"unfinished": capped}


def one_slow_request_per_row(slow_request: dict[int, int], slow: float):
    """Answers for chains that grow and pass: row 0's requests take 0.3 s, so it is accepted first; row r's
    `slow_request[r]`-th request takes `slow` s, its others 0.1 s. Returns the answer and the requests sent per row."""
    sent, lock = Counter(), threading.Lock()

    def answer(payload):
        text = payload["prompt"] if "prompt" in payload else payload["messages"][-1]["content"]
        row = int(re.search(r"harbour (\d+)", text).group(1))
        with lock:
            sent[row] += 1
            nth = sent[row]
        time.sleep(0.3 if row == 0 else slow if slow_request[row] == nth else 0.1)
        if "messages" in payload:
            return "Head one opens the text.\n\nHead two goes on.\n\nHead three is cut."
        return " " + " ".join(f"w{i}" for i in range(len(text.split()))) + " and it ends."

    return answer, sent


def test_a_time_budget_lets_chains_in_their_last_round_finish_and_records_them(tmp_path):
    """When the time budget ends step2, a chain with only its try's last round left still sends that round, and every
    chain that finishes while the stage winds down is in the dataset; chains further from their end stop after their
    current request, journaled. (Past finish_fraction, the method's rule, nothing more is sent and nothing more is
    kept.)"""
    # Row 0 is accepted first (6 requests of 0.3 s). When the budget ends the stage, each other row is in a slow
    # request (4 s): rows 1-2 in round 2's completion (its 4th request), rows 3-4 in round 3's chat (5th), rows 5-6
    # in round 1's chat (1st), row 7 in round 2's chat (3rd).
    answer, sent = one_slow_request_per_row({1: 4, 2: 4, 3: 5, 4: 5, 5: 1, 6: 1, 7: 3}, slow=4.0)
    iter_dir = prepare(tmp_path)
    with FakeEndpoint(text=answer) as fake:
        proc = step(STEP2, tmp_path, "--max_tries", "1", "--attempts", "1", "--no-drop_short", "--finish_fraction", "1",
                    "--workers", "8", "--time_budget", "0.001", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time budget" in proc.stdout
    summary = json.loads((iter_dir / "extended_responses.summary.json").read_text())
    rows = load_rows(iter_dir / "extended_responses")
    assert sorted(rows["prompt"]) == [ROWS[i]["prompt"] for i in range(5)]  # row 0 and the four with round 3 left
    assert summary["accepted"] == 5 and summary["chains_unfinished"] == 3
    assert dict(sent) == {**{i: 6 for i in range(5)}, 5: 1, 6: 1, 7: 3}  # the others stopped after their request
    assert summary["tokens_recorded_share"] == 1.0


def test_past_finish_fraction_what_finishes_in_flight_is_dropped_unless_keep_in_flight(tmp_path):
    """Past finish_fraction the stage waits for the requests in flight and sends no more. The method drops the chains
    those requests finish; with --keep_in_flight (cpu-demo) they are in the dataset, marked in the checkpoint, and
    counted in the summary. Chains that had requests left stop after their current one either way."""
    # Row 0 is accepted first (6 requests of 0.3 s): 1 of 8 rows is past finish_fraction 0.1. Each other row is then
    # in a slow request (3 s): rows 1-2 in round 3's completion (their 6th and last), rows 3-4 in round 3's chat
    # (5th), rows 5-7 in round 1's chat (1st).
    for keep in (False, True):
        answer, sent = one_slow_request_per_row({1: 6, 2: 6, 3: 5, 4: 5, 5: 1, 6: 1, 7: 1}, slow=3.0)
        workdir = tmp_path / f"keep-{keep}"
        iter_dir = prepare(workdir)
        with FakeEndpoint(text=answer) as fake:
            proc = step(STEP2, workdir, "--max_tries", "1", "--attempts", "1", "--no-drop_short",
                        "--finish_fraction", "0.1", "--workers", "8", *(["--keep_in_flight"] if keep else []),
                        base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert dict(sent) == {**{i: 6 for i in range(3)}, 3: 5, 4: 5, 5: 1, 6: 1, 7: 1}  # nothing more sent
        rows = load_rows(iter_dir / "extended_responses")
        summary = json.loads((iter_dir / "extended_responses.summary.json").read_text())
        finished = checkpoint(iter_dir)
        if keep:
            assert sorted(rows["prompt"]) == [ROWS[i]["prompt"] for i in range(3)]
            assert summary["items_kept_while_stopping"] == 2 and summary["chains_unfinished"] == 5
            assert sorted(r["prompt"] for r in finished if r.get("wind_down")) == [ROWS[1]["prompt"], ROWS[2]["prompt"]]
            assert "kept the 2 that finished with the request they had in flight" in proc.stdout
        else:
            assert rows["prompt"] == [ROWS[0]["prompt"]]
            assert summary["items_kept_while_stopping"] == 0 and summary["chains_unfinished"] == 7
        assert summary["tokens_recorded_share"] == 1.0  # every finished request is journaled either way


def first_grown_texts(journal: Path) -> dict[tuple[str, int], str]:
    """(chain, try) -> the text after the first round that took the try past 1.2x the initial words."""
    initial, out = {}, {}
    for state in read_jsonl(journal):
        key, words = state["key"], count_words(state["text"])
        initial.setdefault(key, words)  # a chain's first record follows its first chat request: text untouched
        if state["prefix"] is None and words > 1.2 * initial[key]:
            out.setdefault((key, state["try"]), state["text"])
    return out


def test_stop_when_grown_ends_a_try_at_its_first_round_past_the_growth_and_survives_kill_9(tmp_path):
    """--stop_when_grown (not the method's): a try ends after the round that takes its text past 1.2x. With answers
    that depend only on the request, the same chains are accepted in the same try as under the method, each with
    the text it had after that round, in fewer requests; killed at random points and rerun, it keeps the same."""
    method_dir = prepare(tmp_path / "method")
    with FakeEndpoint(text=chain_answers(0.0)) as fake:
        proc = step(STEP2, tmp_path / "method", *ARGS, "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    method_requests = fake.requests
    grown_at = first_grown_texts(method_dir / "extended_responses.journal.jsonl")
    # under the method some kept texts grew again in a later round: stopping changes what is kept
    assert any(r["extended_response"] != grown_at[(r["key"], r["tries"] - 1)]
               for r in checkpoint(method_dir) if r["status"] == "accepted")

    grown_dir = prepare(tmp_path / "grown")
    with FakeEndpoint(text=chain_answers(0.0)) as fake:
        proc = step(STEP2, tmp_path / "grown", *ARGS, "--stop_when_grown", "--workers", "4", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = checkpoint(grown_dir)
    assert sorted((r["key"], r["status"], r["tries"]) for r in records) == outcome(method_dir)[1]
    accepted = [r for r in records if r["status"] == "accepted"]
    assert len(accepted) >= 4
    for r in accepted:
        assert r["extended_response"] == grown_at[(r["key"], r["tries"] - 1)]
    assert fake.requests < method_requests

    killed = tmp_path / "killed"
    prepare(killed)
    with FakeEndpoint(text=chain_answers(0.02)) as fake:
        kills = kill_9_at_random_points(killed, (*ARGS, "--stop_when_grown"), fake, times=4, rng=random.Random(5))
    assert kills >= 3
    assert outcome(killed / "results" / "iter_1") == outcome(grown_dir)
    assert_no_request_redone(killed / "results" / "iter_1" / "extended_responses.journal.jsonl")
