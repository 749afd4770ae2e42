"""Issue, refresh and revoke tokens with Google's rules and Google's exact error bodies."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core.util import create_half_hash

from broker.emulator.keys import KeyRing
from broker.emulator.scopes import (
    EMAIL,
    OPENID,
    PROFILE,
    is_gmail_scope,
    normalize_scopes,
    parse_scope,
    scope_string,
)
from broker.emulator.state import (
    AccessToken,
    Account,
    AuthCode,
    EmulatorState,
    Grant,
    RefreshToken,
)

BEARER = "Bearer"  # noqa: S105 -- a token type, not a secret
CODE_LIFETIME = 600
ID_TOKEN_LIFETIME = 3600
# Google drops refresh tokens nobody used for six months.
UNUSED_REFRESH_LIMIT = 183 * 86400
EXPIRED_OR_REVOKED = "Token has been expired or revoked."
_CODE_SHAPE = re.compile(r"^4/[A-Za-z0-9_-]{20,}$")


class OAuthError(Exception):
    """A refusal with Google's `error`, `error_description` and HTTP status."""

    def __init__(self, error: str, description: str, status_code: int = 400, **extras: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code
        self.extras = extras

    def body(self) -> dict[str, str]:
        """Return the JSON body Google sends for this refusal."""
        return {"error": self.error, "error_description": self.description, **self.extras}


def missing(name: str) -> OAuthError:
    """Return Google's refusal for a missing parameter."""
    return OAuthError("invalid_request", f"Missing required parameter: {name}")


def expired_or_revoked() -> OAuthError:
    """Return the one answer Google gives for every dead refresh token."""
    return OAuthError("invalid_grant", EXPIRED_OR_REVOKED)


def _new_token(prefix: str, nbytes: int) -> str:
    return prefix + secrets.token_urlsafe(nbytes)


PRUNE_EVERY = 60


class TokenService:
    """The token, revocation and grant rules of Google's authorization server."""

    def __init__(self, state: EmulatorState, keys: KeyRing) -> None:
        self.state = state
        self.keys = keys
        self._pruned_at: int | None = None  # the emulator's clock at the last prune

    # -- authorization codes and grants -------------------------------------------------

    def record_consent(self, sub: str, client_id: str, scopes: Iterable[str]) -> list[str]:
        """Add scopes to the account's grant for a client; return what was granted before."""
        with self.state.lock:
            grant = self.state.grants.setdefault((sub, client_id), Grant(sub, client_id))
            before = list(grant.scopes)
            grant.scopes = normalize_scopes([*grant.scopes, *scopes])
            self.state.save()
            return before

    def granted(self, sub: str, client_id: str) -> list[str] | None:
        """Return the scopes of an existing grant, or None when there is none."""
        with self.state.lock:
            grant = self.state.grants.get((sub, client_id))
            return list(grant.scopes) if grant else None

    def create_code(self, **fields: Any) -> str:
        """Store a single-use authorization code and return it."""
        code = _new_token("4/0A", 54)
        with self.state.lock:
            self._prune()
            self.state.codes[code] = AuthCode(
                code=code, expires_at=self.state.now() + CODE_LIFETIME, **fields
            )
            account = self.state.accounts.get(fields["sub"])
            if account is not None:
                # The user just went through Google's sign-in, which satisfies re-authentication.
                account.reauth_required = False
                self.state.save()
        return code

    # -- the token endpoint --------------------------------------------------------------

    def authenticate(self, form: Mapping[str, str], headers: Mapping[str, str]) -> str:
        """Return the id of the client authenticated by Basic auth or by the form."""
        client_id, client_secret = extract_basic_authorization(headers)
        if client_id is None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if not client_id:
            raise OAuthError("invalid_request", "Could not determine client ID from request.")
        with self.state.lock:
            client = self.state.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "The OAuth client was not found.", 401)
        if not client_secret:
            raise OAuthError("invalid_request", "client_secret is missing.")
        if not hmac.compare_digest(client.client_secret.encode(), client_secret.encode()):
            raise OAuthError("invalid_client", "Unauthorized", 401)
        return str(client_id)

    def token(
        self, form: Mapping[str, str], headers: Mapping[str, str], issuer: str
    ) -> dict[str, Any]:
        """Answer one token request, or raise the refusal Google would give."""
        grant_type = form.get("grant_type")
        if not grant_type:
            raise missing("grant_type")
        if grant_type not in ("authorization_code", "refresh_token"):
            shown = re.sub(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]", "?", grant_type)[:100]
            raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {shown}")
        client_id = self.authenticate(form, headers)
        if grant_type == "authorization_code":
            return self._exchange_code(client_id, form, issuer)
        return self._refresh(client_id, form, issuer)

    def _exchange_code(
        self, client_id: str, form: Mapping[str, str], issuer: str
    ) -> dict[str, Any]:
        raw = form.get("code")
        if not raw:
            raise missing("code")
        redirect_uri = form.get("redirect_uri")
        if not redirect_uri:
            raise missing("redirect_uri")
        with self.state.lock:
            code = self.state.codes.get(raw)
            if code is None or not _CODE_SHAPE.match(raw):
                raise OAuthError("invalid_grant", "Malformed auth code.")
            if code.used or code.client_id != client_id or code.expires_at <= self.state.now():
                raise OAuthError("invalid_grant", "Bad Request")
            if redirect_uri != code.redirect_uri:
                raise OAuthError("redirect_uri_mismatch", "Bad Request")
            _check_verifier(code, form.get("code_verifier"))
            account = self.state.accounts.get(code.sub)
            if account is None:
                raise OAuthError("invalid_grant", "Bad Request")
            code.used = True
            return self.issue(
                account,
                client_id,
                code.scopes,
                access_type=code.access_type,
                refresh=code.with_refresh_token,
                nonce=code.nonce,
                issuer=issuer,
            )

    def _refresh(self, client_id: str, form: Mapping[str, str], issuer: str) -> dict[str, Any]:
        raw = form.get("refresh_token")
        if not raw:
            raise missing("refresh_token")
        with self.state.lock:
            token = self.state.refresh_tokens.get(raw)
            if token is None:
                raise expired_or_revoked()
            if token.client_id != client_id:
                raise OAuthError("unauthorized_client", "Unauthorized", 401)
            now = self.state.now()
            account = self.state.accounts.get(token.sub)
            dead = (token.expires_at is not None and token.expires_at <= now) or (
                now - token.last_used > UNUSED_REFRESH_LIMIT
            )
            if dead or account is None:
                del self.state.refresh_tokens[raw]
                self.state.save()
                raise expired_or_revoked()
            if account.reauth_required:
                raise OAuthError(
                    "invalid_grant",
                    "reauth related error (invalid_rapt)",
                    error_uri="https://support.google.com/a/answer/9368756",
                    error_subtype="invalid_rapt",
                )
            scopes = list(token.scopes)
            if form.get("scope"):
                asked = parse_scope(form["scope"])
                outside = [s for s in asked if s not in token.scopes]
                if outside:
                    raise OAuthError(
                        "invalid_scope",
                        "Some requested scopes were not granted: " + " ".join(outside),
                    )
                scopes = asked
            token.last_used = now
            answer = self.issue(
                account, client_id, scopes, access_type="offline", refresh=False, issuer=issuer
            )
            if token.expires_at is not None:
                answer["refresh_token_expires_in"] = token.expires_at - now
            return answer

    def issue(
        self,
        account: Account,
        client_id: str,
        scopes: list[str],
        *,
        access_type: str,
        refresh: bool,
        issuer: str,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """Create an access token (and maybe a refresh token) and return the token answer."""
        with self.state.lock:
            self._prune()
            now = self.state.now()
            lifetime = int(self.state.settings["access_token_lifetime"])
            access = AccessToken(
                token=_new_token("ya29.a0", 120),
                sub=account.sub,
                client_id=client_id,
                scopes=list(scopes),
                issued_at=now,
                expires_at=now + lifetime,
                access_type=access_type,
            )
            self.state.access_tokens[access.token] = access
            answer: dict[str, Any] = {"access_token": access.token, "expires_in": lifetime}
            refresh_token = None
            if refresh:
                refresh_token = self._new_refresh_token(account.sub, client_id, scopes, now)
                answer["refresh_token"] = refresh_token.token
            answer["scope"] = scope_string(scopes)
            answer["token_type"] = BEARER
            if OPENID in scopes:
                answer["id_token"] = self.id_token(
                    account, client_id, scopes, issuer, nonce=nonce, access_token=access.token
                )
            if refresh_token is not None and refresh_token.expires_at is not None:
                answer["refresh_token_expires_in"] = refresh_token.expires_at - now
            self.state.save()
            return answer

    def _new_refresh_token(
        self, sub: str, client_id: str, scopes: list[str], now: int
    ) -> RefreshToken:
        # The caller's `now`, so the answer's `refresh_token_expires_in` is exactly the TTL.
        ttl = self.state.settings.get("testing_refresh_ttl")
        token = RefreshToken(
            token=_new_token("1//0", 75),
            sub=sub,
            client_id=client_id,
            scopes=list(scopes),
            issued_at=now,
            last_used=now,
            expires_at=now + int(ttl) if ttl else None,
        )
        self.state.refresh_tokens[token.token] = token
        # Dicts keep insertion order, so the first ones listed are the oldest.
        mine = [
            t
            for t in self.state.refresh_tokens.values()
            if (t.sub, t.client_id) == (sub, client_id)
        ]
        limit = int(self.state.settings["refresh_token_limit"])
        for old in mine[: max(0, len(mine) - limit)]:
            del self.state.refresh_tokens[old.token]
        return token

    def id_token(
        self,
        account: Account,
        client_id: str,
        scopes: Iterable[str],
        issuer: str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        """Return a signed id_token with the claims Google includes for these scopes."""
        scopes = set(scopes)
        now = self.state.now()
        claims: dict[str, Any] = {"iss": issuer, "azp": client_id, "aud": client_id}
        claims["sub"] = account.sub
        if account.hd:
            claims["hd"] = account.hd
        if EMAIL in scopes:
            claims["email"] = account.email
            claims["email_verified"] = account.email_verified
        if access_token:
            claims["at_hash"] = create_half_hash(access_token, "RS256").decode("ascii")
        if nonce:
            claims["nonce"] = nonce
        if PROFILE in scopes:
            claims.update(profile_claims(account, issuer))
        claims["iat"] = now
        claims["exp"] = now + ID_TOKEN_LIFETIME
        return self.keys.sign(claims)

    # -- lookups and the user's own actions ---------------------------------------------

    def active_access_token(self, raw: str | None) -> AccessToken | None:
        """Return the access token when it exists and has not expired."""
        if not raw:
            return None
        with self.state.lock:
            token = self.state.access_tokens.get(raw)
            if token is None or token.expires_at <= self.state.now():
                return None
            return token

    def revoke(self, raw: str | None) -> None:
        """Revoke the grant behind an access or refresh token."""
        if not raw:
            raise missing("token")
        with self.state.lock:
            holder = self.state.refresh_tokens.get(raw) or self.state.access_tokens.get(raw)
            if holder is None:
                raise OAuthError("invalid_token", "Token expired or revoked")
            self.revoke_account(holder.sub)

    def revoke_account(self, sub: str) -> None:
        """Kill every grant, refresh token and access token of one account."""
        with self.state.lock:
            self.state.grants = {k: g for k, g in self.state.grants.items() if g.sub != sub}
            for table in (self.state.refresh_tokens, self.state.access_tokens, self.state.codes):
                for key in [k for k, v in table.items() if v.sub == sub]:
                    del table[key]
            self.state.save()

    def password_changed(self, sub: str) -> int:
        """Kill the account's refresh tokens that carry a Gmail scope; return how many."""
        with self.state.lock:
            doomed = [
                t.token
                for t in self.state.refresh_tokens.values()
                if t.sub == sub and any(is_gmail_scope(s) for s in t.scopes)
            ]
            for raw in doomed:
                del self.state.refresh_tokens[raw]
            self.state.save()
            return len(doomed)

    def expire_access_tokens(self, sub: str | None = None) -> int:
        """Make current access tokens (all, or one account's) expired; return how many."""
        with self.state.lock:
            now = self.state.now()
            hit = 0
            for token in self.state.access_tokens.values():
                if (sub is None or token.sub == sub) and token.expires_at > now:
                    token.expires_at = now
                    hit += 1
            self.state.save()
            return hit

    def _prune(self) -> None:
        # Forget long-dead access tokens and codes so the state file stays small. At most once
        # a minute of the emulator's clock: a scan per token issued made a benchmark's 10,000
        # refreshes quadratic, and what is pruned is an hour dead anyway.
        now = self.state.now()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        for raw in [k for k, t in self.state.access_tokens.items() if t.expires_at < now - 3600]:
            del self.state.access_tokens[raw]
        for raw in [k for k, c in self.state.codes.items() if c.expires_at < now - 3600]:
            del self.state.codes[raw]


def profile_claims(account: Account, issuer: str) -> dict[str, str]:
    """Return the `profile` scope's claims of an account."""
    given, _, family = account.name.partition(" ")
    claims = {"name": account.name, "picture": f"{issuer}/picture/{account.sub}.svg"}
    claims["given_name"] = given
    if family:
        claims["family_name"] = family
    return claims


def _check_verifier(code: AuthCode, verifier: str | None) -> None:
    if not code.code_challenge:
        return
    if not verifier:
        raise OAuthError("invalid_grant", "Missing code verifier.")
    if code.code_challenge_method == "S256":
        expected = create_s256_code_challenge(verifier)
    else:
        expected = verifier
    if not hmac.compare_digest(expected.encode(), code.code_challenge.encode()):
        raise OAuthError("invalid_grant", "Invalid code verifier.")
