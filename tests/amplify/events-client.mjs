// Drives the AWS Amplify JS `events` client against a Tollgate edge, the way a web app does.
// Input: one JSON argument {endpoint, authMode, apiKey?, authToken?, sub}.
// Output: one JSON line on stdout with what the client saw; exit code 1 on any failure.
import { Amplify } from 'aws-amplify';
import { events } from 'aws-amplify/data';

const input = JSON.parse(process.argv[2]);
const auth = input.authToken ? { authToken: input.authToken } : {};
const timeout = (ms, what) =>
  new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms));

Amplify.configure({
  API: {
    Events: {
      endpoint: input.endpoint,
      region: 'us-east-1',
      defaultAuthMode: input.authMode,
      ...(input.apiKey ? { apiKey: input.apiKey } : {}),
    },
  },
});

const chat = (text, conversationId) => ({
  messages: [{ role: 'user', content: [{ text }] }],
  conversationId,
});

async function main() {
  const received = [];
  const finished = new Map();
  const waitFor = (conversationId) =>
    new Promise((resolve) => finished.set(conversationId, resolve));

  const outbound = await events.connect(`/Outbound-Messages/${input.sub}`, auth);
  const subscription = outbound.subscribe(
    {
      next: (message) => {
        received.push(message.event);
        const done = message.event.metadata || message.event.error;
        if (done && finished.has(message.event.conversationId)) {
          finished.get(message.event.conversationId)();
        }
      },
      error: (err) => {
        console.error('subscription error', JSON.stringify(err));
        process.exit(1);
      },
    },
    auth,
  );
  await Promise.race([subscription.ready, timeout(10000, 'subscribe')]);

  // publish over the WebSocket
  const inbound = await events.connect(`/Inbound-Messages/${input.sub}`, auth);
  const socketDone = waitFor('over-socket');
  // resolves (with nothing) on publish_success, rejects on publish_error
  await inbound.publish(chat('Hello over the socket', 'over-socket'), auth);
  const published = true;
  await Promise.race([socketDone, timeout(20000, 'answer to the socket publish')]);

  // publish over HTTP (POST /event)
  const httpDone = waitFor('over-http');
  const failed = await events.post(
    `/Inbound-Messages/${input.sub}`,
    chat('Hello over HTTP', 'over-http'),
    auth,
  );
  await Promise.race([httpDone, timeout(20000, 'answer to the HTTP post')]);

  // an error the client must surface: a publish to an undeclared namespace
  let rejected = null;
  try {
    const other = await events.connect(`/Undeclared/${input.sub}`, auth);
    await Promise.race([other.publish({ a: 1 }, auth), timeout(10000, 'publish error')]);
  } catch (err) {
    rejected = { name: err?.name ?? null, message: String(err?.message ?? err), errors: err?.errors ?? null };
  }

  subscription.unsubscribe();
  outbound.close();
  inbound.close();
  await events.closeAll();
  process.stdout.write(
    JSON.stringify({ published, postFailed: failed ?? null, rejected, received }) + '\n',
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err?.stack ?? JSON.stringify(err));
    process.exit(1);
  },
);
