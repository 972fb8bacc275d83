// The page: sign in, pick a model, chat over the AppSync protocol, watch usage.
import {
  claims, devSignIn, finishOidc, forgetSession, loadConfig, savedSession, saveSession, startOidc, uuid,
} from "./auth.js";
import { publish, Realtime } from "./appsync.js";
import { renderAdmin, renderUsage } from "./usage.js";

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  session: null,
  realtime: null,
  conversation: null,
  answers: new Map(), // request id → its bubble in the log
  sent: new Map(), // request id → the user message it carried
  shownErrors: new Set(),
  admin: false,
};

function newConversation() {
  return { id: uuid(), messages: [] };
}

async function api(path, token = state.session?.token) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${token}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error?.message || `${path} answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- alerts ---------------------------------------------------------------------------

function showAlert(text) {
  const alert = document.createElement("div");
  alert.setAttribute("role", "alert");
  alert.textContent = text;
  const alerts = $("alerts");
  alerts.append(alert);
  while (alerts.children.length > 3) alerts.firstElementChild.remove();
}

function seconds(total) {
  const s = Math.max(0, Math.ceil(total));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

/** The plain sentence for an error the gateway sent. */
export function describe(error) {
  const details = error.details || {};
  switch (error.type) {
    case "token_limit_exceeded": {
      const retry = details.retry_after_s ?? details.retry_after;
      if (retry === null || retry === undefined) return `Limit reached: ${error.message}.`;
      const at = new Date(Date.now() + retry * 1000).toLocaleTimeString();
      return `Limit reached: ${error.message}. Try again in ${seconds(retry)} (at ${at}).`;
    }
    case "model_not_allowed":
    case "model_not_found":
      return `Model refused: ${error.message}`;
    case "unauthorized":
      return `Not signed in: ${error.message}. Please sign in again.`;
    case "validation_error":
      return `Request refused: ${error.message}`;
    default:
      return `Service unavailable: ${error.message}. Please try again shortly.`;
  }
}

function failed(error) {
  if (error.requestId) {
    if (state.shownErrors.has(error.requestId)) return;
    state.shownErrors.add(error.requestId);
    forget(error.requestId);
  }
  showAlert(describe(error));
  if (error.type === "token_limit_exceeded") refreshUsage();
}

function forget(requestId) {
  // a refused request's message leaves the history, so the next one is not sent twice
  const message = state.sent.get(requestId);
  const index = state.conversation.messages.indexOf(message);
  if (index >= 0) state.conversation.messages.splice(index, 1);
  state.sent.delete(requestId);
}

// --- the conversation ---------------------------------------------------------------------

function turn(role, text) {
  const element = document.createElement("div");
  element.className = `turn ${role}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  element.append(body);
  $("log").append(element);
  $("log").scrollTop = $("log").scrollHeight;
  return element;
}

function answer(requestId) {
  let element = state.answers.get(requestId);
  if (!element) {
    element = turn("assistant", "");
    element.dataset.requestId = requestId;
    element.setAttribute("aria-busy", "true");
    state.answers.set(requestId, element);
  }
  return element;
}

function received(event) {
  if (event.error) {
    if (!event.conversationId || event.conversationId === state.conversation.id) failed(event.error);
    return;
  }
  if (event.metadata) usageFrom(event);
  if (event.conversationId !== state.conversation.id || !event.requestId) return;
  const element = answer(event.requestId);
  const text = element.querySelector(".text");
  if (event.contentBlockDelta?.delta?.text) {
    text.textContent += event.contentBlockDelta.delta.text;
    $("log").scrollTop = $("log").scrollHeight;
  }
  if (event.messageStop) element.removeAttribute("aria-busy");
  if (event.metadata) finished(event, element, text.textContent);
}

