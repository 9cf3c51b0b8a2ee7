"""The service's log lines (cluster/runtime/log_setup.py): timestamp, level, part, instance and
request on every line, as text or JSON; INFO lines get through although the root logger is at
Python's WARNING (as in a Ray worker); set up twice, a process prints each line once."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from cluster.runtime.log_setup import PACKAGES, LogConfig, bind_request, configure_logging

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) (\w+)\[([\w-]+)\] (\S+) "
    r"([\w.]+): (.*)$"
)


@pytest.fixture(autouse=True)
def our_loggers():
    saved = {n: logging.getLogger(n) for n in PACKAGES}
    state = {n: (list(lg.handlers), lg.level, lg.propagate) for n, lg in saved.items()}
    root = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)  # as in a Ray worker
    yield
    logging.getLogger().setLevel(root)
    for name, (handlers, level, propagate) in state.items():
        lg = saved[name]
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_text_lines_say_when_what_where_and_which_request(capsys):
    configure_logging(LogConfig(), "ingress", "ab12cd34ef56")
    configure_logging(LogConfig(), "ingress", "ab12cd34ef56")  # again: still one line each
    log = logging.getLogger("serve_app.ingress")

    async def request(rid: str) -> None:
        bind_request(rid)
        await asyncio.sleep(0)
        log.info("serving")

    async def main() -> None:
        log.info("ingress up")  # before any request: "-"
        await asyncio.gather(request("cmpl-a"), request("cmpl-b"))  # a task each
        log.info("after")

    asyncio.run(main())
    logging.getLogger("cluster.runtime.fleet").warning("replica %s removed", "replica-1")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5, lines
    parsed = [TEXT_LINE.match(line).groups() for line in lines]
    assert parsed[0] == ("INFO", "ingress", "ab12cd34ef56", "-", "serve_app.ingress", "ingress up")
    assert {p[3] for p in parsed[1:3]} == {"cmpl-a", "cmpl-b"}
    assert parsed[3][3] == "-"  # the requests' tasks did not leak their ids
    assert parsed[4][0] == "WARNING" and parsed[4][5] == "replica replica-1 removed"


def test_json_lines_with_an_exception_and_an_explicit_request(capsys):
    configure_logging(LogConfig(format="json"), "replica", "replica-0")
    log = logging.getLogger("cluster.runtime.replica")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("engine failed", extra={"request_id": "cmpl-x"})
    logging.getLogger("vllm.engine").warning("not ours")  # other packages are left alone
    (line,) = capsys.readouterr().err.splitlines()
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["msg"] == "engine failed"
    assert (out["component"], out["replica"], out["request_id"]) == (
        "replica",
        "replica-0",
        "cmpl-x",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["ts"])
    assert "ValueError: boom" in out["exc"]


def test_level_and_bad_settings(capsys):
    configure_logging(LogConfig(level="WARNING"), "scheduler", "scheduler")
    logging.getLogger("cluster.runtime.scheduler_actor").info("quiet")
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="format"):
        LogConfig(format="xml")
    with pytest.raises(ValueError, match="level"):
        LogConfig(level="LOUD")
