"""A FastChat model worker on today's vLLM async engine, serving the base model and LoRA adapters by name.

FastChat 0.2.36's own vllm_worker no longer runs on vLLM 0.3x, so this worker speaks FastChat's worker protocol
(register and heart-beat with the controller; /worker_generate[_stream], /count_token, /model_details,
/worker_get_conv_template, /worker_get_status) over vLLM `AsyncLLM` engines. Each request is routed by the model
name it asks for. A request whose client goes away is aborted in the engine.

A request may carry `reject_early: {"prefix": TEXT, "meta_words": [...]}`: its text, after the prefix, is checked
whole by the method's response check. Every CHECK_EVERY tokens the worker asks whether the check will reject prefix
+ text whatever the rest of the request adds (`text.certain_rejection`); if so it ends the request there, with
finish_reason "rejected" and the text so far, and the engine does not generate the rest.

Adapters are served in one of two ways (--adapter-mode):
- lora: one engine, each adapter a `LoRARequest` (vLLM's multi-LoRA batching). The choice on GPU.
- merged: each adapter merged into a copy of the base weights, one engine per name. On CPU, an engine with LoRA
  enabled decoded at about half a merged copy's speed when this was built. The copies are made once
  per adapter (keyed by its content) in --merge-dir, and the KV-cache budget is shared between the engines. A copy
  is served in the engines' dtype. In bfloat16 its changed weights are rounded stochastically: a trained adapter
  moves most weights by less than half a bfloat16 step, so rounding to nearest would put them back where the base
  had them; rounded up or down with odds that keep their mean, the copy keeps the adapter's effect (bench/RESULTS.md,
  2026-12-02). In float32 it is the exact merge.
`auto` picks merged on CPU and lora elsewhere. With --no-base the base model's name is not served: merged, that is one
engine fewer (an iteration whose stages ask only the adapters); with lora, the engine is the base model's anyway.

The engines' dtype (--dtype auto): bfloat16, the base model's own, except on a CPU without native bfloat16 matrix
instructions (AVX512-BF16 or AMX), where vLLM falls back to plain torch matmuls and float32 is far faster.

Run: python -m self_lengthen.serve.worker --model-path DIR --lora gen_sft=DIR --lora ext_sft=DIR ...
"""
import argparse
import asyncio
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import requests
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastchat.constants import ErrorCode
from fastchat.conversation import Conversation, SeparatorStyle
from fastchat.serve.base_model_worker import BaseModelWorker

from ..chat_template import needs_special_tokens, template_spec
from ..devices import cpu_has_native_bfloat16
from ..io import model_dir_in_place
from ..text import TokenBounds, certain_rejection
from .auth import auth_headers, protect, read_key
from .cluster import ADAPTER_MODES
from .ports import port_in_use

log = logging.getLogger("self_lengthen.worker")
DEFAULT_BASE_NAME = "base"
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
CHECK_EVERY = 16  # tokens between two checks of a reject_early request


def lora_rank(adapter_dir: Path) -> int:
    return int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])


def stop_strings(params: dict) -> list[str]:
    stop = params.get("stop") or []
    return [stop] if isinstance(stop, str) else list(stop)


def sampling_params(params: dict, eos_ids: list[int]):
    """Translate FastChat's request fields into vLLM SamplingParams."""
    from vllm import SamplingParams

    temperature = float(params.get("temperature") if params.get("temperature") is not None else 1.0)
    top_p = float(params.get("top_p") if params.get("top_p") is not None else 1.0)
    top_k = int(params.get("top_k") or 0)
    if temperature <= 1e-5:  # greedy
        temperature, top_p, top_k = 0.0, 1.0, 0
    stop = stop_strings(params)
    ignore_eos = bool(params.get("ignore_eos") or False)
    stop_token_ids = set(params.get("stop_token_ids") or []) | set(eos_ids)
    if ignore_eos:  # generate to max_tokens: eos must not stop it under another name either
        stop_token_ids -= set(eos_ids)
    max_tokens = params.get("max_new_tokens")
    return SamplingParams(
        n=1,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k if top_k > 0 else 0,  # FastChat's -1 means off; vLLM's off is 0
        repetition_penalty=float(params.get("repetition_penalty") or 1.0),
        presence_penalty=float(params.get("presence_penalty") or 0.0),
        frequency_penalty=float(params.get("frequency_penalty") or 0.0),
        stop=stop,
        stop_token_ids=sorted(stop_token_ids),
        max_tokens=int(max_tokens) if max_tokens else None,
        min_tokens=int(params.get("min_tokens") or 0),
        ignore_eos=ignore_eos,
        seed=params.get("seed"),
        skip_special_tokens=True,
    )


