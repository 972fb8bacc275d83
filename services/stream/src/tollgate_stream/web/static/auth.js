// Signing in: the development IdP (local mode), OIDC/Cognito with the authorization-code
// flow and PKCE, or a pasted access token / API key. The session lives in sessionStorage.

const SESSION = "tollgate.session";
const PKCE = "tollgate.pkce";

export async function loadConfig() {
  const response = await fetch("/web/config.json");
  if (!response.ok) throw new Error(`the edge did not give its configuration (${response.status})`);
  return response.json();
}

export function savedSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION) || "null");
    if (session && session.token && !expired(session.token)) return session;
  } catch {
    // a damaged entry is no session
  }
  sessionStorage.removeItem(SESSION);
  return null;
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION, JSON.stringify(session));
}

export function forgetSession() {
  sessionStorage.removeItem(SESSION);
}

function b64urlDecode(part) {
  const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  return new TextDecoder().decode(Uint8Array.from(atob(padded), (c) => c.charCodeAt(0)));
}

export function b64url(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The claims of a JWT, or null for anything else (an API key). Not verified: the edge does. */
export function claims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    return JSON.parse(b64urlDecode(parts[1]));
  } catch {
    return null;
  }
}

function expired(token) {
  const c = claims(token);
  return c !== null && typeof c.exp === "number" && c.exp * 1000 < Date.now();
}

export async function devSignIn(user, groups) {
  const response = await fetch("/web/dev-token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user, groups }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.message || `sign-in failed (${response.status})`);
  return body.token;
}

function redirectUri() {
  return `${location.origin}/`;
}

export async function startOidc(oidc) {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  sessionStorage.setItem(PKCE, JSON.stringify({ verifier, state }));
  const url = new URL(oidc.authorizeUrl);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: oidc.clientId,
    redirect_uri: redirectUri(),
    scope: oidc.scopes,
    state,
    code_challenge: b64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
  }).toString();
  location.assign(url.toString());
}

/** After the issuer's redirect: the token for ``?code=…&state=…``, or null when there is none. */
export async function finishOidc(oidc) {
  const params = new URLSearchParams(location.search);
  const code = params.get("code");
  if (!code) return null;
  const pending = JSON.parse(sessionStorage.getItem(PKCE) || "null");
  sessionStorage.removeItem(PKCE);
  history.replaceState(null, "", location.pathname);
  if (!pending || pending.state !== params.get("state")) {
    throw new Error("the sign-in answer does not match the request: please sign in again");
  }
  const response = await fetch(oidc.tokenUrl, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code,
      redirect_uri: redirectUri(),
      client_id: oidc.clientId,
      code_verifier: pending.verifier,
    }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error_description || body.error || "sign-in failed");
  return body.access_token || body.id_token;
}

/** A random UUID; ``crypto.randomUUID`` exists only in secure contexts. */
export function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
