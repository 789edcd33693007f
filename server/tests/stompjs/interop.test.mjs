// The TaskPulse broker driven by the real @stomp/stompjs 7 client (as the seed's browser code
// uses it), on Node with the `ws` package. `cargo xtask test` starts the server and sets:
//   TASKPULSE_WS_URL      ws://127.0.0.1:PORT/ws
//   TASKPULSE_JWT_SECRET  the HS256 secret the server validates with
//   TASKPULSE_HTTP_URL    http://127.0.0.1:PORT, for the task API
//   TASKPULSE_BACKEND_PASSCODE  the passcode of the configured login `backend`
// The server is configured so that the configured login `backend` may SEND to /user/** and
// /topic/** (rights bind to configured identities, never to a registrable name).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

const URL = process.env.TASKPULSE_WS_URL;
const SECRET = process.env.TASKPULSE_JWT_SECRET;
const HTTP = process.env.TASKPULSE_HTTP_URL;
const BACKEND_PASSCODE = process.env.TASKPULSE_BACKEND_PASSCODE;
assert.ok(URL && SECRET && HTTP && BACKEND_PASSCODE, 'TASKPULSE_WS_URL, TASKPULSE_JWT_SECRET, TASKPULSE_HTTP_URL and TASKPULSE_BACKEND_PASSCODE must be set');

const b64url = (data) => Buffer.from(data).toString('base64url');

function token(sub, expiresInSeconds = 3600) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + expiresInSeconds;
  const payload = b64url(JSON.stringify({ sub, exp }));
  const signature = createHmac('sha256', SECRET).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/** A stompjs Client exactly as a browser app configures it, minus reconnects. */
function client(user, options = {}) {
  return new Client({
    webSocketFactory: () => new WebSocket(URL, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
    connectHeaders: { Authorization: `Bearer ${options.token ?? token(user)}` },
    reconnectDelay: 0,
    heartbeatIncoming: options.heartbeatIncoming ?? 4000,
    heartbeatOutgoing: options.heartbeatOutgoing ?? 4000,
    debug: () => {},
    ...options.extra,
  });
}

/** Activates `c` and resolves with the CONNECTED frame; rejects on ERROR or close. */
function connect(c) {
  return new Promise((resolve, reject) => {
    c.onConnect = resolve;
    c.onStompError = (frame) => reject(new Error(`ERROR ${frame.headers.message}: ${frame.body}`));
    c.onWebSocketClose = () => reject(new Error('socket closed before CONNECTED'));
    c.activate();
  });
}

/** Resolves with the next `n` messages delivered to `destination`. */
function collect(c, destination, n, headers = {}) {
  const messages = [];
  let done;
  const promise = new Promise((resolve) => (done = resolve));
  const subscription = c.subscribe(
    destination,
    (message) => {
      messages.push(message);
      if (messages.length === n) done(messages);
    },
    headers,
  );
  return { promise, subscription };
}

/** Publishes with a receipt and resolves once the server has processed the frame. */
function publishWithReceipt(c, params) {
  const receipt = `r-${Math.random().toString(36).slice(2)}`;
  return new Promise((resolve) => {
    c.watchForReceipt(receipt, resolve);
    c.publish({ ...params, headers: { ...(params.headers ?? {}), receipt } });
  });
}

/** Subscribes with a receipt, so that later publishes are known to reach it. */
function subscribed(c, destination, headers = {}) {
  const receipt = `s-${Math.random().toString(36).slice(2)}`;
  return new Promise((resolve) => {
    c.watchForReceipt(receipt, resolve);
    c.subscribe(destination, () => {}, { ...headers, receipt });
  });
}

const within = (ms, promise, what) =>
  Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
  ]);

