"""`ownllm studio`: the whole flow in a web page — data → plan → train → report and chat → export.

Every action calls what the CLI calls: ``plan`` in the server, ``prepare_dataset`` in a process of
its own (``ownllm.studio.prepare``), and ``ownllm train|eval|export`` as background jobs
(``ownllm.studio.jobs``) that outlive the page and the server; the last two are stopped with a
message past ``--job-memory`` (``ownllm.studio.memory``). State lives in the run directories under
``--runs`` (default ``runs/``), so runs made in a terminal show up here and the other way round.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from typing import Literal
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ownllm.config import request_fields, request_model
from ownllm.data.prepare import PrepareConfig
from ownllm.errors import OwnLLMError
from ownllm.evaluation.evaluate import EvalConfig
from ownllm.export.export import ExportConfig
from ownllm.training.config import TrainConfig
from ownllm.training.tune import TuneConfig
from ownllm.web.common import APIError, Guard, add_page, install_errors_and_guard, is_loopback, key_matches
from ownllm.web.generation_queue import GenerationQueue, limit_malloc_arenas
from ownllm.studio import jobs
from ownllm.studio.docs import add_docs_routes
from ownllm.studio.prepare import Preparer
from ownllm.rundir import RunDir
from ownllm.studio.runs import read_metrics, run_view, training_state

log = logging.getLogger("ownllm.studio")
STATIC = os.path.join(os.path.dirname(__file__), "static")
STATIC_FILES = ("studio.js", "studio.css")
RUN_NAME = re.compile(r"\w[\w.\-]{0,63}")  # \w includes Chinese characters
MAX_UPLOAD = 1 << 30
UPLOAD_QUOTA = 4 << 30           # all uploads kept at once (they are copied into a run when it is prepared)
UPLOAD_FILES = 200
UPLOAD_KEEP_SECONDS = 24 * 3600  # older uploads are removed when the next one arrives
MAX_BACKGROUND_JOBS = 2          # eval, export and documents jobs at once, across runs: each loads a model
MAX_JSON = 1 << 20  # every request but an upload is a small JSON body
DOWNLOADABLE = ("export", "eval", "data")  # folders of a run the page may download from
DOWNLOAD_TOKEN_SECONDS = 60
CHAT_MAX_TOKENS = 512  # per answer of the chat pair: a comparison, not a writing tool
CHAT_QUEUE = 4         # chat pairs that may wait for the one slot; more get 429


# -- requests ----------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The stages' own dataclasses make the requests of the data, plan and train steps: the same fields,
# defaults and checks (``validate()``) as `ownllm data prepare`, `ownllm plan` and `ownllm train`.
DATA_FIELDS = ("format", "columns", "dedup", "pii", "system", "model", "max_seq_len")
PLAN_FIELDS = ("model", "method", "time_budget", "epochs", "protect")
TRAIN_FIELDS = PLAN_FIELDS + ("max_steps", "lr", "logging_steps", "save_steps")
STUDIO_DEFAULTS = {"time_budget": "3h"}  # the studio plans for the three hours the guide promises
DataOptions = request_model(PrepareConfig, "DataOptions", only=DATA_FIELDS,
                            extra={"inputs": (list[str], Field(min_length=1))})
NewRun = request_model(PrepareConfig, "NewRun", only=DATA_FIELDS,
                       extra={"inputs": (list[str], Field(min_length=1)), "name": (str, ...)})
PlanRequest = request_model(TrainConfig, "PlanRequest", only=PLAN_FIELDS, defaults=STUDIO_DEFAULTS)
TrainRequest = request_model(TrainConfig, "TrainRequest", only=TRAIN_FIELDS, defaults=STUDIO_DEFAULTS)
# the plan step's "tune automatically": `ownllm tune`, the training choices plus TuneConfig's number of trials
TuneRequest = request_model(TrainConfig, "TuneRequest", only=TRAIN_FIELDS, defaults=STUDIO_DEFAULTS,
                            extra=request_fields(TuneConfig, only=("trials",)))


EvalRequest = request_model(EvalConfig, "EvalRequest", only=("max_samples",))


class ChatRequest(_Body):
    message: str = Field(min_length=1, max_length=8000)
    system: str | None = None
    max_tokens: int = Field(128, ge=1, le=CHAT_MAX_TOKENS)


class FeedbackRequest(_Body):
    """What the person said about the tuned model's answer to one chat question (see ownllm.data.feedback)."""
    message: str = Field(min_length=1, max_length=8000)
    system: str | None = None
    answer: str = Field(max_length=64_000)
    label: Literal["good", "bad"] | None = None
    better: str | None = Field(None, min_length=1, max_length=16_000)


