"""``/auth/*`` and ``/me``: bootstrap, activation, TOTP enrolment, login, logout."""

from __future__ import annotations

import time

from fastapi import APIRouter

from .. import auth
from ..audit import SERVER_LOG
from .deps import CallerDep, Ctx
from .schemas import (
    ActivateIn,
    BootstrapIn,
    EnrolmentOut,
    LoginIn,
    MeOut,
    OkOut,
    SessionOut,
    TotpConfirmIn,
)

router = APIRouter(tags=["auth"])


def _session_out(new: auth.NewSession) -> SessionOut:
    return SessionOut(token=new.token, expires_at=new.expires_at,
                      username=new.account.username, role=new.account.role)


@router.post("/auth/bootstrap", response_model=EnrolmentOut)
def bootstrap(body: BootstrapIn, ctx: Ctx) -> EnrolmentOut:
    """Create the first owner with the bootstrap token (only while no owner exists)."""
    now = time.time()
    with ctx.store.transaction() as s:
        enrolment = auth.bootstrap_owner(s, token=body.token, username=body.username,
                                         password=body.password, now=now, limits=ctx.limits)
        ctx.audit.record(s, [SERVER_LOG], "account.created", body.username,
                         {"username": body.username, "role": "owner", "via": "bootstrap"}, now)
    return EnrolmentOut(enrolment_token=enrolment.enrolment_token,
                        otpauth_uri=enrolment.otpauth_uri)


@router.post("/auth/activate", response_model=EnrolmentOut)
def activate(body: ActivateIn, ctx: Ctx) -> EnrolmentOut:
    """Set a new account's password with its one-time activation token."""
    with ctx.store.transaction() as s:
        enrolment = auth.activate_account(s, username=body.username,
                                          activation_token=body.activation_token,
                                          password=body.password, now=time.time(),
                                          limits=ctx.limits)
    return EnrolmentOut(enrolment_token=enrolment.enrolment_token,
                        otpauth_uri=enrolment.otpauth_uri)


@router.post("/auth/totp/confirm", response_model=SessionOut)
def totp_confirm(body: TotpConfirmIn, ctx: Ctx) -> SessionOut:
    with ctx.store.transaction() as s:
        new = auth.confirm_totp(s, enrolment_token=body.enrolment_token, code=body.code,
                                now=time.time(), limits=ctx.limits)
        return _session_out(new)


@router.post("/auth/login", response_model=SessionOut)
def login(body: LoginIn, ctx: Ctx) -> SessionOut:
    """Password and TOTP; every failure is the same 401 ``invalid credentials``."""
    now = time.time()
    try:
        with ctx.store.transaction() as s:
            new = auth.login(s, ctx.audit, username=body.username, password=body.password,
                             totp=body.totp, now=now, limits=ctx.limits)
            return _session_out(new)
    except auth.LoginFailed as failed:
        # The failure counter, lockout and audit entry must persist although the login fails.
        with ctx.store.transaction() as s:
            auth.record_login_failure(s, ctx.audit, failed, now=now, limits=ctx.limits)
        raise failed.error from None


@router.post("/auth/logout", response_model=OkOut)
def logout(caller: CallerDep, ctx: Ctx) -> OkOut:
    with ctx.store.transaction() as s:
        auth.end_session(s, caller.token)
    return OkOut()


@router.get("/me", response_model=MeOut)
def me(caller: CallerDep) -> MeOut:
    tenants = None if caller.tenants is None else sorted(caller.tenants)
    return MeOut(username=caller.username, role=caller.role, tenants=tenants)
