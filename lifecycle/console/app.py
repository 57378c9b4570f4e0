"""The console's routes, framework-free like the ingress: ``Console.handle(request, path)`` -> ``Response``.

Every page is server-rendered HTML (Jinja2, autoescaped) with no script; every POST carries the session's
CSRF token; reading needs the ``read`` role and acting the ``act`` role; every action goes through
``lifecycle.operations`` or the mass-change guard and is audited with the signed-in person's name.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from lifecycle.console import queries
from lifecycle.console.security import (
    ACT,
    COOKIE,
    FLOW_COOKIE,
    READ,
    SECURITY_HEADERS,
    OneTimeLinks,
    Session,
    Signer,
    cookie,
    read_cookie,
)
from lifecycle.errors import LifecycleError
from lifecycle.ingress import Request, Response
from lifecycle.observability import log

if TYPE_CHECKING:
    from lifecycle.runtime import Runtime

PREFIX = "/api/console"
SOURCE = "console"
_HERE = Path(__file__).parent
_MAX_FORM_BYTES = 256 * 1024
# Dead letters of one reason previewed in full before "replay all" (the rest are listed by number).
PREVIEWS = 20


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(_HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else ""
    env.filters["age"] = queries.age
    env.filters["shown"] = lambda value: "(none)" if value is None else value
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.globals["prefix"] = PREFIX
    env.globals["secret_safe"] = queries.shown
    env.globals["quote"] = lambda s: quote(str(s), safe="")
    return env


class Console:
    """The operator console of one runtime. Build one per process: it holds the signing key and the links."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        key = settings.console_session_key.get_secret_value().encode()
        self.signer = Signer(key or secrets.token_bytes(32))
        self.links = OneTimeLinks()
        self.env = _environment()
        self._entra: Any = None

    # Local sign-in -----------------------------------------------------------------------------------------
    def sign_in_link(self, base_url: str) -> str:
        """A link that signs one browser in once, within 15 minutes (``lifecycle serve`` prints it)."""
        return f"{base_url}{PREFIX}/signin?once={self.links.issue()}"

    # Dispatch ----------------------------------------------------------------------------------------------
    def handle(self, request: Request, path: str) -> Response:
        """Answer ``request`` for ``path`` (the part after ``/api/console``)."""
        try:
            return self._dispatch(request, "/" + path.strip("/"))
        except _Refused as exc:
            return self._page("refused.html", None, status=exc.status, message=exc.message)
        except Exception:
            log.exception("unexpected error in the console")
            return self._page("refused.html", None, status=500, message="Something went wrong; see the log.")

    def _dispatch(self, request: Request, path: str) -> Response:
        method = request.method.upper()
        if path == "/static/console.css" and method == "GET":
            css = (_HERE / "static" / "console.css").read_bytes()
            return Response(200, css, "text/css; charset=utf-8", {**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})
        if path == "/signin":
            return self._signin(request)
        if path == "/auth/callback" and method == "GET":
            return self._callback(request)
        session = self.signer.session(read_cookie(request.header("cookie"), COOKIE))
        if session is None:
            raise _Refused(401, "Sign in first.")
        form: dict[str, str] = {}
        if method == "POST":
            form = self._form(request)
            if not self.signer.csrf_ok(session.sid, form.get("csrf")):
                raise _Refused(403, "This form is out of date or was not sent by the console; reload the page.")
        elif method != "GET":
            raise _Refused(405, "Use GET or POST.")
        if not session.can(READ):
            raise _Refused(403, "Your account has no console role (Console.Read or Console.Act).")
        parts = [p for p in path.split("/") if p]
        route = parts[0] if parts else ""
        if method == "POST" and route not in ("signout", "plan") and not session.can(ACT):
            raise _Refused(403, "Acting needs the Console.Act role; you can only read.")
        if route == "signout" and method == "POST":
            return self._redirect(f"{PREFIX}/signin", set_cookie=cookie(COOKIE, "", max_age=0))
        if route == "":
            return self._overview(session)
        if route == "people":
            return self._people(request, session, parts[1:])
        if route == "dead-letters":
            return self._dead_letters(request, session, parts[1:], form)
        if route == "held":
            return self._held(session, form)
        if route == "staged":
            return self._staged(request, session, parts[1:], form)
        if route == "plan":
            return self._plan(session, form)
        raise _Refused(404, f"No console page {path}.")

    # Helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        if len(request.body) > _MAX_FORM_BYTES:
            raise _Refused(413, "The form is too large.")
        media = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise _Refused(415, "Send the console's forms as they are.")
        return dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))

    def _page(self, template: str, session: Session | None, *, status: int = 200, **values: Any) -> Response:
        html = self.env.get_template(template).render(
            session=session,
            csrf=self.signer.csrf(session.sid) if session else "",
            can_act=bool(session and session.can(ACT)),
            **values,
        )
        return Response(status, html.encode("utf-8"), "text/html; charset=utf-8", dict(SECURITY_HEADERS))

    @staticmethod
    def _redirect(location: str, *, set_cookie: str | None = None) -> Response:
        headers = {**SECURITY_HEADERS, "Location": location}
        if set_cookie:
            headers["Set-Cookie"] = set_cookie
        return Response(303, b"", "text/plain", headers)

    # Sign-in -----------------------------------------------------------------------------------------------
    def _signin(self, request: Request) -> Response:
        settings = self.runtime.settings
        hours = settings.console_session_hours
        if settings.console_auth == "entra":
            if self._entra is None:
                from lifecycle.console.entra import EntraSignIn

                self._entra = EntraSignIn(settings)
            url, flow = self._entra.begin()
            flow["exp"] = self.signer.clock() + 600
            # Lax, not Strict: Entra's redirect back is a cross-site navigation, which never carries a Strict
            # cookie. The flow is single-use and bound to its state, nonce and PKCE verifier.
            sealed = self.signer.seal("flow", flow)
            return self._redirect(url, set_cookie=cookie(FLOW_COOKIE, sealed, max_age=600, same_site="Lax"))
        if request.method.upper() == "GET":
            once = request.query.get("once")
            if once is None:
                return self._signin_form()
            if not self.links.redeem(once):
                raise _Refused(401, "This sign-in link was used already or has expired; start the service again.")
            _, token = self.signer.new_session("local operator", {READ, ACT}, hours, "one-time link")
            return self._redirect(f"{PREFIX}/", set_cookie=cookie(COOKIE, token, max_age=int(hours * 3600)))
        form = self._form(request)
        # The sign-in form's CSRF token is the MAC of a nonce in a short-lived signed cookie (no session yet).
        login = self.signer.open("login", read_cookie(request.header("cookie"), FLOW_COOKIE))
        if login is None or not self.signer.csrf_ok(str(login["n"]), form.get("csrf")):
            raise _Refused(403, "This form is out of date; reload the sign-in page.")
        import hmac

        admin = settings.admin_token.get_secret_value()
        given = form.get("token", "")
        # Both sides always compared (an empty token never matches), so timing tells nothing about the token.
        matches = hmac.compare_digest(given.encode(), admin.encode())
        if not admin or not matches:
            return self._signin_form(error="That is not the operator token.", status=401)
        name = form.get("name", "").strip()[:80] or "operator"
        _, token = self.signer.new_session(f"{name} (admin token)", {READ, ACT}, hours, "admin token")
        return self._redirect(f"{PREFIX}/", set_cookie=cookie(COOKIE, token, max_age=int(hours * 3600)))

    def _signin_form(self, *, error: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(16)
        sealed = self.signer.seal("login", {"n": nonce, "exp": self.signer.clock() + 600})
        response = self._page("signin.html", None, status=status, error=error, login_csrf=self.signer.csrf(nonce))
        headers = {**response.headers, "Set-Cookie": cookie(FLOW_COOKIE, sealed, max_age=600)}
        return Response(response.status, response.body, response.content_type, headers)

    def _callback(self, request: Request) -> Response:
        if self._entra is None:
            raise _Refused(404, "Sign-in with Entra ID is not configured.")
        flow = self.signer.open("flow", read_cookie(request.header("cookie"), FLOW_COOKIE))
        if flow is None:
            raise _Refused(401, "The sign-in took too long or started elsewhere; sign in again.")
        flow.pop("exp", None)
        try:
            name, roles = self._entra.finish(flow, dict(request.query))
        except LifecycleError as exc:
            raise _Refused(401, f"Sign-in failed: {exc}") from None
        if not roles:
            raise _Refused(403, f"{name} has no console role (Console.Read or Console.Act).")
        hours = self.runtime.settings.console_session_hours
        _, token = self.signer.new_session(name, roles, hours, "Entra ID")
        # Not a redirect: this response ends a navigation that began at Entra (cross-site), and a browser sends
        # no Strict cookie anywhere along such a chain. The page's own refresh starts a same-site navigation.
        # (The flow cookie is left to expire: one Set-Cookie per response is what every host passes on.)
        page = self._page("signed_in.html", None, name=name)
        headers = {**page.headers, "Set-Cookie": cookie(COOKIE, token, max_age=int(hours * 3600))}
        return Response(200, page.body, page.content_type, headers)

    # Pages -------------------------------------------------------------------------------------------------
    def _overview(self, session: Session) -> Response:
        data = queries.overview(self.runtime, datetime.now(UTC))
        return self._page("overview.html", session, page="overview", data=data)

    def _people(self, request: Request, session: Session, rest: list[str]) -> Response:
        if not rest:
            text = request.query.get("q", "")
            hits = queries.search_people(self.runtime, text) if text else []
            return self._page("people.html", session, page="people", q=text, hits=hits)
        if not rest[0].isdigit():
            raise _Refused(404, "A person is found by their Halo id.")
        user_id = int(rest[0])
        before = request.query.get("before")
        stories, more = queries.timeline(self.runtime, user_id, int(before) if before and before.isdigit() else None)
        return self._page(
            "person.html",
            session,
            page="people",
            user_id=user_id,
            record=self.runtime.store.get_person(user_id),
            stories=stories,
            more=more,
            staged=queries.staged_for(self.runtime, user_id),
        )

    def _dead_letters(self, request: Request, session: Session, rest: list[str], form: dict[str, str]) -> Response:
        from lifecycle import operations

        post = request.method.upper() == "POST"
        if rest == ["replay"]:
            # All with one reason: GET previews, POST replays exactly what was previewed (by sequence number).
            reason = (form if post else request.query).get("reason", "")
            messages = queries.with_reason(self.runtime, reason)
            if post:
                wanted = {int(s) for s in form.get("sequences", "").split(",") if s.isdigit()}
                chosen = [m for m in messages if m.sequence_number in wanted]
                done = operations.replay_dead_letters(self.runtime, chosen, by=session.name, source=SOURCE)
                return self._dead_letter_list(session, None, 0, notice=f"Replayed {len(done)} dead letter(s).")
            # Each previewed in full up to a page; the rest have the same reason (and are listed by number).
            previews = [operations.preview_replay(self.runtime, m) for m in messages[:PREVIEWS]]
            return self._page(
                "replay.html",
                session,
                page="dead",
                reason=reason,
                previews=previews,
                messages=messages,
                summary=queries.step_summary,
            )
        if rest and rest[0].isdigit():
            message = operations.dead_letter(self.runtime, int(rest[0]))
            if message is None:
                raise _Refused(404, f"No dead letter {rest[0]} (replayed meanwhile?).")
            if post and rest[1:] == ["replay"]:
                done = operations.replay_dead_letters(self.runtime, [message], by=session.name, source=SOURCE)
                new_id = done[0][1] if done else "?"
                return self._dead_letter_list(
                    session, None, 0, notice=f"Replayed dead letter {message.sequence_number} as {new_id}."
                )
            return self._page(
                "dead_letter.html",
                session,
                page="dead",
                m=message,
                raw=queries.raw_body(message),
                preview=operations.preview_replay(self.runtime, message),
                summary=queries.step_summary,
            )
        if rest:
            raise _Refused(404, "No such dead-letter page.")
        page = request.query.get("page", "0")
        return self._dead_letter_list(session, request.query.get("reason"), int(page) if page.isdigit() else 0)

    def _dead_letter_list(self, session: Session, reason: str | None, page: int, notice: str = "") -> Response:
        rows, reasons, total = queries.dead_letter_page(self.runtime, reason, page)
        return self._page(
            "dead_letters.html",
            session,
            page="dead",
            rows=rows,
            reasons=reasons,
            total=total,
            reason=reason,
            page_no=page,
            page_size=queries.PAGE_SIZE,
            notice=notice,
        )

    def _held(self, session: Session, form: dict[str, str]) -> Response:
        from lifecycle.guard import HeldConflict, HeldNotFound, MassChangeGuard

        runtime = self.runtime
        guard = MassChangeGuard(runtime.settings, runtime.store)
        notice = ""
        if form:
            decision = form.get("decision")
            if decision not in ("approve", "reject"):
                raise _Refused(422, "Choose approve or reject.")
            note = form.get("note", "").strip()[:500]
            held_id = form.get("held_id", "")
            ids = (
                [h.held_id for h in runtime.store.held(status="held", limit=queries.SCAN_LIMIT)]
                if held_id == "*"
                else [held_id]
            )
            decided = 0
            try:
                for one in ids:
                    if decision == "approve":
                        guard.approve(one, runtime.queue, by=session.name, source=SOURCE, note=note)
                    else:
                        guard.reject(one, by=session.name, source=SOURCE, note=note)
                    decided += 1
            except (HeldNotFound, HeldConflict) as exc:
                notice = f"{exc}. "
            notice += f"{'Approved' if decision == 'approve' else 'Rejected'} {decided} held item(s)."
        rows = runtime.store.held(status="held", limit=queries.SCAN_LIMIT)
        return self._page("held.html", session, page="held", guard=guard.status(), rows=rows, notice=notice)

    def _staged(self, request: Request, session: Session, rest: list[str], form: dict[str, str]) -> Response:
        from lifecycle import operations

        notice = ""
        if rest in (["cancel"], ["run"]) or (request.method.upper() == "GET" and rest == ["confirm"]):
            source = form if form else request.query
            user, key = source.get("user_id", ""), source.get("key", "")
            if not user.isdigit() or not key:
                raise _Refused(422, "Name the staged work: user_id and key.")
            try:
                if rest == ["confirm"]:
                    pending = next(p for p in self.runtime.store.pending(user_id=int(user)) if p.key == key)
                    return self._page("staged_confirm.html", session, page="staged", p=pending)
                if rest == ["run"] and form.get("confirm") != user:
                    raise _Refused(422, "To run it now, type the person's Halo id to confirm.")
                if rest == ["cancel"]:
                    done = operations.cancel_staged(
                        self.runtime, int(user), key, by=session.name, source=SOURCE, note=form.get("note", "")
                    )
                    notice = f"Cancelled {done.key} of user {done.user_id}."
                else:
                    done = operations.run_staged_now(self.runtime, int(user), key, by=session.name, source=SOURCE)
                    notice = f"Released {done.key} of user {done.user_id} to run now."
            except (operations.OperatorError, StopIteration) as exc:
                notice = str(exc) or "That staged work is gone (done or cancelled meanwhile)."
        elif rest:
            raise _Refused(404, "No such staged-work page.")
        now = datetime.now(UTC)
        rows = self.runtime.store.pending()
        return self._page("staged.html", session, page="staged", rows=rows, now=now, notice=notice)

    def _plan(self, session: Session, form: dict[str, str]) -> Response:
        from lifecycle import operations

        values = {
            "event": form.get("event", "created"),
            "user_json": form.get("user_json", ""),
            "halo_id": form.get("halo_id", ""),
        }
        result: dict[str, Any] | None = None
        error = ""
        if form:
            try:
                user = self._preview_user(values["user_json"], values["halo_id"])
                result = operations.preview_plan(self.runtime, user, values["event"])
            except LifecycleError as exc:
                error = str(exc)
        return self._page("plan.html", session, page="plan", values=values, result=result, error=error)

    def _preview_user(self, user_json: str, halo_id: str) -> dict[str, Any]:
        from lifecycle import operations

        if user_json.strip():
            return operations.load_user_json(user_json)
        if not halo_id.strip().isdigit():
            raise operations.OperatorError("paste a Halo user (JSON) or give a Halo id")
        halo = self.runtime.halo
        if halo is None:
            raise operations.OperatorError("a Halo id needs the Halo API (LIFECYCLE_HALO_API_URL); paste the user")
        user = halo.fetch_user(int(halo_id))
        if user is None:
            raise operations.OperatorError(f"Halo has no user {halo_id}")
        from lifecycle.people import normalise_user

        return normalise_user(user)
