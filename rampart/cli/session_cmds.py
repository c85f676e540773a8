"""Remote sessions: ``rampart shell``, ``rampart cp`` and ``rampart sessions list|show|play|export|watch``.

A session is a ``shell`` job signed here with the technician's key, carrying a
key pair made for this session only (docs/remote-support.md). The server relays
ciphertext; this process checks the device's signed accept against the device
the job targets, and every frame's seal. Recordings are checked against the
device-signed receipt and the pinned root before they are played or exported.

Security invariants:

* Nothing is signed before the grant verifies against the pinned root and
  covers the device and ``shell`` (:func:`rampart.cli.job_cmds.sign_job`).
* Remote output reaches the terminal through :class:`TerminalFilter` (no
  clipboard writes, no terminal queries, no title reports from the device).
* ``play`` and ``export`` refuse a recording whose SHA-256 differs from the one
  the device signed, before showing or writing a byte of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Annotated, Any

import typer

from rampart import trust
from rampart.textsafe import safe_line
from rampart.wire.session import (
    FILE_CHUNK_BYTES,
    ClientKeys,
    Data,
    Exit,
    FileChunk,
    FileDone,
    FileGet,
    FilePut,
    FileResult,
    Frame,
    Notice,
    RelayNotice,
    Resize,
    client_keys,
)

from .client import Client, expect_dict, expect_list
from .common import api, resolve_tenant, trusted_root
from .config import Config, Session
from .errors import CliError, Refused, UsageProblem
from .job_cmds import JsonOpt, TenantArg, sign_job, submit_job
from .output import err_console, fmt_time, parse_duration, print_json, say, table
from .session_link import SessionEnd, SessionLink, log_session
from .termfilter import TerminalFilter

GrantOpt = Annotated[str, typer.Option("--grant", help="Approved grant with the 'shell' capability (gr-…).")]

#: Exit status of `rampart shell` when the session did not end with the shell's own exit.
EXIT_SESSION_FAILED = 255
#: Seconds of silence from the device in the middle of a transfer before `rampart cp` gives up.
TRANSFER_SILENCE_S = 90

sessions_app = typer.Typer(help="Remote sessions: list, show, play, export and watch.", no_args_is_help=True)


def _device(client: Client, tenant_id: str, device: str) -> dict[str, Any]:
    for d in expect_list(client.get(f"/tenants/{tenant_id}/devices"), "devices"):
        if isinstance(d, dict) and (d.get("id") == device or d.get("hostname") == device):
            return d
    raise UsageProblem(f"no device {device!r} in this tenant")


def _open(cfg: Config, client: Client, session: Session, tenant_id: str, device: str, grant: str, *,
          mode: str, watch: str = "", writes: list[str] | None = None, as_root: bool = False,
          idle_s: int = 900, max_s: int = 3600, expires_s: int = 120, record_input: bool = False,
          on_notice: Any = None) -> tuple[SessionLink, trust.Job]:
    """Sign the session job, send it, and complete the key exchange with the device."""
    cols, rows = _winsize()
    return open_session(cfg, client, session, tenant_id, device, grant, keys=client_keys(), cols=cols,
                        rows=rows, term=_term(), mode=mode, watch=watch, writes=writes, as_root=as_root,
                        idle_s=idle_s, max_s=max_s, expires_s=expires_s, record_input=record_input,
                        on_notice=on_notice)


def open_session(cfg: Config, client: Client, session: Session, tenant_id: str, device: str, grant: str,
                 *, keys: ClientKeys, cols: int, rows: int, term: str, mode: str, watch: str = "",
                 writes: list[str] | None = None, as_root: bool = False, idle_s: int = 900,
                 max_s: int = 3600, expires_s: int = 120, record_input: bool = False,
                 on_notice: Any = None) -> tuple[SessionLink, trust.Job]:
    """Sign a session job carrying ``keys``' public half, send it, complete the key exchange.

    Shared by ``rampart shell``/``cp``/``watch`` and the local console (which shows the key's
    fingerprint before the operator signs). Nothing is signed unless the device is approved and
    connected and the grant verifies (:func:`sign_job`); the returned link has checked the
    device's signed accept.
    """
    d = _device(client, tenant_id, device)
    device_id = str(d["id"])
    if d.get("status") != "approved":
        raise Refused(f"device {device_id} is not approved")
    if not d.get("connected"):
        raise Refused(f"device {device_id} is offline (its agent is not connected to the server); "
                      "a session needs it online")
    root = trusted_root(cfg, client, tenant_id)
    record_input = record_input or root.root.policy.record_session_input is True
    try:
        spec = trust.SessionSpec(client_key=keys.public_b64, mode=mode,  # type: ignore[arg-type]
                                 watch=watch, cols=cols, rows=rows,
                                 term=term, idle_timeout_s=idle_s, record_input=record_input)
        declared = trust.Declared(writes=writes or [], run_as="root" if as_root else "job")
    except (ValueError, TypeError) as exc:
        raise UsageProblem(f"invalid session: {exc}") from None
    env, job, targets = sign_job(cfg, client, session, tenant_id, grant_id=grant, devices=[device_id],
                        action=trust.Action(kind="shell"), declared=declared, timeout_s=max_s,
                        lifetime_s=expires_s, session_spec=spec)
    submit_job(client, tenant_id, env, {}, job, targets)
    link = SessionLink(client, job.id, device_id, keys)
    log_session(cfg.dir, {"event": "open", "session": job.id, "device": device_id, "mode": mode})
    try:
        link.connect(on_notice=on_notice)
    except SessionEnd as exc:
        log_session(cfg.dir, {"event": "end", "session": job.id, "end": exc.reason})
        raise CliError(f"session {job.id} ended before it opened: {exc.reason} "
                       f"{safe_line(exc.detail)}") from None
    return link, job


def _winsize() -> tuple[int, int]:
    """The terminal's own size (not $COLUMNS/$LINES, which are for our tables), within 1..1000."""
    for fd in (1, 0, 2):
        try:
            size = os.get_terminal_size(fd)
            return max(1, min(size.columns, 1000)), max(1, min(size.lines, 1000))
        except OSError:
            continue
    return 80, 24