DTYPES = ("auto", "bfloat16", "float16", "float32")


def engine_dtype(requested: str, on_cpu: bool, native_bfloat16: bool) -> str:
    """The dtype the engines run in. On a 2-core AVX2 CPU the default model decoded step2's mix at 15.2 tok/s in
    bfloat16 and 52.4 in float32 (bench/RESULTS.md, 2026-12-02, afternoon)."""
    if requested != "auto":
        return requested
    return "float32" if on_cpu and not native_bfloat16 else "bfloat16"


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on the CPU here."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def served_dtype(requested: str = "auto") -> str:
    """engine_dtype on this machine."""
    cpu = vllm_on_cpu()
    return engine_dtype(requested, cpu, cpu and cpu_has_native_bfloat16())


def engine_defaults(requested_dtype: str = "auto") -> dict:
    """What the worker gives each engine on this machine beside the user's settings (benchmarks build theirs alike):
    its dtype, and on CPU:
    - each prompt's prefill in one step. After a partial prefill, vLLM's model runner rewinds a seeded request's
      random generator past the token it sampled and discards; torch's CPU generator has no offset to rewind, so one
      seeded request split over two steps killed the engine for every request. Without chunking, vLLM raises a
      step's token budget to the model's length (bench/RESULTS.md, 2026-12-03: the cost).
    - no torch.compile (eager). vLLM's CPU engines compile without inductor, and the compiled model decoded step2's
      mix no faster (184.5 against 183.3 tok/s) while the engine took 33 s to build instead of 16 (bench/RESULTS.md,
      2026-12-05 morning): iteration 2 starts three."""
    cpu = {"enable_chunked_prefill": False, "enforce_eager": True} if vllm_on_cpu() else {}
    return {"dtype": served_dtype(requested_dtype), **cpu}


def copy_dtype(dtype: str) -> str:
    """A merged copy's weights: bfloat16 (rounded stochastically) for a bfloat16 or float16 engine, else the exact
    float32 merge."""
    return "bfloat16" if dtype in ("bfloat16", "float16") else "float32"


def round_stochastically(weights, generator):
    """float32 `weights` rounded to bfloat16 up or down, with the odds that keep each weight's expected value: the
    16 low bits of the float32 word that bfloat16 drops, plus a uniform random 16-bit number, carry into the kept
    bits exactly as often as those dropped bits are a share of one bfloat16 step."""
    import torch

    bits = weights.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, generator=generator)
    return ((bits + noise) & -(1 << 16)).view(torch.float32).to(torch.bfloat16)


