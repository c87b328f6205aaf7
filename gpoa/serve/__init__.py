"""``gpoa serve``: a local web page over :class:`~gpoa.predictor.GPOAPredictor`.

A reference pair (upload an image and its mask, or paint the mask on the image; several pairs for
k-shot), any number of targets (with their truth masks, optionally), and per target the mask, the
initial and the optimised prompts, ``present``, ``confidence`` and Dice/IoU; one zip of every mask and
prompt file. The page loads nothing from outside this server and works with no network.

- :mod:`gpoa.serve.workbench`: the uploads, references and results of one run, and every check of
  bad input (no HTTP);
- :mod:`gpoa.serve.app`: the page (``static/``) and the JSON API (Starlette);
- :class:`Server`: binds the address and runs uvicorn, in the foreground (:func:`serve`, the command)
  or in a background thread (``with Server(cfg) as server: ... server.url``); it deletes the run's
  folder when it stops.

Needs the ``app`` extra (``pip install 'gpoa[app]'``; ``make setup`` installs it).
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

from gpoa.config import Config
from gpoa.errors import UsageError


class Server:
    """One server run: a :class:`~gpoa.serve.workbench.Workbench` (models loaded) in a fresh temporary
    folder, a socket listening on ``cfg.serve.host``:``cfg.serve.port`` and uvicorn. :meth:`run` serves in
    the foreground until Ctrl-C or SIGTERM; ``with Server(...) as server:`` serves from a background thread
    (tests, benchmarks, notebooks). Either way the folder is deleted when the server stops.

    A config, policy or model that cannot be used, a missing ``app`` extra, or an address that cannot be
    had raise UsageError (and leave no folder behind).
    """

    def __init__(self, cfg: Config, policy: Optional[Union[str, Path]] = None, device: str = "auto"):
        try:
            import uvicorn

            from gpoa.serve.app import create_app
        except ImportError as exc:
            raise UsageError(f"gpoa serve needs the web packages of the 'app' extra ({exc.name} is missing): pip "
                             "install 'gpoa[app]' (in a clone: pip install -e '.[app]'; make setup installs it)") from None
        from gpoa.serve.workbench import Workbench

        self.host = cfg.serve.host
        self.folder = Path(tempfile.mkdtemp(prefix="gpoa-serve-"))
        try:
            self.workbench = Workbench(cfg, policy, device, self.folder)
            self.workbench.warm_up()
            self.listener = bind(cfg.serve.host, cfg.serve.port)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        host, port = self.listener.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.workbench), log_level="warning",
                                                    timeout_graceful_shutdown=3))
        self._thread: Optional[threading.Thread] = None

    def run(self) -> None:
        """Serve until Ctrl-C or SIGTERM, then delete the folder. uvicorn shuts down gracefully on either
        and then raises the signal again: here that ends :meth:`run` (by default SIGTERM would kill the
        process before the folder is deleted)."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.server.run(sockets=[self.listener])
        except _Stopped:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Server:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.listener]}, daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                self.close()
                raise UsageError(f"the server on {self.url} stopped while starting (its error is printed above)")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self._thread.join()
        self.close()


class _Stopped(Exception):
    """Ctrl-C or SIGTERM after uvicorn's graceful shutdown."""


def _stop(sig: int, frame) -> None:
    raise _Stopped


def serve(cfg: Config, policy: Optional[Union[str, Path]] = None, device: str = "auto",
          say: Callable[[str], None] = print) -> None:
    """``gpoa serve``: the page on ``cfg.serve.host``:``cfg.serve.port`` until Ctrl-C (or SIGTERM), with one
    line that says where, and one more when the address is reachable from other machines."""
    server = Server(cfg, policy, device)
    note = exposure_note(cfg.serve.host)
    if note:
        say(note)
    say(f"gpoa serve: open {server.url} (Ctrl-C stops; files in {server.folder}, deleted on exit)")
    sys.stdout.flush()
    server.run()
    say("gpoa serve: stopped; its files are deleted")


def exposure_note(host: str) -> Optional[str]:
    """The line ``gpoa serve`` prints when ``host`` is reachable from other machines (None: loopback only)."""
    try:
        loopback = all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
    except (OSError, ValueError):
        loopback = False
    if loopback:
        return None
    return (f"gpoa serve: listening on {host}, not only on this machine: anyone who reaches it can upload images "
            "and run the models (--host 127.0.0.1 keeps it to this machine)")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port): UsageError when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)  # uvicorn's own backlog
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                         "(0: any free port) or --host") from None
    return listener