def _term() -> str:
    value = os.environ.get("TERM", "xterm-256color")
    return value if value and all(c.isalnum() or c in "._+-" for c in value) and len(value) <= 32 \
        else "xterm-256color"


def _notice_to_stderr(text: str) -> None:
    os.write(2, f"rampart: {safe_line(text)}\r\n".encode())


# --- rampart shell -----------------------------------------------------------------------------------


def shell(
    tenant: TenantArg,
    device: Annotated[str, typer.Argument(help="Device id or hostname.")],
    grant: GrantOpt,
    as_root: Annotated[bool, typer.Option("--as-root", help="Run the shell as root (the grant needs "
                                                             "'root' and the device --allow-root).")] = False,
    write: Annotated[list[str] | None, typer.Option(
        "--write", help="A path the shell may write beyond its scratch directory (repeatable).")] = None,
    idle_timeout: Annotated[str, typer.Option("--idle-timeout", help="End after this long without "
                                                                     "input or output.")] = "15m",
    max_duration: Annotated[str, typer.Option("--max-duration", help="End after this long.")] = "1h",
    record_input: Annotated[bool, typer.Option("--record-input",
                                               help="The device also records keystrokes.")] = False,
) -> None:
    """Open an interactive shell on a device, end to end through the server (which cannot read it)."""
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        link, job = _open(cfg, client, session, t["id"], device, grant, mode="shell", writes=write or [],
                          as_root=as_root, idle_s=parse_duration(idle_timeout, what="--idle-timeout"),
                          max_s=parse_duration(max_duration, what="--max-duration"),
                          record_input=record_input, on_notice=_notice_to_stderr)
        _notice_to_stderr(f"session {job.id} open on {job.devices[0]} (end to end; recorded by the device)")
        end = _interactive(link)
    log_session(cfg.dir, {"event": "end", "session": job.id, "end": end.reason, "status": end.status,
                          "detail": end.detail[:300]})
    if end.reason != "exit":
        _notice_to_stderr(f"session {job.id} ended: {end.reason}"
                          + (f" ({end.detail})" if end.detail else ""))
    raise typer.Exit(end.status if end.reason == "exit" and end.status is not None else
                     0 if end.reason in ("exit", "closed") else EXIT_SESSION_FAILED)