class LearnRequest(_Body):
    """A preference stage on the run's feedback (`ownllm train --resume RUN --data RUN/feedback.jsonl --method M`)."""
    # None: the best method for the feedback as it stands (training.preference.default_method: ORPO when better
    # answers or a good and a bad answer to one question make pairs, else KTO, which reads 👍/👎 alone)
    method: Literal["kto", "dpo", "orpo"] | None = None


class DownloadRequest(_Body):
    path: str = Field(min_length=1)


ExportRequest = request_model(ExportConfig, "ExportRequest", only=("format", "quant"))


# -- helpers -----------------------------------------------------------------------------------------
def _prepare_options(o) -> dict:
    """The request's PrepareConfig fields that were given (an empty text is not given)."""
    return {k: v for k, v in o.model_dump(exclude={"inputs", "name"}).items() if v not in (None, "")}


class Studio:
    """The runs folder and what the server holds in memory: chat models and a lock per action."""

    def __init__(self, runs: str, parallel_training: bool = False, data_roots: list[str] | None = None,
                 request_timeout: float = 120.0, teachers: list[str] | None = None,
                 teacher_key_envs: list[str] | None = None, job_memory: int | None = None):
        from ownllm.studio.memory import default_limit

        self.runs = os.path.abspath(runs)
        # resident bytes a job or a data preparation may use (studio.memory): --job-memory, else 80 % of RAM
        self.job_memory = job_memory or default_limit()
        self.preparer = Preparer(self.job_memory)  # the data doctor's warm worker process
        # teacher URLs and the variables holding their keys: only what the person starting the studio named,
        # so that a request cannot send documents, or $ANY_SECRET as a bearer token, to a host of its choosing
        self.teachers, self.teacher_key_envs = list(teachers or []), list(teacher_key_envs or [])
        self.parallel_training = parallel_training
        self.uploads = os.path.join(self.runs, ".uploads")
        # the folders whose files the page may name by path: the runs (uploads included) and --data-root
        self.roots = [os.path.realpath(r) for r in [self.runs, *(data_roots or [os.getcwd()])]]
        self.chat_models: dict = {}
        # the chat pair runs through the generation queue `serve` uses (queue, timeout, cancellation); one slot,
        # since base and tuned share the network when the run is an adapter
        self.chat_queue = GenerationQueue(max_concurrency=1, max_queue=CHAT_QUEUE, request_timeout=request_timeout)
        self.download_tokens: dict[str, tuple[str, str, float]] = {}  # token -> (run, file, expiry)
        self.start_lock = threading.Lock()

    def run_dir(self, name: str, must_exist: bool = True) -> str:
        if not RUN_NAME.fullmatch(name):
            raise APIError(400, f"'{name}' is not a run name: letters, digits, Chinese characters, - _ . "
                                "(up to 64, not starting with a dot)", param="name")
        path = os.path.join(self.runs, name)
        if must_exist and not os.path.isdir(path):
            raise APIError(404, f"no run '{name}' in {self.runs}", kind="not_found_error")
        return path

    def check_path(self, path: str, field: str) -> str:
        """``path`` if it lies under one of the allowed roots, else a 403 naming the flag that allows it:
        the page must not read any file on the machine for whoever reaches it."""
        real = os.path.realpath(os.path.expanduser(path))
        if not self._inside(real):
            raise APIError(403, f"{path} is outside the folders this studio may read ({', '.join(self.roots)}); "
                                "start it with --data-root FOLDER to allow another", param=field, code="path_not_allowed")
        if os.path.isdir(real):  # the readers walk folders: a link in one must not lead out of the roots
            for folder, _, names in os.walk(real):
                outside = next((n for n in names if not self._inside(os.path.realpath(os.path.join(folder, n)))), None)
                if outside:
                    raise APIError(403, f"{os.path.join(folder, outside)} links outside the folders this studio may "
                                        "read", param=field, code="path_not_allowed")
        return real  # what was checked is what is used: a symlink swapped afterwards cannot redirect it

    def refuse_if_many_jobs(self) -> None:
        """429 when MAX_BACKGROUND_JOBS evaluations, exports and documents jobs already run here."""
        from ownllm.studio.docs import FOLDER

        running = [(self.run_dir(n, False), k) for n in self.names() for k in ("eval", "export")]
        docs = os.path.join(self.runs, FOLDER)
        running += [(os.path.join(docs, j), "docs") for j in (os.listdir(docs) if os.path.isdir(docs) else [])]
        n = sum((jobs.state(folder, kind) or {}).get("state") == "running" for folder, kind in running)
        if n >= MAX_BACKGROUND_JOBS:
            raise APIError(429, f"{n} evaluation, export or documents jobs are running here; start this one when one "
                                "has finished", code="busy", kind="rate_limit_error", headers={"Retry-After": "30"})

    def _inside(self, real: str) -> bool:
        return any(real == r or real.startswith(r + os.sep) for r in self.roots)

    def check_model(self, name: str | None, field: str = "model") -> None:
        """A model given as a folder or file must lie under the roots too; registry aliases and hub ids pass."""
        if name and (name.startswith((".", "/", "~")) or os.path.exists(name)):
            self.check_path(name, field)

    def chat_models_for(self, run: str, key) -> tuple:
        """(tuned, base, same network?) for a run's chat, loaded once and kept until the run's model changes."""
        from ownllm.models.generation import OwnModel
        from ownllm.models.load import base_of, load_model

        if self.chat_models.get("key") != key:
            self.chat_models.clear()
            tuned = load_model(run, merge=False)  # one network: the base answers with the adapter switched off
            base = base_of(tuned, RunDir(run).config().get("model"))[0]
            self.chat_models.update(key=key, tuned=tuned, base=OwnModel(base, tuned.tokenizer, name="base"),
                                    same=base is tuned.model)
        m = self.chat_models
        return m["tuned"], m["base"], m["same"]

    def check_options(self, o: "DataOptions") -> None:
        """Every input under the roots (replaced by its real path, which is what gets read) and the model."""
        o.inputs = [self.check_path(path, "inputs") for path in o.inputs]
        self.check_model(o.model)

    def names(self) -> list[str]:
        if not os.path.isdir(self.runs):
            return []
        names = [n for n in os.listdir(self.runs) if RUN_NAME.fullmatch(n) and RunDir(self.run_dir(n, False)).is_run()]
        return sorted(names, key=lambda n: -os.path.getmtime(os.path.join(self.runs, n)))

    def training_elsewhere(self) -> str | None:
        """The name of a run training now (this studio's job or a terminal's), if any."""
        for name in self.names():
            if training_state(self.run_dir(name))["state"] == "running":
                return name
        return None