def merged_kv_space(total_gib: int, engines: int) -> int:
    """Each merged engine's KV cache (GiB). A stage uses one engine at a time, so each gets a share of the budget
    but no less than 2 GiB (within the budget). The default model's cache holds about 46k tokens per GiB (30 layers x
    3 KV heads x 64 x 2 x 2 bytes a token): at 1 GiB, 32 step2 requests of about 2k tokens would not fit at once."""
    return max(total_gib // engines, min(total_gib, 2), 1)


def merged_model(base: Path, adapter: Path, merge_dir: Path, dtype: str = "bfloat16") -> Path:
    """`base` with `adapter` merged into its weights in float32, saved in `dtype` (bfloat16: rounded as the module's
    docstring says; float32: exact) once under `merge_dir` (keyed by the base path, the dtype and rounding, and the
    adapter's content)."""
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"merged copies are bfloat16 or float32, not {dtype}")
    kind = "bfloat16 stochastic" if dtype == "bfloat16" else "float32"
    digest = hashlib.sha256(f"{base.resolve()} {kind}".encode())  # another kind is not reused
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter / name).read_bytes())
    out = merge_dir / digest.hexdigest()[:16]
    if (out / "config.json").is_file():
        return out
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    log.info("merging %s into %s -> %s", adapter, base, out)
    with model_dir_in_place(out) as tmp:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        # Only a bfloat16 copy compares with the base's weights: a float32 one is the merge as it is.
        before = {n: w.clone() for n, w in model.state_dict().items()} if dtype == "bfloat16" else {}
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        if dtype == "bfloat16":
            # Seeded by the copy's key (base path, adapter content): made again, it is the same copy.
            generator = torch.Generator().manual_seed(int(digest.hexdigest()[:15], 16))
            with torch.no_grad():
                for name, weight in sorted(model.named_parameters()):
                    # The rest round to nearest, as the base's engine rounds them (a no-op for a bfloat16 base, not
                    # for a float32 one, where rounding them stochastically would serve a different model).
                    changed = not torch.equal(weight, before[name])
                    weight.data = round_stochastically(weight, generator) if changed else weight.to(torch.bfloat16)
        model.to(getattr(torch, dtype)).save_pretrained(tmp)
    return out