def _interactive(link: SessionLink) -> SessionEnd:
    """Pump the terminal both ways until the session ends; return how it ended."""
    import threading

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    wake_r, wake_w = os.pipe()
    ended: list[SessionEnd] = []
    filt = TerminalFilter()

    def reader() -> None:
        try:
            while True:
                frame = link.receive(timeout=None)
                if isinstance(frame, Data):
                    os.write(stdout, filt.feed(frame.data))
                elif isinstance(frame, Exit):
                    ended.append(SessionEnd(frame.reason, frame.detail, frame.status))
                    break
                elif isinstance(frame, Notice | RelayNotice):
                    text = frame.text if isinstance(frame, Notice) else f"{frame.status}: {frame.detail}"
                    _notice_to_stderr(text)
        except SessionEnd as exc:
            ended.append(exc)
        except OSError as exc:
            ended.append(SessionEnd("closed", f"the terminal went away: {exc.strerror}"))
        finally:
            os.write(wake_w, b"x")

    def on_winch(*_: object) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    old_winch = signal.signal(signal.SIGWINCH, on_winch)
    thread = threading.Thread(target=reader, daemon=True)
    try:
        if saved is not None:
            tty.setraw(stdin)
        thread.start()
        stdin_open = True
        while not ended:
            fds = [wake_r] + ([stdin] if stdin_open else [])
            ready, _, _ = select.select(fds, [], [], 1.0)
            if wake_r in ready:
                for b in os.read(wake_r, 64):
                    if b == ord("w"):
                        cols, rows = _winsize()
                        with contextlib.suppress(SessionEnd):
                            link.send(Resize(cols=cols, rows=rows))
            if stdin in ready and stdin_open:
                data = os.read(stdin, 16384)
                if not data:
                    stdin_open = False  # stdin closed (a pipe): send EOF as a terminal would
                    data = b"\x04"
                try:
                    link.send(Data(data=data))
                except SessionEnd as exc:
                    ended.append(exc)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
    thread.join(timeout=2)
    end = ended[0]
    if end.reason not in ("exit",):
        link.abandon()
    else:
        link.close()
    os.close(wake_r)
    os.close(wake_w)
    return end


# --- rampart cp --------------------------------------------------------------------------------------


def _split_remote(arg: str) -> tuple[str, str] | None:
    """``DEVICE:/path`` → (device, path); a local path → None."""
    head, sep, tail = arg.partition(":")
    if sep and head and tail.startswith("/") and "/" not in head:
        return head, tail
    return None


