// The AppSync Events realtime protocol, as the AWS sample's web client uses it: a WebSocket
// with the credential in the header subprotocol, one subscription, reconnecting when the
// socket drops; and the HTTP publish API.
import { b64url, uuid } from "./auth.js";

const BACKOFF_MS = [250, 500, 1000, 2000, 4000];

export class Realtime {
  constructor({ token, channel, onEvent, onState }) {
    this.token = token;
    this.channel = channel;
    this.onEvent = onEvent;
    this.onState = onState;
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.watchdog = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.watchdog);
    if (this.ws) this.ws.close();
  }

  auth() {
    return { host: location.host, Authorization: this.token };
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const header = b64url(new TextEncoder().encode(JSON.stringify(this.auth())));
    const ws = new WebSocket(`${scheme}//${location.host}/event/realtime`, [
      "aws-appsync-event-ws",
      `header-${header}`,
    ]);
    this.ws = ws;
    this.onState(this.attempt === 0 ? "connecting" : "reconnecting");
    ws.onopen = () => ws.send(JSON.stringify({ type: "connection_init" }));
    ws.onmessage = (message) => this.received(ws, JSON.parse(message.data));
    ws.onclose = () => this.closed(ws);
  }

  received(ws, message) {
    switch (message.type) {
      case "connection_ack":
        this.timeoutMs = message.connectionTimeoutMs || 300000;
        this.alive(ws);
        ws.send(JSON.stringify({
          type: "subscribe",
          id: uuid(),
          channel: this.channel,
          authorization: this.auth(),
        }));
        break;
      case "ka":
        this.alive(ws);
        break;
      case "subscribe_success":
        this.attempt = 0;
        this.onState("connected");
        break;
      case "subscribe_error":
      case "connection_error":
        this.refused(ws, message.errors || message.payload?.errors || []);
        break;
      case "data":
        this.alive(ws);
        this.onEvent(JSON.parse(message.event));
        break;
      default:
        break;
    }
  }

  refused(ws, errors) {
    const [first] = errors;
    const code = first?.errorCode;
    this.onState("refused", first?.message || first?.errorType || "the subscription was refused");
    if (code === 401 || code === 403 || first?.errorType === "Unauthorized") {
      this.stopped = true; // retrying cannot help; signing in again can
    }
    ws.close();
  }

  alive(ws) {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => ws.close(), this.timeoutMs);
  }

  closed(ws) {
    clearTimeout(this.watchdog);
    if (this.ws !== ws || this.stopped) return;
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.onState("reconnecting");
    setTimeout(() => {
      if (!this.stopped && this.ws === ws) this.connect();
    }, delay);
  }
}

/** ``POST /event``: the answer's ``{successful, failed}``, or an Error with the edge's message. */
export async function publish(token, channel, event) {
  const response = await fetch("/event", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: token },
    body: JSON.stringify({ channel, events: [JSON.stringify(event)] }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.errors?.[0]?.message || `the edge answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}