class VLLMWorker(BaseModelWorker):
    def __init__(self, engines: dict, tokenizer, *, controller_addr, worker_addr, model_path, base_name, adapters,
                 lora: bool, limit_worker_concurrency, context_len, key: str | None = None):
        """`engines` maps each served name (the base name, unless it is not served, then the adapters) to its
        engine. With `lora` the adapters are LoRARequests on the base model's engine; else each is a merged copy."""
        from vllm.lora.request import LoRARequest

        self._tokenizer = tokenizer
        super().__init__(
            controller_addr, worker_addr, uuid.uuid4().hex[:8], str(model_path),
            list(engines), limit_worker_concurrency,
        )
        self.tokenizer = tokenizer
        self.engines = engines
        self.context_len = context_len
        self.base_name = base_name
        self.loras = ({name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(adapters.items())}
                      if lora else {})
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.stats = {"requests": 0, "aborted": 0, "rejected_early": 0, "tokens_left_at_rejection": 0}
        self._background: set[asyncio.Task] = set()
        self.headers = auth_headers(key)

    # FastChat's registration and heart-beat, sending the cluster key.
    def register_to_controller(self):
        status = {"worker_name": self.worker_addr, "check_heart_beat": True, "worker_status": self.get_status(),
                  "multimodal": self.multimodal}
        r = requests.post(self.controller_addr + "/register_worker", json=status, headers=self.headers, timeout=30)
        if r.status_code != 200:
            raise requests.HTTPError(f"the controller answered HTTP {r.status_code} to our registration")

    def send_heart_beat(self):
        while True:
            beat = {"worker_name": self.worker_addr, "queue_length": self.get_queue_length()}
            try:
                r = requests.post(self.controller_addr + "/receive_heart_beat", json=beat, headers=self.headers,
                                  timeout=5)
                r.raise_for_status()
                known = r.json()["exist"]
                break
            except (requests.RequestException, ValueError, KeyError) as exc:
                log.error("heart-beat to %s failed: %s", self.controller_addr, exc)
                time.sleep(5)
        if not known:  # the controller restarted or dropped us
            self.register_to_controller()

    def make_conv_template(self, conv_template=None, model_path=None) -> Conversation:
        # Only a carrier for stop tokens; chat prompts are rendered from the chat template (see get_conv_template).
        return Conversation(name="hf_chat_template", system_template="{system_message}", roles=("user", "assistant"),
                            sep_style=SeparatorStyle.ADD_COLON_SINGLE, sep="\n",
                            stop_token_ids=[self._tokenizer.eos_token_id])

    def get_conv_template(self):
        c = self.conv
        conv = {"name": c.name, "system_template": c.system_template, "system_message": c.system_message,
                "roles": list(c.roles), "messages": [], "offset": 0, "sep_style": int(c.sep_style), "sep": c.sep,
                "sep2": None, "stop_str": None, "stop_token_ids": self.eos_ids}
        conv.update(template_spec(self.tokenizer))
        return {"conv": conv}

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=needs_special_tokens(self.tokenizer, prompt))

    def count_token(self, params):
        return {"count": len(self.prompt_ids(params["prompt"])), "error_code": 0}

    def _abort_later(self, engine, request_id: str):
        # Runs outside the (possibly cancelled) request scope, so the abort itself is not cancelled.
        task = asyncio.get_running_loop().create_task(engine.abort(request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @functools.cached_property
    def token_bounds(self) -> TokenBounds:
        """What one token can add to a text (for certain_rejection): read from the vocabulary once (0.2 s for 49k)."""
        return TokenBounds.of(self.tokenizer)

    def rejection_check(self, params: dict):
        """For a reject_early request: a function of (text so far, tokens so far) that returns the reason the
        response check will reject prefix + text however the request goes on, or None. None when not asked."""
        spec = params.get("reject_early")
        if spec is None:
            return None
        if not (isinstance(spec, dict) and isinstance(spec.get("prefix", ""), str)
                and all(isinstance(w, str) for w in spec.get("meta_words", []))):
            raise ValueError('reject_early must be {"prefix": text, "meta_words": [text, ...]}')
        prefix, meta_words = spec.get("prefix", ""), list(spec.get("meta_words", []))
        held_back = max(map(len, stop_strings(params)), default=1) - 1  # what a stop string completed later cuts
        max_tokens = int(params.get("max_new_tokens") or self.context_len)

        def check(text: str, tokens: int) -> str | None:
            reason = certain_rejection(prefix + text, max_tokens - tokens, self.token_bounds, held_back, meta_words)
            if reason:
                self.stats["rejected_early"] += 1
                self.stats["tokens_left_at_rejection"] += max_tokens - tokens
            return reason

        return check

    async def generate(self, params: dict):
        """Yield FastChat-style cumulative outputs for one request."""
        from vllm.inputs import TokensPrompt

        model = params.get("model", self.base_name)
        if model not in self.engines:
            yield {"text": f"unknown model {model!r}; this worker serves {self.model_names}", "error_code": ErrorCode.INVALID_MODEL}
            return
        prompt = params["prompt"]
        ids = self.prompt_ids(prompt)
        request_id = uuid.uuid4().hex
        self.stats["requests"] += 1
        finished, finish = False, None
        engine = self.engines[model]
        try:
            check, next_check = self.rejection_check(params), CHECK_EVERY
            stream = engine.generate(TokensPrompt(prompt_token_ids=ids), sampling_params(params, self.eos_ids),
                                     request_id, lora_request=self.loras.get(model))
            async for out in stream:
                choice = out.outputs[0]
                tokens, finish = len(choice.token_ids), choice.finish_reason if out.finished else None
                if check and finish is None and tokens >= next_check:
                    next_check = tokens + CHECK_EVERY
                    if check(choice.text, tokens):
                        finish = "rejected"  # the finally below aborts the engine request
                yield {
                    "text": (prompt + choice.text) if params.get("echo") else choice.text,
                    "error_code": 0,
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": tokens,
                              "total_tokens": len(ids) + tokens},
                    "finish_reason": finish,
                }
                if finish == "rejected":
                    return
            finished = True
        except ValueError as exc:  # invalid sampling parameters and the like
            finished = True
            yield {"text": f"bad request: {exc}", "error_code": ErrorCode.PARAM_OUT_OF_RANGE}
        finally:
            if not finished:
                self._abort_later(engine, request_id)
                self.stats["aborted"] += finish != "rejected"  # counts the clients that went away

    async def generate_stream_bytes(self, params: dict):
        async for item in self.generate(params):
            yield json.dumps(item).encode() + b"\0"

    async def generate_once(self, params: dict, request: Request) -> dict:
        """Non-streaming: the last output, aborting the engine request if the client disconnects."""
        async def run():
            last = {"text": "", "error_code": 0}
            async for item in self.generate(params):
                last = item
            return last

        task = asyncio.ensure_future(run())
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                return {"text": "client disconnected", "error_code": ErrorCode.INTERNAL_ERROR}
        return task.result()


def build_app(worker: VLLMWorker) -> FastAPI:
    app = FastAPI()
    semaphore = asyncio.Semaphore(worker.limit_worker_concurrency)
    worker.semaphore = semaphore

    @app.post("/worker_generate_stream")
    async def generate_stream(request: Request):
        params = await request.json()
        await semaphore.acquire()
        background = BackgroundTasks()
        background.add_task(semaphore.release)
        return StreamingResponse(worker.generate_stream_bytes(params), background=background)

    @app.post("/worker_generate")
    async def generate(request: Request):
        params = await request.json()
        async with semaphore:
            return JSONResponse(await worker.generate_once(params, request))

    @app.post("/worker_get_status")
    async def get_status():
        return worker.get_status()

    @app.post("/count_token")
    async def count_token(request: Request):
        return worker.count_token(await request.json())

    @app.post("/worker_get_conv_template")
    async def get_conv():
        return worker.get_conv_template()

    @app.post("/model_details")
    async def model_details():
        return {"context_length": worker.context_len}

    @app.get("/worker_stats")
    async def stats():
        return dict(worker.stats, running=semaphore._value != worker.limit_worker_concurrency)

    return app


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="FastChat worker over vLLM with LoRA routing")
    p.add_argument("--model-path", required=True)
    p.add_argument("--base-name", default=DEFAULT_BASE_NAME, help="model name clients use for the base model")
    p.add_argument("--no-base", action="store_true",
                   help="serve only the adapters' names (merged: no engine for the base model)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=DIR", help="serve a PEFT adapter as NAME")
    p.add_argument("--adapter-mode", choices=ADAPTER_MODES, default="auto",
                   help="serve adapters as LoRA requests or as merged copies (auto: merged on CPU)")
    p.add_argument("--merge-dir", default=None, help="where merged copies are kept (merged mode)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=21002)
    p.add_argument("--worker-address", default=None, help="address the controller uses (default http://host:port)")
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="the engines' dtype (auto: bfloat16, or float32 on a CPU without native bfloat16)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--limit-worker-concurrency", type=int, default=1024)
    p.add_argument("--stats-interval", type=float, default=10.0,
                   help="seconds between each busy engine's throughput line in the log (0: none)")
    return p.parse_args(argv)


