"""``/auth/*`` and ``/me``: bootstrap, activation, TOTP enrolment, login, step-up, logout."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import auth, clock
from ..access import STEP_UP_WINDOW_S
from ..audit import SERVER_LOG
from ..context import ServerContext
from ..errors import Forbidden, TooManyRequests
from ..models import Account
from ..throttle import Throttled
from ..throttle import check as _throttle_check
from .deps import CallerDep, Ctx, client_address
from .schemas import (
    ActivateIn,
    BootstrapIn,
    EnrolmentOut,
    LoginIn,
    MeOut,
    OkOut,
    SessionOut,
    StepUpIn,
    StepUpOut,
    TotpConfirmIn,
)

router = APIRouter(tags=["auth"])

T = TypeVar("T")


def throttle_check(s: Session, username: str, address: str | None, now: float) -> None:
    try:
        _throttle_check(s, username, address, now)
    except Throttled as exc:
        raise TooManyRequests("too many failed attempts; retry later", exc.retry_after) from None


def _session_out(new: auth.NewSession) -> SessionOut:
    return SessionOut(token=new.token, expires_at=new.expires_at,
                      username=new.account.username, role=new.account.role)


def _enrolment_step(ctx: ServerContext, address: str | None, now: float,
                    step: Callable[[Session], T]) -> T:
    """Run one enrolment step; a failure is counted and paced like a failed login (T11).

    As in :func:`perform_login`, the failed transaction is rolled back (no TOTP
    step or token is consumed) and the failure recorded in a new one.
    """
    try:
        with ctx.store.transaction() as s:
            return step(s)
    except auth.EnrolmentFailed as failed:
        with ctx.store.transaction() as s:
            auth.record_login_failure(s, ctx.audit, failed, username=failed.username, now=now,
                                      limits=ctx.limits, address=address)
        raise failed.error from None


@router.post("/auth/bootstrap", response_model=EnrolmentOut)
def bootstrap(body: BootstrapIn, ctx: Ctx, request: Request) -> EnrolmentOut:
    """Create the first owner with the bootstrap token (only while no owner exists).

    The token is spent when the owner confirms TOTP enrolment; until then a
    failed first login is retried with the same token.
    """
    now = clock.now()

    def step(s: Session) -> auth.Enrolment:
        existed = s.scalars(select(Account.id).where(Account.username == body.username)).first()
        enrolment = auth.bootstrap_owner(s, token=body.token, username=body.username,
                                         password=body.password, now=now, limits=ctx.limits,
                                         address=client_address(request))
        if existed is None:
            ctx.audit.record(s, [SERVER_LOG], "account.created", body.username,
                             {"username": body.username, "role": "owner", "via": "bootstrap"},
                             now)
        else:
            ctx.audit.record(s, [SERVER_LOG], "account.enrolment-started", body.username,
                             {"username": body.username, "via": "bootstrap", "retry": True}, now)
        return enrolment

    enrolment = _enrolment_step(ctx, client_address(request), now, step)
    return EnrolmentOut(enrolment_token=enrolment.enrolment_token,
                        otpauth_uri=enrolment.otpauth_uri)


@router.post("/auth/activate", response_model=EnrolmentOut)
def activate(body: ActivateIn, ctx: Ctx, request: Request) -> EnrolmentOut:
    """Set a new account's password with its activation token and start TOTP enrolment.

    The token is spent when enrolment is confirmed; until it expires a failed
    first login is retried with the same token.
    """
    now = clock.now()

    def step(s: Session) -> auth.Enrolment:
        enrolment = auth.activate_account(s, username=body.username,
                                          activation_token=body.activation_token,
                                          password=body.password, now=now, limits=ctx.limits,
                                          address=client_address(request))
        account = s.scalars(select(Account).where(Account.username == body.username)).one()
        ctx.audit.record(s, ctx.audit.logs_for_account(s, account), "account.enrolment-started",
                         body.username, {"username": body.username, "via": "activation"}, now)
        return enrolment

    enrolment = _enrolment_step(ctx, client_address(request), now, step)
    return EnrolmentOut(enrolment_token=enrolment.enrolment_token,
                        otpauth_uri=enrolment.otpauth_uri)


@router.post("/auth/totp/confirm", response_model=SessionOut)
def totp_confirm(body: TotpConfirmIn, ctx: Ctx, request: Request) -> SessionOut:
    """Confirm TOTP enrolment with a first code; this spends the bootstrap or activation token."""
    now = clock.now()

    def step(s: Session) -> SessionOut:
        new = auth.confirm_totp(s, enrolment_token=body.enrolment_token, code=body.code, now=now,
                                limits=ctx.limits, address=client_address(request))
        ctx.audit.record(s, ctx.audit.logs_for_account(s, new.account), "account.enrolled",
                         new.account.username, {"username": new.account.username}, now)
        return _session_out(new)

    return _enrolment_step(ctx, client_address(request), now, step)


def perform_login(ctx: ServerContext, *, username: str, password: str, totp: str,
                  address: str | None) -> auth.NewSession:
    """Log in or raise: 401 for every credential failure, 429 while paced, 403 off-network."""
    now = clock.now()
    try:
        with ctx.store.transaction() as s:
            return auth.login(s, ctx.audit, username=username, password=password, totp=totp,
                              now=now, limits=ctx.limits, address=address)
    except auth.LoginFailed as failed:
        # The failure counter, pacing, lockout and audit entry must persist although the login fails.
        with ctx.store.transaction() as s:
            auth.record_login_failure(s, ctx.audit, failed, username=username, now=now,
                                      limits=ctx.limits, address=address)
        raise failed.error from None


@router.post("/auth/login", response_model=SessionOut,
             responses={429: {"description": "Too many failed attempts; see Retry-After"}})
def login(body: LoginIn, ctx: Ctx, request: Request) -> SessionOut:
    """Password and TOTP; every failure is the same 401 ``invalid credentials``."""
    return _session_out(perform_login(ctx, username=body.username, password=body.password,
                                      totp=body.totp, address=client_address(request)))


@router.post("/auth/step-up", response_model=StepUpOut)
def step_up(body: StepUpIn, caller: CallerDep, ctx: Ctx) -> StepUpOut:
    """Prove a fresh TOTP code on this session; mass actions are then allowed for 5 minutes (G5).

    A wrong or reused code counts as a failed login (pacing and lockout).
    """
    now = clock.now()
    try:
        with ctx.store.transaction() as s:
            throttle_check(s, caller.username, caller.address, now)
            at = auth.step_up(s, ctx.audit, account_id=caller.account_id, token=caller.token,
                              code=body.code, now=now)
    except auth.LoginFailed as failed:
        with ctx.store.transaction() as s:
            auth.record_login_failure(s, ctx.audit, failed, username=caller.username, now=now,
                                      limits=ctx.limits, address=caller.address)
        raise Forbidden("invalid or reused TOTP code") from None
    return StepUpOut(step_up_at=at, valid_until=at + STEP_UP_WINDOW_S)


@router.post("/auth/logout", response_model=OkOut)
def logout(caller: CallerDep, ctx: Ctx) -> OkOut:
    with ctx.store.transaction() as s:
        auth.end_session(s, caller.token)
    return OkOut()


@router.get("/me", response_model=MeOut)
def me(caller: CallerDep) -> MeOut:
    tenants = None if caller.tenants is None else sorted(caller.tenants)
    return MeOut(username=caller.username, role=caller.role, tenants=tenants)
