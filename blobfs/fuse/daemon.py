"""Mount lifecycle: validate, (daemonize), serve until unmounted or signalled, report.

Background mode follows libfuse's own ``fuse_daemonize`` (lib/helper.c): every check runs in
the parent first, the parent forks while it has no other thread (a fork with live threads can
leave locks held forever in the child), the child starts a new session, moves to ``/`` and puts
stdio on ``/dev/null`` — a daemon keeping its parent's stdout/stderr makes ``$(blobfs mount
...)`` or ``subprocess.run(capture_output=True)`` wait for EOF forever — and tells the parent
over a pipe once libfuse's ``init`` ran. The parent then lists the mount point and exits 0, or
prints one line and exits non-zero.

Signals: libfuse installs SIGTERM/SIGINT/SIGHUP handlers that end its loop; it then unmounts
(lazily: ``umount2(MNT_DETACH)`` / ``fusermount -u -z``, so open files do not block it) and
returns. libfuse >= 3.10 reports the signal as a non-zero status; once the mount was up that
is a clean stop, exit 0.

``-o overlay`` (:mod:`blobfs.fuse.overlay`) forks the same way, in the foreground too: the
daemon mounts FUSE on a private directory, and the parent stacks the overlay on the mount
point once the daemon serves (mounting it makes the kernel ask the FUSE file system, so the
daemon cannot do it from inside its own init). With ``-f`` the parent hands systemd the
daemon's pid (``MAINPID=``), passes SIGTERM/SIGINT/SIGHUP on and exits with its status.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import select
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from blobfs.errors import BlobfsError, one_line
from blobfs.fuse import binding as _binding
from blobfs.fuse import overlay
from blobfs.fuse.cpuworkers import WorkerLost, die_with_parent, plan as worker_plan
from blobfs.fuse.ops import make_operations
from blobfs.fuse.uring import compiled_loop, kernel_offers as uring_offered
from blobfs.fuse.options import CACHE_TIMEOUT, MountOptions, MountUsageError
from blobfs.fuse.preflight import MountError, check_mountpoint, device_hint
from blobfs.fuse.sdnotify import sd_notify
from blobfs.fuse.umount import is_stale, mount_entry, unmount

log = logging.getLogger(__name__)

#: How long the parent waits for the daemon's "mounted" message.
READY_TIMEOUT = 60.0


# -- serving ---------------------------------------------------------------------------------
def open_source(opts: MountOptions) -> Any:
    """Open (and so validate) the project; raises BlobfsError with one line."""
    from blobfs.model.opening import open_project

    return open_project(opts.source, offsets=opts.offsets, ann=opts.ann, synthesize_ann=opts.synthesize_ann)


def serve(project: Any, fb: _binding.Binding, opts: MountOptions, on_ready: Callable[[], None],
          at: Path | None = None) -> int:
    """Run the filesystem in this process until unmounted or signalled; returns the exit code.
    ``at``: where FUSE mounts when it is not the mount point (``-o overlay``'s private directory)."""
    started = threading.Event()
    lowlevel = fb.lowlevel(opts.fuse_api)
    project.view.show_as(opts.ownership)

    def _init() -> None:
        started.set()
        loop = "multithreaded" if opts.threads else "single-threaded"
        if lowlevel and not opts.threads:
            n = len(worker_plan(opts.workers))
            if n > 1:
                loop = f"{n} worker processes, one per CPU group"
            if opts.uring is not False and uring_offered() is None:
                loop = f"FUSE over io_uring, {n} worker process{'es' if n > 1 else ''}"
                if not compiled_loop(opts.debug):  # say so: it costs 8-reader throughput
                    loop += ", every request answered in Python"
            elif opts.spin_window(n):
                loop += f", polls {opts.spin_window(n)} µs after each request"
        if opts.overlay:
            loop += ", under overlayfs"
        log.info("mounted %s on %s (%s, libfuse %d %s API, %s)", opts.source, opts.mountpoint, fb.name,
                 fb.libfuse, "low-level" if lowlevel else "high-level", loop)
        on_ready()

    try:
        if lowlevel:
            _serve_lowlevel(project, fb, opts, _init, at)
        else:
            _serve_highlevel(project, fb, opts, _init)
    except WorkerLost as e:
        # Requests that worker had read are lost with it; unmounting beats hanging readers.
        log.error("%s; unmounted %s", e, opts.mountpoint)
        return 1
    except RuntimeError as e:
        if not started.is_set():
            raise MountError(f"{opts.mountpoint}: libfuse could not mount {opts.source} (status {e})"
                             f"{device_hint()}") from None
        # libfuse >= 3.10 returns non-zero after a signal ended the loop: a normal stop.
        log.debug("libfuse loop ended with status %s", e)
    finally:
        close = getattr(project, "close", None)
        if close is not None:
            close()
    if not started.is_set():
        raise MountError(f"{opts.mountpoint}: libfuse exited before the mount came up")
    log.info("unmounted %s", opts.mountpoint)
    return 0


def _serve_highlevel(project: Any, fb: _binding.Binding, opts: MountOptions, on_init: Callable[[], None]) -> None:
    # ENOSYS from open is what enables zero-message opens; libfuse 2 passes it to the kernel
    # the same way (fuse_lib_open replies the callback's error) — see tests/test_mount_* .
    ops = make_operations(project.view, fb.name, caches_dirs=fb.caches_dirs, on_init=on_init)
    kwargs = opts.fuse_kwargs(fb.libfuse)
    log.debug("FUSE options: %s", kwargs)
    fb.FUSE(ops, str(opts.mountpoint), **kwargs)


def _serve_lowlevel(project: Any, fb: _binding.Binding, opts: MountOptions, on_init: Callable[[], None],
                    at: Path | None) -> None:
    from blobfs.fuse.lowlevel import LowLevelFS, run_session

    fs = LowLevelFS(project.view, fb.module, timeout=CACHE_TIMEOUT, on_init=on_init)
    # Under the overlay the FUSE mount is detached once stacked: when a signal ends the loop,
    # the daemon's unmount is the overlay's (libfuse's would find nothing at the private path).
    unmount = (lambda: overlay.unstack(opts.mountpoint)) if opts.overlay else None
    status = run_session(fs, str(at or opts.mountpoint), opts, opts.source_name, unmount)
    if status != 0:
        # Like mfusepy's FUSE: a non-zero loop status is reported as RuntimeError (libfuse >= 3.10
        # returns the signal number after SIGTERM; serve() treats that as a clean stop).
        raise RuntimeError(status)


def _daemon_logging(opts: MountOptions) -> int | None:
    """Route logging to the log file (returns its fd for libfuse's stderr) or syslog."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = "blobfs[%(process)d]: %(levelname)s %(name)s: %(message)s"
    if opts.log_file is not None:
        h: logging.Handler = logging.FileHandler(opts.log_file)
        h.setFormatter(logging.Formatter("%(asctime)s " + fmt))
        root.addHandler(h)
        return h.stream.fileno()  # type: ignore[attr-defined]
    if os.path.exists("/dev/log"):
        try:
            h = logging.handlers.SysLogHandler(address="/dev/log")
            h.setFormatter(logging.Formatter(fmt))
            root.addHandler(h)
        except OSError:
            pass
    return None


def _read_status(fd: int, timeout: float) -> str | None:
    """First line the daemon writes, or None at EOF / timeout."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode("utf-8", "replace").partition("\n")[0] if buf else None


def _child(project: Any, fb: _binding.Binding, opts: MountOptions, w: int, at: Path | None, parent: int) -> int:
    attached = opts.foreground  # -f -o overlay: keep the terminal, the session and stderr logging
    if attached:
        die_with_parent(parent)  # SIGKILL of the process the user started ends the daemon as with -f alone
    else:
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        # Until the mount is up, libfuse's own complaints ("fuse: ...") go to a scratch file so
        # the parent can print them; after that fd 2 is the log file or /dev/null.
        scratch = tempfile.TemporaryFile()
        os.dup2(scratch.fileno(), 2)
        log_fd = _daemon_logging(opts)
    ready = [False]

    def on_ready() -> None:
        ready[0] = True
        if not attached:
            os.dup2(log_fd if log_fd is not None else devnull, 2)
        try:
            os.write(w, b"OK\n")
        finally:
            os.close(w)

    try:
        return serve(project, fb, opts, on_ready, at)
    except BaseException as e:
        if not ready[0]:
            lines = []
            if not attached:
                scratch.seek(0)
                lines = [ln.strip() for ln in scratch.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            why = str(e) if isinstance(e, BlobfsError) else f"{type(e).__name__}: {e}"
            if lines:
                why = f"{why}: {lines[-1]}"
            try:
                os.write(w, ("ERR " + " ".join(why.split()) + "\n").encode())
            except OSError:
                pass
        log.exception("daemon failed")
        return 1


def _background(project: Any, fb: _binding.Binding, opts: MountOptions) -> int:
    """Fork the daemon, wait until it mounted, (stack the overlay,) report; with ``-f`` (only
    with ``-o overlay``) stay and wait for the daemon."""
    if threading.active_count() != 1:
        raise MountError(f"internal error: {threading.active_count()} threads alive before fork")
    layers = overlay.prepare() if opts.overlay else None
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            code = _child(project, fb, opts, w, layers.lower if layers else None, parent)
        finally:
            os._exit(code)
    os.close(w)
    if opts.foreground:  # from here on a stop signal is the daemon's, mounted or not yet
        _forward_stop_signals(pid)
    failure = None  # why a daemon that reported a mount must be stopped
    try:
        try:
            status = _read_status(r, READY_TIMEOUT)
        finally:
            os.close(r)
        if status == "OK":
            try:
                if layers is not None:
                    overlay.stack(layers, opts.mountpoint, opts.source_name, noexec=opts.noexec)
                os.listdir(opts.mountpoint)
            except overlay.OverlayError as e:
                failure = str(e)
            except OSError as e:
                failure = f"{opts.mountpoint}: mounted but cannot be listed: {e.strerror}"
    except BaseException:  # Ctrl-C while mounting: leave no daemon and no mount behind
        _stop_child(pid, opts)
        raise
    finally:
        if layers is not None:  # detaches the FUSE mount: the overlay holds it, or nothing does
            overlay.release(layers)
    if status is None:
        failure = f"{opts.mountpoint}: the daemon did not report a mount within {READY_TIMEOUT:.0f} s"
    if failure is not None:
        _stop_child(pid, opts)
        raise MountError(failure)
    if status == "OK":
        sd_notify(f"MAINPID={pid}\nREADY=1")
        return _wait_attached(pid) if opts.foreground else 0
    _reap(pid, 5.0)
    raise MountError(status[4:] if status.startswith("ERR ") else status)


def _forward_stop_signals(pid: int) -> None:
    """``-f -o overlay``: SIGTERM, SIGINT and SIGHUP to this process go to the daemon ``pid``."""
    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)


def _wait_attached(pid: int) -> int:
    """``-f -o overlay``: wait for the daemon and exit with its status."""
    while True:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def _reap(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    return None


def _stop_child(pid: int, opts: MountOptions) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if _reap(pid, 5.0) is None:
        os.kill(pid, signal.SIGKILL)
        _reap(pid, 5.0)
    if mount_entry(opts.mountpoint) is not None or is_stale(opts.mountpoint):
        try:
            unmount(opts.mountpoint, lazy=True)
        except BlobfsError as e:
            log.warning("%s", e)


def run(opts: MountOptions) -> int:
    """``blobfs mount``: validate everything, then serve (foreground) or daemonize."""
    fb = _binding.load(opts.libfuse)
    if opts.log_file is not None:
        try:
            with open(opts.log_file, "a"):
                pass
        except OSError as e:
            raise MountUsageError(f"{opts.log_file}: cannot write log file: {e.strerror}") from None
    if opts.overlay:
        if not fb.lowlevel(opts.fuse_api):
            raise MountUsageError(f"mount option 'overlay' needs the low-level driver (libfuse 3 through mfusepy); "
                                  f"this mount would use {fb.name} on libfuse {fb.libfuse}")
        if os.geteuid() != 0:
            raise MountUsageError("mount option 'overlay' needs root (mounting overlayfs needs CAP_SYS_ADMIN)")
    check_mountpoint(opts)
    project = open_source(opts)
    for problem in getattr(project, "problems", ()):
        log.warning("%s", one_line(problem))
    if opts.foreground and opts.log_file is not None:
        h = logging.FileHandler(opts.log_file)
        h.setFormatter(logging.Formatter("%(asctime)s blobfs[%(process)d]: %(levelname)s %(message)s"))
        logging.getLogger().addHandler(h)
    if not opts.foreground or opts.overlay:
        return _background(project, fb, opts)
    return serve(project, fb, opts, lambda: sd_notify("READY=1"))


__all__ = ["run", "serve"]