def cp(
    tenant: TenantArg,
    source: Annotated[str, typer.Argument(help="A local file, or DEVICE:/absolute/path.")],
    dest: Annotated[str, typer.Argument(help="DEVICE:/absolute/path, or a local file or directory.")],
    grant: GrantOpt,
    mode: Annotated[str, typer.Option("--mode", help="Mode of an uploaded file (octal).")] = "644",
    json_out: JsonOpt = False,
) -> None:
    """Copy one file to or from a device through a session: SHA-256 checked end to end."""
    src_remote, dst_remote = _split_remote(source), _split_remote(dest)
    if (src_remote is None) == (dst_remote is None):
        raise UsageProblem("give exactly one side as DEVICE:/absolute/path")
    try:
        file_mode = int(mode, 8)
    except ValueError:
        raise UsageProblem("--mode must be octal, e.g. 644") from None
    if not 0 <= file_mode <= 0o777:
        raise UsageProblem("--mode must be at most 777")
    cfg, client, session = api()
    device, remote_path = (dst_remote or src_remote)  # type: ignore[misc]
    data = b""
    if dst_remote is not None:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise UsageProblem(f"cannot read {source}: {exc.strerror}") from None
    writes = [os.path.dirname(remote_path)] if dst_remote is not None else []
    with client:
        t = resolve_tenant(client, tenant)
        link, job = _open(cfg, client, session, t["id"], device, grant, mode="files", writes=writes)
        try:
            if dst_remote is not None:
                result = _upload(link, remote_path, data, file_mode)
            else:
                result = _download(link, remote_path, Path(dest))
        finally:
            link.close()
    log_session(cfg.dir, {"event": "end", "session": job.id, "end": "closed", "copy": result})
    if json_out:
        print_json({"session": job.id, **result})
    else:
        say(f"{result['direction']}: {result['path']} ({result['bytes']} bytes, sha256 {result['sha256']}) "
            f"in session {job.id}")


def _transfer_frame(link: SessionLink, what: str) -> Frame:
    """The device's next frame in a transfer; a lost frame, silence or the session's end is an error."""
    while True:
        frame = link.receive(timeout=TRANSFER_SILENCE_S)
        if frame is None:
            raise CliError(f"the device {what} for {TRANSFER_SILENCE_S} s")
        if isinstance(frame, RelayNotice):
            if frame.status == "device-offline":  # a frame of ours was not delivered: the stream is broken
                raise CliError(f"the transfer broke: the relay says {safe_line(frame.detail)}")
            continue
        if isinstance(frame, Exit):
            raise CliError(f"the session ended during the transfer: {frame.reason} {safe_line(frame.detail)}")
        return frame


def _await_result(link: SessionLink, file_id: int) -> FileResult:
    while True:
        frame = _transfer_frame(link, "did not answer the transfer")
        if isinstance(frame, FileResult) and frame.id == file_id:
            return frame


def _upload(link: SessionLink, path: str, data: bytes, mode: int) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    try:
        link.send(FilePut(id=1, path=path, size=len(data), sha256=sha, mode=mode))
        for i in range(0, len(data), FILE_CHUNK_BYTES):
            link.send(FileChunk(id=1, data=data[i:i + FILE_CHUNK_BYTES]))
        link.send(FileDone(id=1, sha256=sha, size=len(data)))
        result = _await_result(link, 1)
    except SessionEnd as exc:
        raise CliError(f"the session ended: {exc.reason} {safe_line(exc.detail)}") from None
    if not result.ok:
        raise Refused(f"the device refused the upload: {safe_line(result.detail)}")
    if result.sha256 != sha or result.size != len(data):
        raise Refused("the device reports another SHA-256 or size than was sent")
    return {"direction": "uploaded", "path": path, "bytes": len(data), "sha256": sha}


def _download(link: SessionLink, path: str, dest: Path) -> dict[str, Any]:
    target = dest / os.path.basename(path) if dest.is_dir() else dest
    digest, got = hashlib.sha256(), bytearray()
    try:
        link.send(FileGet(id=1, path=path))
        first = _await_result(link, 1)
        if not first.ok:
            raise Refused(f"the device refused the download: {safe_line(first.detail)}")
        while True:
            frame = _transfer_frame(link, "stopped sending the file")
            if isinstance(frame, FileChunk) and frame.id == 1:
                got += frame.data
                digest.update(frame.data)
            elif isinstance(frame, FileDone) and frame.id == 1:
                done = frame
                break
            elif isinstance(frame, FileResult) and frame.id == 1 and not frame.ok:
                raise Refused(f"the device could not send {path}: {safe_line(frame.detail)}")
    except SessionEnd as exc:
        raise CliError(f"the session ended: {exc.reason} {safe_line(exc.detail)}") from None
    sha = digest.hexdigest()
    if done.sha256 != sha or done.size != len(got):
        raise Refused("the file arrived with another SHA-256 or size than the device sent; "
                      "nothing was written")
    tmp = target.with_name(f".{target.name}.rampart-part")
    try:
        tmp.write_bytes(bytes(got))
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CliError(f"cannot write {target}: {exc.strerror}") from None
    return {"direction": "downloaded", "path": str(target), "bytes": len(got), "sha256": sha}