test('CONNECTED carries version, session, server and user-name', async () => {
  const alice = client('alice');
  const frame = await connect(alice);
  assert.equal(frame.headers.version, '1.2');
  assert.equal(frame.headers['user-name'], 'alice');
  assert.match(frame.headers.server, /^TaskPulse\//);
  assert.ok(frame.headers.session);
  assert.equal(frame.headers['heart-beat'], '4000,4000');
  await alice.deactivate();
});

test('per-user queue: every session of the user gets the task update, nobody else does', async () => {
  const tab1 = client('alice');
  const tab2 = client('alice');
  const bob = client('bob');
  const backend = client('backend', {
    extra: { connectHeaders: { login: 'backend', passcode: BACKEND_PASSCODE } },
  });
  await Promise.all([connect(tab1), connect(tab2), connect(bob), connect(backend)]);
  const got1 = collect(tab1, '/user/queue/tasks-progress', 1);
  const got2 = collect(tab2, '/user/queue/tasks-progress', 1);
  const bobMessages = [];
  bob.subscribe('/user/queue/tasks-progress', (m) => bobMessages.push(m));
  // Receipts on a later frame prove the subscriptions are in place.
  await Promise.all([subscribed(tab1, '/topic/sync'), subscribed(tab2, '/topic/sync'), subscribed(bob, '/topic/sync')]);

  const dto = { taskNo: 'T-1', status: 'processing', progress: 40, message: 'rendering' };
  await publishWithReceipt(backend, {
    destination: '/user/alice/queue/tasks-progress',
    body: JSON.stringify(dto),
    headers: { 'content-type': 'application/json' },
  });
  for (const [message] of await within(5000, Promise.all([got1.promise, got2.promise]), 'alice tabs')) {
    assert.deepEqual(JSON.parse(message.body), dto);
    assert.equal(message.headers.destination, '/user/queue/tasks-progress');
    assert.equal(message.headers['content-type'], 'application/json');
  }
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(bobMessages.length, 0);
  await Promise.all([tab1.deactivate(), tab2.deactivate(), bob.deactivate(), backend.deactivate()]);
});

test('topic broadcast with receipts reaches every subscriber in order', async () => {
  const a = client('a');
  const b = client('b');
  await Promise.all([connect(a), connect(b)]);
  const gotA = collect(a, '/topic/chat.lobby', 20);
  const gotB = collect(b, '/topic/chat.lobby', 20);
  await Promise.all([subscribed(a, '/topic/chat.sync'), subscribed(b, '/topic/chat.sync')]);
  for (let i = 0; i < 20; i++) a.publish({ destination: '/topic/chat.lobby', body: `line ${i}` });
  const [ma, mb] = await within(5000, Promise.all([gotA.promise, gotB.promise]), 'broadcast');
  assert.deepEqual(ma.map((m) => m.body), [...Array(20).keys()].map((i) => `line ${i}`));
  assert.deepEqual(mb.map((m) => m.body), ma.map((m) => m.body));
  await Promise.all([a.deactivate(), b.deactivate()]);
});

test('binary bodies with NUL bytes survive the round trip', async () => {
  const c = client('carol');
  await connect(c);
  const got = collect(c, '/queue/blobs', 1);
  await subscribed(c, '/topic/x');
  const bytes = new Uint8Array([0, 1, 2, 0, 250, 0]);
  c.publish({ destination: '/queue/blobs', binaryBody: bytes, headers: { 'content-type': 'application/octet-stream' } });
  const [message] = await within(5000, got.promise, 'binary message');
  assert.deepEqual([...message.binaryBody], [...bytes]);
  await c.deactivate();
});

test('queue with client-individual ack: NACK redelivers to the other consumer', async () => {
  const first = client('w1');
  const second = client('w2');
  const producer = client('p');
  await Promise.all([connect(first), connect(second), connect(producer)]);
  let nacked;
  const redelivered = new Promise((resolve) => {
    second.subscribe('/queue/work', (m) => { if (m.headers.redelivered === 'true') resolve(m); else m.ack(); }, { ack: 'client-individual' });
  });
  const firstGot = new Promise((resolve) => {
    first.subscribe('/queue/work', (m) => { if (!nacked) { nacked = m; m.nack(); resolve(m); } else m.ack(); }, { ack: 'client-individual' });
  });
  await Promise.all([subscribed(first, '/topic/y'), subscribed(second, '/topic/y')]);
  for (let i = 0; i < 4; i++) producer.publish({ destination: '/queue/work', body: `job ${i}` });
  const original = await within(5000, firstGot, 'first delivery');
  const again = await within(5000, redelivered, 'redelivery');
  assert.equal(again.body, original.body);
  assert.equal(again.headers['message-id'], original.headers['message-id']);
  await Promise.all([first.deactivate(), second.deactivate(), producer.deactivate()]);
});

test('transactions: nothing is delivered before commit, aborted sends never', async () => {
  const c = client('tx');
  await connect(c);
  const seen = [];
  c.subscribe('/queue/tx', (m) => seen.push(m.body));
  await subscribed(c, '/topic/z');
  const aborted = c.begin();
  c.publish({ destination: '/queue/tx', body: 'aborted', headers: { transaction: aborted.id } });
  aborted.abort();
  const tx = c.begin();
  c.publish({ destination: '/queue/tx', body: 'one', headers: { transaction: tx.id } });
  c.publish({ destination: '/queue/tx', body: 'two', headers: { transaction: tx.id } });
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(seen, []);
  tx.commit();
  await within(5000, (async () => { while (seen.length < 2) await new Promise((r) => setTimeout(r, 20)); })(), 'commit');
  assert.deepEqual(seen, ['one', 'two']);
  await c.deactivate();
});

test('heart-beats keep an idle connection open', async () => {
  const c = client('idle', { heartbeatIncoming: 1000, heartbeatOutgoing: 1000 });
  let closed = false;
  await connect(c);
  c.onWebSocketClose = () => { closed = true; };
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(closed, false);
  assert.ok(c.connected);
  await c.deactivate();
});

test('a bad or expired token gets ERROR "authentication failed"', async () => {
  for (const bad of ['not-a-token', token('alice', -120)]) {
    const c = client('alice', { token: bad });
    const error = await within(5000, connect(c).then(() => null, (e) => e), 'auth error');
    assert.ok(error, 'must not connect');
    assert.match(error.message, /ERROR authentication failed/);
    await c.deactivate();
  }
});

test("another user's private destination is refused with an ERROR", async () => {
  const c = client('mallory');
  await connect(c);
  const error = new Promise((resolve) => (c.onStompError = resolve));
  c.subscribe('/user/alice/queue/tasks-progress', () => {});
  const frame = await within(5000, error, 'ERROR frame');
  assert.equal(frame.headers.message, 'invalid destination');
  assert.match(frame.body, /belongs to another user/);
  await c.deactivate();
});

/** POSTs JSON to the task API; resolves with [status, parsed body]. */
async function post(path, body, bearer) {
  const headers = { 'content-type': 'application/json' };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const response = await fetch(`${HTTP}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
  return [response.status, await response.json()];
}

test('a signed-in user submits a task and watches it from created to a PNG result', async () => {
  const username = `interop${Date.now()}`;
  const [registered, account] = await post('/api/auth/register', { username, password: 'interop-password' });
  assert.equal(registered, 201, JSON.stringify(account));
  const [loggedIn, login] = await post('/api/auth/login', { username, password: 'interop-password' });
  assert.equal(loggedIn, 200, JSON.stringify(login));
  assert.ok(login.expiresIn > 0);

  const c = client(username, { token: login.token });
  await within(5000, connect(c), 'CONNECTED');
  const updates = [];
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  const receipt = 'tasks-subscribed';
  const subscribedNow = new Promise((resolve) => c.watchForReceipt(receipt, resolve));
  c.subscribe(
    '/user/queue/tasks-progress',
    (message) => {
      const update = JSON.parse(message.body);
      updates.push(update);
      if (update.status === 'completed' || update.status === 'failed') finished(update);
    },
    { receipt },
  );
  await within(5000, subscribedNow, 'subscription receipt');

  const [accepted, submitted] = await post(
    '/api/tasks',
    { kind: 'text-to-image', prompt: 'a lighthouse drawn by stompjs', aspectRatio: '1:1' },
    login.token,
  );
  assert.equal(accepted, 202, JSON.stringify(submitted));
  const last = await within(20000, done, 'terminal status');
  const mine = updates.filter((u) => u.taskNo === submitted.taskNo);
  const statuses = [...new Set(mine.map((u) => u.status))];
  assert.deepEqual(statuses, ['created', 'queued', 'processing', 'completed']);
  assert.equal(last.progress, 100);
  assert.ok(last.resultUrl.startsWith(`/api/tasks/${submitted.taskNo}/result?`), last.resultUrl);

  const image = await fetch(`${HTTP}${last.resultUrl}`);
  assert.equal(image.status, 200);
  assert.equal(image.headers.get('content-type'), 'image/png');
  const bytes = Buffer.from(await image.arrayBuffer());
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  await c.deactivate();
});