def models_view(studio: Studio, name: str | None) -> list[dict]:
    """Registry models with what fits this machine for the run's data (or a 1,000-row guess)."""
    from ownllm.models.registry import MODELS, is_available_here
    from ownllm.planning.profiles import this_machine
    from ownllm.planning.plan import plan

    examples, tpe = 1000, 256.0
    report = RunDir(studio.run_dir(name)).data_report() if name else None
    if report:
        examples, tpe = report["splits"]["train"], report["tokens"]["mean"] or 256.0
    machine = this_machine()
    out = []
    for spec in MODELS.values():
        p = plan(spec, machine, examples=examples, tokens_per_example=tpe, epochs=3)
        out.append({"alias": spec.alias, "params": spec.params, "licence": spec.licence, "note": spec.note,
                    "available": is_available_here(spec), "fits": p["recommendation"]["fits"],
                    "memory_gb": p["recommendation"].get("memory_gb"), "hours": p["recommendation"].get("hours"),
                    "method": p["recommendation"].get("method")})
    return out


def make_plan(studio: Studio, name: str, req) -> dict:
    """The plan stage on the run's prepared data, with the page's choices: writes the run's plan.json."""
    from ownllm.export.export import export_notes
    from ownllm.rundir import RunDir
    from ownllm.training.plan import plan_run

    run = RunDir(studio.run_dir(name))
    cfg = TrainConfig(**{k: v for k, v in req.model_dump().items() if v is not None}).validate()
    return {**plan_run(cfg, run, run).to_json(), "export_notes": export_notes(cfg.model)}


