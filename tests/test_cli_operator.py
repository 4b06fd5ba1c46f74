"""Day-to-day CLI answers: listen says it listens only once bound and warns beyond loopback."""

from __future__ import annotations

import socket

from pipelines.cli import main
from pipelines.common.errors import ExitCode


def test_a_busy_port_is_an_error_before_any_claim_to_listen(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["listen", "--port", str(port), "--feed-dir", str(tmp_path / "feed")])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG
    assert f"cannot listen on 127.0.0.1:{port}" in err and "listening for MLLP" not in err
    assert "warning" not in err  # loopback: nothing to warn about


def test_binding_beyond_loopback_is_warned(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # the port is busy, so nothing ever listens beyond loopback here
        taken.listen()
        port = taken.getsockname()[1]
        args = ["listen", "--host", "0.0.0.0", "--port", str(port), "--feed-dir", str(tmp_path / "f")]
        code = main(args)
    err = " ".join(capsys.readouterr().err.split())
    assert code == ExitCode.CONFIG
    assert "warning: --host 0.0.0.0 accepts connections from other machines" in err