# --- rampart sessions -------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(tenant: TenantArg, json_out: JsonOpt = False,
                  limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50) -> None:
    """A tenant's remote sessions, newest first."""
    _, client, _ = api()
    with client:
        t = resolve_tenant(client, tenant)
        docs = expect_list(client.get(f"/tenants/{t['id']}/sessions", limit=limit), "sessions")
    if json_out:
        print_json(docs)
        return
    table(["session", "device", "host", "mode", "opened", "end", "recording"],
          ([d.get("id"), d.get("device"), d.get("hostname"), d.get("mode"), fmt_time(d.get("created_at")),
            d.get("end") or d.get("state"),
            f"{d['recording']['bytes']} B" if isinstance(d.get("recording"), dict) else "-"]
           for d in docs if isinstance(d, dict)))


def _verified(cfg: Config, client: Client, session_id: str, *,
              with_recording: bool) -> tuple[dict[str, Any], trust.SessionRecord, bytes | None]:
    """The session's evidence, checked here against the pinned root (and the recording, if asked)."""
    doc = expect_dict(client.get(f"/sessions/{session_id}"), "session")
    key_text, job_env = doc.get("device_key"), doc.get("job_envelope")
    if not isinstance(key_text, str) or not isinstance(job_env, str):
        raise Refused("the server did not send the session's job and device key")
    receipt_env = doc.get("receipt_envelope")
    recording = client.get_bytes(f"/sessions/{session_id}/recording") if with_recording else None
    root = trusted_root(cfg, client, str(doc.get("tenant")))
    try:
        record = trust.verify_session_record(
            root, job_env.encode(), receipt_env.encode() if isinstance(receipt_env, str) else None,
            trust.DevicePublicKey.from_text(key_text), recording)
    except trust.TrustError as exc:
        raise Refused(f"session {session_id}: {exc}") from None
    return doc, record, recording


@sessions_app.command("show")
def sessions_show(session_id: Annotated[str, typer.Argument(help="Session (job) id.")],
                  json_out: JsonOpt = False) -> None:
    """One session, with its signed job and receipt checked against your pinned root."""
    cfg, client, _ = api()
    with client:
        doc, record, _ = _verified(cfg, client, session_id, with_recording=False)
    r = record.receipt
    summary = r.session if r is not None and isinstance(r.session, trust.SessionSummary) else None
    out = {
        "session": record.job.id, "tenant": record.job.tenant, "device": record.job.devices[0],
        "mode": record.job.session_spec.mode if record.job.session_spec else "",
        "signer": record.job.signer, "grant": record.job.grant, "issued_at": record.job.issued_at,
        "verified": True, "outcome": r.outcome if r else None, "detail": r.detail if r else "",
        "end": summary.end if summary else None,
        "recording_sha256": summary.recording_sha256 if summary else None,
        "recording_bytes": summary.recording_bytes if summary else None,
        "input_recorded": summary.input_recorded if summary else None,
        "consent": summary.consent if summary else None,
        "stored_recording": doc.get("recording"),
        "containment": r.containment.level if r and r.containment else None,
    }
    if json_out:
        print_json(out)
        return
    for k, v in out.items():
        say(f"{k}: {v if v is not None else '-'}")