def resolve_adapter_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "merged" if vllm_on_cpu() else "lora"


async def serve(args, adapters: dict[str, Path]):
    common = engine_defaults(args.dtype)
    log.info("engines in %s", common["dtype"])
    common.update(tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                  gpu_memory_utilization=args.gpu_memory_utilization, tokenizer=args.model_path)
    if args.max_num_seqs:
        common["max_num_seqs"] = args.max_num_seqs
    mode = resolve_adapter_mode(args.adapter_mode) if adapters else "lora"
    if args.no_base and not adapters:
        raise SystemExit("worker: --no-base serves only adapters, and no --lora was given")
    if mode == "merged" and not args.merge_dir:
        raise SystemExit("worker: --merge-dir is needed to serve adapters merged (or pass --adapter-mode lora)")
    engines = {}
    try:
        await run_worker(args, adapters, mode, common, engines)
    finally:
        for engine in {id(e): e for e in engines.values()}.values():
            engine.shutdown()


async def run_worker(args, adapters: dict[str, Path], mode: str, common: dict, engines: dict):
    """Start the engines (into `engines`, so the caller can shut them down), then serve until SIGTERM."""
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    served_names = [*([] if args.no_base else [args.base_name]), *adapters]
    if mode == "merged":
        merged_dtype = copy_dtype(common["dtype"])
        models = {name: merged_model(Path(args.model_path), adapters[name], Path(args.merge_dir), merged_dtype)
                  if name in adapters else Path(args.model_path) for name in served_names}
        kv_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if kv_space:  # each engine's core process reads it when it starts
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(merged_kv_space(int(float(kv_space)), len(models)))
        for name, path in models.items():
            copy = name != args.base_name
            log.info("starting the engine for %s (%s)", name, path)
            engines[name] = AsyncLLM.from_engine_args(
                AsyncEngineArgs(model=str(path), **{**common, **({"dtype": merged_dtype} if copy else {})}))
    else:
        engine_kwargs = dict(model=args.model_path, **common)
        if adapters:
            max_rank = max(lora_rank(p) for p in adapters.values())
            engine_kwargs.update(enable_lora=True, max_loras=len(adapters),
                                 max_lora_rank=next(r for r in SUPPORTED_LORA_RANKS if r >= max_rank))
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs))
        engines.update({name: engine for name in served_names})
    if adapters:
        log.info("serving adapters as %s", "merged copies" if mode == "merged" else "LoRA requests")
    key = read_key()
    worker = VLLMWorker(
        engines, AutoTokenizer.from_pretrained(args.model_path), controller_addr=args.controller_address,
        worker_addr=args.worker_address or f"http://{args.host}:{args.port}", model_path=args.model_path,
        base_name=args.base_name, adapters=adapters, lora=mode == "lora",
        limit_worker_concurrency=args.limit_worker_concurrency,
        context_len=next(iter(engines.values())).model_config.max_model_len, key=key,
    )
    server = uvicorn.Server(uvicorn.Config(protect(build_app(worker), key), host=args.host, port=args.port,
                                           log_level="warning", timeout_graceful_shutdown=10))

    async def register_once_listening():
        while not server.started:
            await asyncio.sleep(0.1)
        while True:  # the controller may come up after us (another node)
            try:
                await asyncio.to_thread(worker.init_heart_beat)
                break
            except (requests.RequestException, AssertionError) as exc:
                log.warning("registration with %s failed (%s); retrying", worker.controller_addr, exc)
                await asyncio.sleep(2)
        log.info("registered %s as %s with %s", worker.model_names, worker.worker_addr, worker.controller_addr)

    registration = asyncio.create_task(register_once_listening())
    stats = asyncio.create_task(log_engine_stats(engines, args.stats_interval)) if args.stats_interval > 0 else None
    await server.serve()  # returns on SIGTERM or SIGINT
    registration.cancel()
    if stats:
        stats.cancel()


