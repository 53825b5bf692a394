"""The studio's first step from documents: `ownllm data from-docs` as a background job.

A teacher can take minutes per document, so the page starts the same command a person would type
(``ownllm data from-docs INPUTS --out RUNS/.docs/ID/docs.jsonl ...``) as a job of its own
(``ownllm.studio.jobs``, kind ``docs``) in ``RUNS/.docs/ID/``, polls it, and, once it is done, hands
the rows it wrote (and ``docs.text.jsonl`` with ``--also-text``) to step 1's "Check the data" and
"Create the run" as their inputs.
"""
from __future__ import annotations

import os
import re
import uuid

from pydantic import Field

from ownllm.config import request_model
from ownllm.data.from_docs import FromDocsConfig
from ownllm.rundir import read_json
from ownllm.studio import jobs
from ownllm.web.common import APIError

FOLDER = ".docs"  # under the runs folder; a dot name is never listed as a run
JOB_ID = re.compile(r"[0-9a-f]{12}")


# `ownllm data from-docs`'s choices the page offers, from the same dataclass as its flags
DocsRequest = request_model(FromDocsConfig, "DocsRequest",
                            only=("teacher", "teacher_model", "teacher_key_env", "per_chunk", "judge", "also_text", "model"),
                            extra={"inputs": (list[str], Field(min_length=1))})


def add_docs_routes(app, studio) -> None:
    """``POST /api/docs`` starts a job (paths and models checked against the studio's roots first);
    ``GET /api/docs/{id}`` is its state, report and inputs."""
    import asyncio

    @app.post("/api/docs")
    async def from_docs(req: DocsRequest):
        req.inputs = [studio.check_path(path, "inputs") for path in req.inputs]
        studio.check_model(req.model)
        if req.teacher and req.teacher.startswith(("http://", "https://")):
            if req.teacher.rstrip("/") not in {t.rstrip("/") for t in studio.teachers}:
                raise APIError(403, f"the teacher {req.teacher} was not named when the studio started; start it with "
                                    f"--teacher {req.teacher} to allow it", param="teacher", code="teacher_not_allowed")
        elif req.teacher:
            studio.check_model(req.teacher, "teacher")
        if req.teacher_key_env and req.teacher_key_env not in studio.teacher_key_envs:
            raise APIError(403, f"the variable {req.teacher_key_env} was not named when the studio started; start it "
                                f"with --teacher-key-env {req.teacher_key_env} to allow it", param="teacher_key_env",
                           code="teacher_key_env_not_allowed")
        await asyncio.to_thread(studio.refuse_if_many_jobs)
        return await asyncio.to_thread(start_docs, studio.runs, req, studio.job_memory)

    @app.get("/api/docs/{job_id}")
    async def docs_job(job_id: str):
        return await asyncio.to_thread(docs_view, studio.runs, job_id)


def docs_argv(out: str, req: DocsRequest) -> list[str]:
    """The `ownllm data from-docs` command line for the page's choices."""
    values = {k: v for k, v in req.model_dump(exclude={"inputs"}).items() if v is not None and v != "" and v is not False}
    FromDocsConfig(**values).validate()  # every mistake now, as a 400, not in the job's log
    argv = ["data", "from-docs", "--out", out]
    for key, value in values.items():
        argv += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
    return argv + ["--", *req.inputs]  # after "--" an input named like an option (--help, --teacher=...) is a file


def start_docs(runs: str, req: DocsRequest, memory: int | None = None) -> dict:
    job_id = uuid.uuid4().hex[:12]
    folder = os.path.join(runs, FOLDER, job_id)
    argv = docs_argv(os.path.join(folder, "docs.jsonl"), req)
    os.makedirs(folder)
    jobs.start(folder, "docs", argv, memory=memory)
    return docs_view(runs, job_id)


def docs_view(runs: str, job_id: str) -> dict:
    """The job's state and log tail; once it is done, its report and the files step 1 takes as inputs."""
    if not JOB_ID.fullmatch(job_id):
        raise APIError(404, f"no documents job '{job_id}'", kind="not_found_error")
    folder = os.path.join(runs, FOLDER, job_id)
    job = jobs.state(folder, "docs")
    if job is None:
        raise APIError(404, f"no documents job '{job_id}'", kind="not_found_error")
    view = {"id": job_id, "job": job, "report": None, "inputs": []}
    report = read_json(os.path.join(folder, "docs.report.json"))
    # a teacher that gave nothing usable fails the job, yet the documents' own FAQ rows are written
    if report is not None and job["state"] in ("done", "failed"):
        for t in [report.get("teacher")] if report.get("teacher") else []:
            t.pop("examples", None)  # the page shows counts; the examples are in the report file
        view["report"] = report
        view["inputs"] = [p for p in (report.get("out"), report.get("text_out")) if p and os.path.exists(p)]
    return view