def _events(recording: bytes) -> list[tuple[float, str, str]]:
    lines = recording.decode("utf-8", errors="replace").splitlines()
    events: list[tuple[float, str, str]] = []
    for line in lines[1:]:
        try:
            t, code, data = json.loads(line)
            events.append((float(t), str(code), str(data)))
        except (ValueError, TypeError):
            continue
    return events


@sessions_app.command("play")
def sessions_play(session_id: Annotated[str, typer.Argument(help="Session (job) id.")],
                  speed: Annotated[float, typer.Option("--speed", min=0.1, max=100.0)] = 1.0,
                  max_wait: Annotated[float, typer.Option("--max-wait",
                                                          help="Longest pause, seconds.")] = 2.0,
                  ) -> None:
    """Replay a session's recording with its timing, after checking it against the device's signature."""
    cfg, client, _ = api()
    with client:
        _, record, recording = _verified(cfg, client, session_id, with_recording=True)
    assert recording is not None
    filt = TerminalFilter()
    last = 0.0
    for t, code, data in _events(recording):
        if code != "o":
            continue
        time.sleep(min(max(0.0, t - last) / speed, max_wait))
        last = t
        os.write(sys.stdout.fileno(), filt.feed(data.encode("utf-8", errors="replace")))
    err_console.print(f"recording of {record.job.id} verified against the device's signed receipt")


@sessions_app.command("export")
def sessions_export(session_id: Annotated[str, typer.Argument(help="Session (job) id.")],
                    out: Annotated[Path, typer.Option("--out",
                                                      help="Where to write the .cast file.")]) -> None:
    """Write a session's verified recording (asciicast v2) and its evidence (OUT.evidence.json)."""
    cfg, client, _ = api()
    with client:
        doc, _, recording = _verified(cfg, client, session_id, with_recording=True)
    assert recording is not None
    try:
        with open(out, "xb") as f:
            f.write(recording)
        Path(f"{out}.evidence.json").write_text(json.dumps({
            "session": session_id, "job_envelope": doc.get("job_envelope"),
            "receipt_envelope": doc.get("receipt_envelope"), "device_key": doc.get("device_key"),
            "recording_sha256": hashlib.sha256(recording).hexdigest()}, indent=1))
    except FileExistsError:
        raise UsageProblem(f"{out} exists; nothing was written") from None
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    say(f"wrote {out} ({len(recording)} bytes) and {out}.evidence.json")


@sessions_app.command("watch")
def sessions_watch(tenant: TenantArg, session_id: Annotated[str, typer.Argument(help="Live session id.")],
                   grant: GrantOpt) -> None:
    """Watch a live session read-only (the technician is told); Ctrl-C stops watching."""
    cfg, client, session = api()
    with client:
        t = resolve_tenant(client, tenant)
        live = expect_dict(client.get(f"/sessions/{session_id}"), "session")
        link, job = _open(cfg, client, session, t["id"], str(live.get("device")), grant, mode="watch",
                          watch=session_id, on_notice=_notice_to_stderr)
        _notice_to_stderr(f"watching {session_id} read-only (Ctrl-C to stop)")
        filt = TerminalFilter()
        reason = "closed"
        try:
            while True:
                frame = link.receive(timeout=None)
                if isinstance(frame, Data):
                    os.write(sys.stdout.fileno(), filt.feed(frame.data))
                elif isinstance(frame, Exit):
                    reason = frame.reason
                    break
        except KeyboardInterrupt:
            link.close()
        except SessionEnd as exc:
            reason = exc.reason
        log_session(cfg.dir, {"event": "end", "session": job.id, "end": reason, "watched": session_id})
    _notice_to_stderr(f"stopped watching {session_id}: {reason}")


def register(app: typer.Typer) -> None:
    app.command("shell")(shell)
    app.command("cp")(cp)
    app.add_typer(sessions_app, name="sessions")
