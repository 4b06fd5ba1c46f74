"""Partial manifests (allowPartialManifests): download the files a running job lists while polling on.

The Bulk Data IG (3.0) lets a server answer a status request with 202 and a manifest of the files ready
so far; that manifest never changes afterwards except to gain a `link` of relation `next` to a further
manifest, which may itself be a 202 (still running) and gain its own `next` later. So the client polls
one URL at a time, the *tail*: the status URL first, then each `next` page as it appears. Each page's
files are planned once, the first time the page is seen (a repeated answer can only add the link), and
handed to the download threads at once. The export is listed in full when a page answers 200 without a
`next` link. A server that ignores the parameter answers 202 without a body and then one 200 manifest,
which the same loop handles. The tail, whether its files are planned and each file's status are in the
state file, so a crash resumes polling the same page and fetches no finished file again.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from pipelines.export.client import BulkClient, Manifest, PollWaits, parse_manifest
from pipelines.export.display import Display
from pipelines.export.files import Fetcher, plan_files
from pipelines.export.options import ExportOptions
from pipelines.export.state import ExportState
from pipelines.export.web import RemoteError


def export_while_running(
    options: ExportOptions, state: ExportState, client: BulkClient, fetcher: Fetcher, display: Display
) -> Manifest:
    """Poll the job's tail page and download each page's files as they come; returns the first page."""
    job = state.job
    assert job is not None
    with state.lock:
        job.setdefault("tail", job["status_url"])
        job.setdefault("tail_planned", False)
        job.setdefault("pages", 0)
        job.setdefault("listed", False)
    futures: list[Future[None]] = []
    fetcher.advance_files, fetcher.advance_bytes = display.downloads(0, 0)
    pool = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="export")

    def submit(files: list[dict[str, Any]]) -> None:
        if job["manifest"] is not None:
            fetcher.requires_token = job["manifest"].get("requiresAccessToken") is True
        todo = fetcher.todo(files)
        display.grow(len(files), len(files) - len(todo))
        futures.extend(pool.submit(fetcher.fetch, f) for f in todo)

    try:
        if job["manifest"] is not None:
            submit(job["files"])  # planned before a crash: what is not finished is fetched now
        waits = PollWaits(client)
        while not job["listed"]:
            _raise_failed(futures)
            url = job["tail"]
            first = url == job["status_url"]
            needs_token = None if first else job["manifest"].get("requiresAccessToken") is True
            response = client.status(url, needs_token)
            answer = client.read_status(response, url, page=not first)
            page = answer.manifest
            if page is not None:
                with state.lock:
                    new: list[dict[str, Any]] = []
                    if not job["tail_planned"]:
                        if job["manifest"] is None:
                            job["manifest"] = page.raw  # transactionTime, request, requiresAccessToken
                        before = len(job["files"])
                        job["files"] = plan_files(page, job["files"])
                        new = job["files"][before:]
                        job["tail_planned"] = True
                        job["pages"] += 1
                    if page.next_url:
                        if job["pages"] >= options.max_pages:
                            raise RemoteError(
                                f"the export's manifest goes on past {options.max_pages} pages",
                                hint="the server's next links may loop; start a new export with --restart",
                            )
                        job["tail"], job["tail_planned"] = page.next_url, False
                    elif answer.kind == "done":
                        job["listed"] = True
                    state.save()  # planned files and the new tail are durable before any is fetched
                submit(new)
                if page.next_url or answer.kind == "done":
                    continue  # a new page to read at once, or the whole list is known
            if answer.kind == "running":
                display.job_progress(answer.progress)
            waits.sleep(answer, response)
        for future in futures:
            future.result()  # waits for the last downloads; a worker's exception surfaces here
    except BaseException:
        for future in futures:
            future.cancel()  # Ctrl-C or a failure: stop queued files; finished ones are already saved
        raise
    finally:
        pool.shutdown(wait=True)
    return parse_manifest(orjson.dumps(job["manifest"]), job["status_url"])


def _raise_failed(futures: list[Future[None]]) -> None:
    """A download thread that died (a bug, an interrupt) stops the export at the next poll."""
    for future in futures:
        if future.done() and not future.cancelled() and future.exception() is not None:
            future.result()