function finished(event, element, text) {
  state.conversation.messages.push({ role: "assistant", content: [{ text }] });
  state.sent.delete(event.requestId);
  const usage = event.metadata.usage || {};
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${usage.inputTokens ?? 0} in · ${usage.outputTokens ?? 0} out tokens`;
  element.append(meta);
  element.removeAttribute("aria-busy");
}

function usageFrom(event) {
  const usage = event.tokenUsage;
  if (usage?.windows) {
    renderUsage($("windows"), usage.windows);
    if (usage.tier) $("tier").textContent = `Tier: ${usage.tier}`;
    const [warning] = usage.warnings || [];
    $("usage-note").textContent = warning
      ? `${warning.window}: ${Math.round(warning.fraction * 100)} % of the ${warning.dimension} limit used`
      : "";
    $("usage-note").className = warning ? "warning" : "";
  } else {
    refreshUsage();
  }
  if (state.admin) refreshAdmin();
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || !state.session || $("send").disabled) return;
  $("message").value = "";
  turn("user", text);
  const message = { role: "user", content: [{ text }] };
  const conversation = state.conversation;
  conversation.messages.push(message);
  const { inboundNamespace } = state.config;
  const channel = `/${inboundNamespace}/${state.session.principal}/${conversation.id}`;
  const payload = { messages: conversation.messages, conversationId: conversation.id };
  if ($("model").value) payload.modelId = $("model").value;
  try {
    const result = await publish(state.session.token, channel, payload);
    for (const ok of result.successful || []) state.sent.set(ok.identifier, message);
    for (const refused of result.failed || []) {
      state.sent.set(refused.identifier, message);
      failed({ ...publishError(refused), requestId: refused.identifier });
    }
  } catch (error) {
    conversation.messages.splice(conversation.messages.indexOf(message), 1);
    const type = error.status === 401 ? "unauthorized" : error.status === 403 ? "model_not_allowed"
      : error.status === 400 ? "validation_error" : "service_unavailable";
    failed({ type, message: error.message });
  }
}

function publishError(refused) {
  const types = { 400: "validation_error", 403: "model_not_allowed", 413: "validation_error" };
  return { type: types[refused.errorCode] || "service_unavailable", message: refused.errorMessage };
}

function newChat() {
  state.conversation = newConversation();
  state.answers.clear();
  state.sent.clear();
  $("log").replaceChildren();
  $("alerts").replaceChildren();
  $("message").focus();
}

// --- usage, models, admin -----------------------------------------------------------------

async function refreshUsage() {
  try {
    const report = await api("/v1/usage/me");
    renderUsage($("windows"), report.windows || []);
    $("tier").textContent = report.tier ? `Tier: ${report.tier}` : "";
  } catch (error) {
    $("usage-note").textContent = `Usage unavailable: ${error.message}`;
  }
}

async function refreshAdmin() {
  try {
    const overview = await api("/v1/admin/usage?top=100");
    renderAdmin($("admin-principals").tBodies[0], $("admin-models").tBodies[0], overview);
    state.admin = true;
    $("admin").hidden = false;
  } catch (error) {
    state.admin = false;
    $("admin").hidden = true;
  }
}

async function loadModels() {
  try {
    const models = await api("/v1/models");
    const select = $("model");
    const wanted = localStorage.getItem("tollgate.model");
    select.replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    if (wanted && models.data.some((m) => m.id === wanted)) select.value = wanted;
  } catch (error) {
    failed({ type: error.status === 401 ? "unauthorized" : "service_unavailable", message: error.message });
  }
}

// --- signing in and out -------------------------------------------------------------------

const STATES = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  refused: "Not connected",
};

function connectionState(name, detail) {
  $("connection").textContent = STATES[name] || name;
  $("connection").dataset.state = name;
  $("send").disabled = name !== "connected";
  if (name === "refused") failed({ type: "unauthorized", message: detail });
}

async function sessionFor(token, user) {
  const c = claims(token);
  let principal = c?.sub || user;
  if (!principal) principal = (await api("/v1/usage/me", token)).principal;
  return { token, principal };
}

function begin(session) {
  state.session = session;
  saveSession(session);
  state.conversation = newConversation();
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `Signed in as ${session.principal}`;
  const { outboundNamespace } = state.config;
  state.realtime = new Realtime({
    token: session.token,
    channel: `/${outboundNamespace}/${session.principal}/*`,
    onEvent: received,
    onState: connectionState,
  });
  state.realtime.start();
  loadModels();
  refreshUsage();
  refreshAdmin();
}

function signOut() {
  state.realtime?.stop();
  forgetSession();
  state.session = null;
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("who").textContent = "";
  $("connection").textContent = "Signed out";
  $("log").replaceChildren();
  $("windows").replaceChildren();
}

function showSignIn() {
  const mode = state.config.signIn;
  $("local-sign-in").hidden = mode !== "local";
  $("token-sign-in").hidden = mode !== "token";
  $("oidc-sign-in").hidden = mode !== "oidc";
  $("sign-in").hidden = false;
}

async function signInWith(getToken, user) {
  try {
    begin(await sessionFor(await getToken(), user));
  } catch (error) {
    showSignInError(error.message);
  }
}

function showSignInError(text) {
  const alert = document.createElement("div");
  alert.setAttribute("role", "alert");
  alert.textContent = `Sign-in failed: ${text}`;
  $("sign-in").querySelectorAll("[role=alert]").forEach((a) => a.remove());
  $("sign-in").append(alert);
}

function wire() {
  $("local-sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user").value.trim();
    const groups = $("groups").value.split(",").map((g) => g.trim()).filter(Boolean);
    signInWith(() => devSignIn(user, groups), user);
  });
  $("token-sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    signInWith(async () => token);
  });
  $("oidc-button").addEventListener("click", () => startOidc(state.config.oidc));
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("model").addEventListener("change", () => localStorage.setItem("tollgate.model", $("model").value));
  $("new-conversation").addEventListener("click", newChat);
  $("sign-out").addEventListener("click", signOut);
  $("admin-refresh").addEventListener("click", refreshAdmin);
}

async function main() {
  wire();
  try {
    state.config = await loadConfig();
  } catch (error) {
    showSignInError(error.message);
    return;
  }
  let session = savedSession();
  if (!session && state.config.signIn === "oidc") {
    try {
      const token = await finishOidc(state.config.oidc);
      if (token) session = await sessionFor(token);
    } catch (error) {
      showSignInError(error.message);
    }
  }
  if (session) begin(session);
  else showSignIn();
}

main();