class _ServedNames(logging.Filter):
    """Puts the names an engine serves in front of vLLM's stats line, which names only the engine's index (000 for
    each of a CPU worker's engines)."""
    names = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.names and isinstance(record.msg, str):
            record.msg = f"[{self.names.replace('%', '%%')}] {record.msg}"
        return True


async def log_engine_stats(engines: dict, every: float) -> None:
    """Every `every` seconds, each busy engine's own stats line in this log, under the names it serves: prompt and
    generation tokens/s, requests running and waiting, KV cache use (vLLM's API server logs the same line; an idle
    engine's goes to debug). What a stage got of the engine, over time: bench/engine_load.py reads these lines."""
    served: dict[int, tuple] = {}
    for name, engine in engines.items():
        served.setdefault(id(engine), (engine, []))[1].append(name)
    tag = _ServedNames()
    logging.getLogger("vllm.v1.metrics.loggers").addFilter(tag)
    while True:
        await asyncio.sleep(every)
        for engine, names in served.values():
            tag.names = ",".join(names)
            try:
                await engine.do_log_stats()  # logs synchronously: no other coroutine runs until the line is out
            finally:
                tag.names = ""


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    adapters = {}
    for spec in args.lora:
        name, _, path = spec.partition("=")
        if not name or not (Path(path) / "adapter_config.json").is_file():
            raise SystemExit(f"worker: --lora {spec}: expected NAME=DIR with DIR/adapter_config.json")
        adapters[name] = Path(path).resolve()
    port_error = port_in_use(args.host, args.port)
    if port_error:
        raise SystemExit(f"worker: {port_error}")
    asyncio.run(serve(args, adapters))


if __name__ == "__main__":
    main()