def train_argv(run: str, req) -> list[str]:
    """The `ownllm train` command line for the page's choices, or `ownllm tune`'s for a ``TuneRequest``
    (every mistake now, not in the job's log)."""
    values = {k: v for k, v in req.model_dump().items() if v not in (None, "")}
    trials = values.pop("trials", None)
    TrainConfig(data=run, out=run, **values).validate()
    tune = isinstance(req, TuneRequest)
    if tune:  # automatic tuning within the budget: trials, then the best becomes the run
        from ownllm.training.tune import require_limit

        TuneConfig(trials=trials).validate()
        require_limit(values.get("time_budget"), trials)
        values.update({"trials": trials} if trials else {})
    if "save_steps" in values:
        values["eval_steps"] = values["save_steps"]  # validate when it saves, so the best checkpoint is kept
    argv = ["tune" if tune else "train", "--data", run, "--out", run]
    for key, value in values.items():
        argv += ["--" + key.replace("_", "-"), f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def start_job(studio: Studio, name: str, kind: str, argv: list[str]) -> dict:
    """Start a job unless one of its kind runs for this run (or, for training, anywhere here)."""
    run = studio.run_dir(name)
    with studio.start_lock:
        if kind == "train":
            busy = studio.training_elsewhere()
            if busy == name or (busy and not studio.parallel_training):
                raise APIError(409, f"run '{busy}' is training now; stop it first (or start the studio with "
                                    "--parallel-training)", code="busy")
        elif (jobs.state(run, kind) or {}).get("state") == "running":
            raise APIError(409, f"an {kind} of '{name}' is running now", code="busy")
        else:
            studio.refuse_if_many_jobs()
        return jobs.start(run, kind, argv, memory=studio.job_memory)


def trained_run(studio: Studio, name: str) -> RunDir:
    """The run ``name``, or a 400 when it has no trained model yet (feedback and learning from it need one)."""
    run = RunDir(studio.run_dir(name))
    if run.trained_output() is None:
        raise APIError(400, f"run '{name}' has no trained model yet: train it first", code="not_trained")
    return run


def start_learning(studio: Studio, name: str, req: LearnRequest) -> dict:
    """Learn from the chat step's feedback: a preference stage of the run (`ownllm train --resume RUN --data
    RUN/feedback.jsonl --method M`), as a training job."""
    run = trained_run(studio, name)
    if not os.path.exists(run.feedback_jsonl) or not os.path.getsize(run.feedback_jsonl):
        raise APIError(400, f"run '{name}' has no feedback yet: judge some answers in the chat step first",
                       code="no_feedback")
    from ownllm.data.feedback import judged_rows
    from ownllm.training.preference import default_method

    method = req.method or default_method(judged_rows(run.feedback_jsonl))
    return start_job(studio, name, "train", ["train", "--resume", run.path, "--data", run.feedback_jsonl,
                                             "--method", method])


def save_feedback(studio: Studio, name: str, req: FeedbackRequest) -> dict:
    """The chat step's good / bad / better answer, appended to the run's feedback.jsonl with the question as
    it was asked (the system prompt the chat used: the page's, else the run's)."""
    from ownllm.data.feedback import Feedback, model_id, record
    from ownllm.errors import DataError

    run = trained_run(studio, name)
    system = req.system or run.system_prompt()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": req.message}]
    try:
        record(run.feedback_jsonl, Feedback(messages=messages, answer=req.answer, label=req.label, better=req.better,
                                            model=model_id(run.path), source="studio"))
    except DataError as e:
        raise APIError(400, str(e), param="feedback") from e
    with open(run.feedback_jsonl, encoding="utf-8") as f:
        return {"saved": True, "rows": sum(1 for line in f if line.strip())}


def chat_pair_work(studio: Studio, name: str, req: ChatRequest):
    """The generation for one studio chat: the same question to the base model, then the tuned one
    (greedy, so answers are comparable), run in ``studio.chat_queue`` as ``serve`` runs its requests.
    It yields ``(which, text)`` pieces; ``stats[which]`` gets each answer's token counts.

    Without a system prompt from the page, the one the run was trained with (``--system``) is used.
    """
    from contextlib import nullcontext

    run = studio.run_dir(name)
    result = RunDir(run).trained_output()
    if result is None:
        raise APIError(400, f"run '{name}' has no trained model yet: train it first", code="not_trained")
    system = req.system or RunDir(run).system_prompt()
    key = (run, os.path.getmtime(result))

    def work(cancel, stats):
        tuned, base, same_network = studio.chat_models_for(run, key)
        settings = dict(max_new_tokens=req.max_tokens, temperature=0, system_prompt=system or None)
        for which, model in (("base", base), ("tuned", tuned)):
            if cancel.is_set():
                return
            stats[which] = {}
            # base and tuned may be one network with the adapter switched off: the queue's single slot
            # means no other chat runs on it meanwhile
            with tuned.model.disable_adapter() if which == "base" and same_network else nullcontext():
                for piece in model.stream(req.message, chat=True, cancel=cancel, stats=stats[which], **settings):
                    yield which, piece

    return work


def download_path(studio: Studio, name: str, rel: str) -> str:
    run = RunDir(os.path.realpath(studio.run_dir(name)))
    path = os.path.realpath(run.entry(rel))
    inside = any(path.startswith(run.entry(folder) + os.sep) for folder in DOWNLOADABLE)
    if not inside or not os.path.isfile(path):
        raise APIError(404, f"no downloadable file '{rel}' in run '{name}' (export/, eval/ and data/ only)",
                       kind="not_found_error")
    return path


async def save_upload(studio: Studio, request: Request) -> dict:
    from urllib.parse import unquote

    given = os.path.basename(unquote(request.headers.get("x-filename", "")).replace("\\", "/"))
    if not given or given.startswith("."):
        raise APIError(400, "send the file's name in the X-Filename header", param="X-Filename")
    os.makedirs(studio.uploads, exist_ok=True)
    room = _upload_room(studio.uploads)
    path = os.path.join(studio.uploads, f"{uuid.uuid4().hex[:8]}-{given}")
    size = 0
    try:
        with open(path, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise APIError(413, f"the file is larger than {MAX_UPLOAD >> 20} MB; give its path instead",
                                   param="file")
                if size > room:
                    raise APIError(507, f"the uploads folder holds its limit ({UPLOAD_QUOTA >> 20} MB); prepare a run "
                                        "from the files sent, or give paths instead", param="file",
                                   code="upload_quota", kind="server_error")
                f.write(chunk)
    except BaseException:
        os.remove(path)
        raise
    return {"path": path, "name": given, "bytes": size}


DOWNLOAD_ROUTE = re.compile(r"/api/runs/[^/]+/download")


def _upload_room(folder: str) -> int:
    """Bytes the next upload may take: uploads older than a day are removed first (a prepared run holds its
    own copy); past UPLOAD_FILES files or the quota, a 507."""
    now, kept, used = time.time(), 0, 0
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            if now - st.st_mtime > UPLOAD_KEEP_SECONDS:
                os.remove(entry.path)
            else:
                kept, used = kept + 1, used + st.st_size
    if kept >= UPLOAD_FILES or used >= UPLOAD_QUOTA:
        raise APIError(507, f"the uploads folder holds its limit ({UPLOAD_FILES} files, {UPLOAD_QUOTA >> 20} MB); "
                            "files older than a day are removed, or give paths instead", param="file",
                       code="upload_quota", kind="server_error")
    return UPLOAD_QUOTA - used


def _open_path(path: str) -> bool:
    """Paths the key check leaves to the route: the page, and downloads (which take a token or the key) —
    that route exactly: a run named "download" (``/api/runs/download``) is a run, behind the key."""
    return not path.startswith("/api/") or DOWNLOAD_ROUTE.fullmatch(path) is not None


# -- the app ------------------------------------------------------------------------------------------
def create_app(studio: Studio, api_key: str | None = None, host: str = "127.0.0.1",
               allowed_hosts: tuple[str, ...] = (), body_timeout: float = 30.0) -> FastAPI:
    app = FastAPI(title="ownllm studio", docs_url=None, redoc_url=None, openapi_url=None)
    install_errors_and_guard(app, Guard(bound_host=host, allowed_hosts=allowed_hosts, api_key=api_key,
                                        is_open=_open_path, max_body=MAX_JSON, upload_paths=("/api/upload",),
                                        body_timeout=body_timeout))

    @app.exception_handler(OwnLLMError)
    async def _mistake(request, exc: OwnLLMError):  # a person's mistake (bad file, flag, model): a 400 naming it
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("studio request failed", exc_info=exc)
        err = APIError(500, f"the studio failed: {type(exc).__name__}: {exc}", kind="server_error")
        return JSONResponse(err.body(), status_code=500)

    add_page(app, STATIC, STATIC_FILES)

    _add_setup_routes(app, studio)
    _add_run_routes(app, studio)
    _add_job_routes(app, studio)
    _add_download_routes(app, studio, api_key)
    return app


def _add_setup_routes(app: FastAPI, studio: Studio) -> None:
    """What the page asks before a run exists: the machine, the models, uploads, the data doctor, documents."""

    @app.get("/api/info")
    async def info():
        from ownllm import __version__
        from ownllm.training.config import METHODS, PREFERENCE_METHODS, PROTECTION_LEVELS
        from ownllm.export.export import FORMATS
        from ownllm.export.gguf import QUANTS
        from ownllm.planning.hardware import detect

        return {"version": __version__, "runs": studio.runs, "machine": detect().as_dict(), "methods": [m for m in METHODS if m not in PREFERENCE_METHODS], "protection": list(PROTECTION_LEVELS),
                "formats": list(FORMATS), "quants": list(QUANTS), "parallel_training": studio.parallel_training}

    @app.get("/api/models")
    async def models(run: str | None = None):
        return {"models": await asyncio.to_thread(models_view, studio, run)}

    @app.post("/api/upload")
    async def upload(request: Request):
        return await save_upload(studio, request)

    @app.post("/api/data/inspect")
    async def inspect(req: DataOptions):
        studio.check_options(req)
        report = await asyncio.to_thread(studio.preparer.prepare, req.inputs, None, _prepare_options(req))
        return {"report": report}

    add_docs_routes(app, studio)


def _add_run_routes(app: FastAPI, studio: Studio) -> None:
    """The runs: list, create (the prepare stage), show, metrics, and the plan stage."""

    @app.get("/api/runs")
    async def runs():
        return {"runs": [{"name": n, "training": training_state(studio.run_dir(n))["state"]} for n in studio.names()]}

    @app.post("/api/runs")
    async def new_run(req: NewRun):
        studio.check_options(req)
        run = studio.run_dir(req.name, must_exist=False)
        if os.path.exists(run):
            raise APIError(409, f"a run named '{req.name}' exists already: pick another name", param="name")
        await asyncio.to_thread(studio.preparer.prepare, req.inputs, run, _prepare_options(req))
        return run_view(studio.run_dir(req.name), req.name)

    @app.get("/api/runs/{name}")
    async def get_run(name: str):
        return await asyncio.to_thread(run_view, studio.run_dir(name), name)

    @app.get("/api/runs/{name}/metrics")
    async def metrics(name: str, since: int = 0):
        run = studio.run_dir(name)
        return {"since": since, "rows": read_metrics(run, since)}

    @app.post("/api/runs/{name}/plan")
    async def plan_run(name: str, req: PlanRequest):
        studio.check_model(req.model)
        return await asyncio.to_thread(make_plan, studio, name, req)


def _add_job_routes(app: FastAPI, studio: Studio) -> None:
    """What runs in the background or generates: train, stop, resume, evaluate, export; the chat pair."""

    @app.post("/api/runs/{name}/train")
    async def train(name: str, req: TrainRequest):
        return await start_training(name, req)

    @app.post("/api/runs/{name}/tune")
    async def tune(name: str, req: TuneRequest):
        return await start_training(name, req)  # `ownllm tune`: a training job that runs trials

    async def start_training(name: str, req):
        studio.check_model(req.model)
        run = studio.run_dir(name)
        if not RunDir(run).is_prepared():
            raise APIError(400, f"run '{name}' has no prepared data (step 1)", code="no_data")
        state = training_state(run)
        if state["checkpoints"] or RunDir(run).summary() is not None:
            raise APIError(409, f"run '{name}' has been trained already; resume it, or create a new run (step 1) "
                                "to train again from the start — its checkpoints are kept", code="trained")
        argv = await asyncio.to_thread(train_argv, run, req)
        return await asyncio.to_thread(start_job, studio, name, "train", argv)

    @app.post("/api/runs/{name}/stop")
    async def stop(name: str):
        state = training_state(studio.run_dir(name))
        if state["state"] != "running":
            raise APIError(409, f"run '{name}' is not training", code="not_running")
        jobs.stop(state["pid"], state["own_session"])
        return {"stopping": True, "pid": state["pid"]}

    @app.post("/api/runs/{name}/resume")
    async def resume(name: str):
        run = studio.run_dir(name)
        if not training_state(run)["resumable"]:
            raise APIError(409, f"run '{name}' has no checkpoint to resume from, or is training", code="not_resumable")
        return await asyncio.to_thread(start_job, studio, name, "train", ["train", "--resume", run])

    @app.post("/api/runs/{name}/eval")
    async def evaluate(name: str, req: EvalRequest):
        EvalConfig(**req.model_dump()).validate()  # a 400 now, not in the job's log
        run = studio.run_dir(name)
        argv = ["eval", run] + (["--max-samples", str(req.max_samples)] if req.max_samples else [])
        return await asyncio.to_thread(start_job, studio, name, "eval", argv)

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, req: ChatRequest, request: Request):
        work = await asyncio.to_thread(chat_pair_work, studio, name, req)
        started = time.monotonic()
        pieces, stats, _ = await studio.chat_queue.collect(work, request)
        answers = {"base": "", "tuned": ""}
        for which, piece in pieces:
            answers[which] += piece
        return {**answers, "seconds": round(time.monotonic() - started, 2),
                "finish": {which: (stats.get(which) or {}).get("finish_reason") for which in answers}}

    @app.post("/api/runs/{name}/feedback")
    async def feedback(name: str, req: FeedbackRequest):
        return await asyncio.to_thread(save_feedback, studio, name, req)

    @app.post("/api/runs/{name}/learn")
    async def learn(name: str, req: LearnRequest):
        return await asyncio.to_thread(start_learning, studio, name, req)

    @app.post("/api/runs/{name}/export")
    async def export(name: str, req: ExportRequest):
        from ownllm.export.export import FORMATS
        from ownllm.export.gguf import QUANTS

        if req.format not in FORMATS or req.quant not in QUANTS:
            raise APIError(400, f"format must be one of {', '.join(FORMATS)} and quant one of {', '.join(QUANTS)}",
                           param="format")
        run = studio.run_dir(name)
        argv = ["export", run, "--format", req.format, "--overwrite"] + (
            ["--quant", req.quant] if req.format == "gguf" else [])
        return await asyncio.to_thread(start_job, studio, name, "export", argv)


def _add_download_routes(app: FastAPI, studio: Studio, api_key: str | None) -> None:
    """A run's files, by a one-use token (a link cannot send the key) or the key."""

    @app.post("/api/runs/{name}/download-token")
    async def download_token(name: str, req: DownloadRequest):
        download_path(studio, name, req.path)  # 404 now for a file that cannot be downloaded
        token, now = secrets.token_urlsafe(18), time.monotonic()
        for old in [t for t, (_, _, expiry) in studio.download_tokens.items() if expiry < now]:
            del studio.download_tokens[old]
        studio.download_tokens[token] = (name, req.path, now + DOWNLOAD_TOKEN_SECONDS)
        query = urlencode({"path": req.path, "token": token})
        return {"url": f"/api/runs/{quote(name)}/download?{query}", "expires_in": DOWNLOAD_TOKEN_SECONDS}

    @app.get("/api/runs/{name}/download")
    async def download(name: str, path: str, request: Request, token: str | None = None):
        # a plain link streams the file to disk (GB for a GGUF or merged export): with a key set, the link
        # carries a one-file token that lasts a minute, since a link cannot send the Authorization header
        granted = studio.download_tokens.get(token) if token else None
        valid = bool(granted) and granted[:2] == (name, path) and granted[2] > time.monotonic()
        if valid:
            del studio.download_tokens[token]  # one use
        if api_key and not valid and not key_matches(request.headers.get("authorization", ""), api_key):
            raise APIError(401, "missing or expired download token (ask the page again) or API key",
                           code="invalid_api_key")
        full = download_path(studio, name, path)
        return FileResponse(full, filename=os.path.basename(full), content_disposition_type="attachment",
                            headers={"X-Content-Type-Options": "nosniff"})


def network_key(host: str, api_key: str | None) -> tuple[str | None, str | None]:
    """(the key the studio requires, the key made for this start or None). A studio reachable from the network
    reads files and starts jobs: without a key of the person's own, it makes one (as Jupyter does)."""
    if api_key or is_loopback(host):
        return api_key, None
    made = secrets.token_urlsafe(24)
    return made, made


def studio(runs: str = "runs", host: str = "127.0.0.1", port: int = 7860, api_key: str | None = None,
           parallel_training: bool = False, data_roots: list[str] | None = None,
           allowed_hosts: tuple[str, ...] = (), request_timeout: float = 120.0, teachers: list[str] | None = None,
           teacher_key_envs: list[str] | None = None, limits=None, job_memory: int | None = None) -> None:
    """Serve the studio until Ctrl-C (``limits``: a ``web.settings.ConnectionLimits``). Training jobs go on
    when it stops."""
    from ownllm.web.server import run_server
    from ownllm.web.settings import ConnectionLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    api_key, made = network_key(host, api_key)
    print(f"ownllm studio at http://{shown}:{port}/ (runs in {os.path.abspath(runs)})"
          f"{'; API key required' if api_key else ''}. Ctrl-C stops the page; training jobs go on.", flush=True)
    if made:
        print(f"It listens on {host}, so it needs a key, made for this start: open http://{shown}:{port}/#key={made} "
              "(the page keeps it for the tab; set OWNLLM_API_KEY to choose your own).", flush=True)
    limit_malloc_arenas()
    limits = limits or ConnectionLimits()
    app = create_app(Studio(runs, parallel_training, data_roots, request_timeout, teachers, teacher_key_envs,
                            job_memory),
                     api_key, host=host, allowed_hosts=allowed_hosts, body_timeout=limits.body_timeout)
    run_server(app, host, port, limits)
