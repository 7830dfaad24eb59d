// @ts-check
// A whole session against the real sidecar over real pipes, with real fake providers.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  InvalidParamsError,
  MethodNotFoundError,
  PROTOCOL_VERSION,
  RequestCancelledError,
  SidecarClosedError,
  SidecarHost,
  SidecarRpcError,
} from '../index.js';
import { SIDECAR_ENV, pidAlive, sidecarCommand, startProviders, waitFor } from './helpers.js';

/** @type {{ dir: string, stop: () => Promise<void> }} */ let data;
/** @type {SidecarHost} */ let host;
/** @type {string[]} */ const stderr = [];
/** @type {import('../types.js').SidecarReadyNotification} */ let ready;

const SLOW = { provider: 'slow', fallback: false };

before(async () => {
  data = await startProviders();
  const { command, args } = sidecarCommand();
  host = new SidecarHost({ command, args, dataDir: data.dir, env: SIDECAR_ENV });
  host.on('stderr', (line) => stderr.push(line));
});

after(async () => {
  await host?.close();
  await data?.stop();
});

test('start: sidecar:ready handshake with protocol version 1', async () => {
  ready = await host.start();
  assert.equal(ready.protocolVersion, PROTOCOL_VERSION);
  assert.equal(typeof ready.version, 'string');
  assert.ok(ready.channels.includes('model:stream'), `channels: ${ready.channels}`);
  assert.equal(typeof ready.pid, 'number');
  assert.equal(host.state, 'ready');
  assert.ok(pidAlive(host.pid));
  assert.deepEqual(host.readyInfo, ready);
  // A second start() is the same sidecar.
  assert.equal((await host.start()).pid, ready.pid);
});

test('generate returns the fake provider\'s answer', async () => {
  const response = await host.generate({ request: { prompt: 'Say hello' } });
  assert.equal(response.content, 'Hello from the fake.');
  assert.equal(response.metadata.provider, 'fake');
  assert.equal(response.finishReason, 'stop');
});

test('stream: chunks in order, ending with done, content equals their concatenation', async () => {
  const stream = host.stream({ request: { prompt: 'Say hello, streaming' } });
  assert.equal(typeof stream.id, 'number');
  /** @type {import('../types.js').StreamingChunk[]} */
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const response = await stream.result;
  assert.ok(chunks.length >= 3, `chunks: ${JSON.stringify(chunks)}`);
  assert.equal(chunks.at(-1)?.done, true);
  assert.equal(chunks.at(-1)?.content, '');
  assert.ok(chunks.slice(0, -1).every((c) => !c.done));
  const joined = chunks.map((c) => c.content).join('');
  assert.equal(joined, 'Hello from the fake.');
  assert.equal(response.content, joined);
  assert.equal(stream.content, joined);
  assert.equal(stream.response, response);
});

test('stream: the iterator\'s return value is the final response', async () => {
  const stream = host.stream({ request: { prompt: 'again' } });
  const iterator = stream[Symbol.asyncIterator]();
  let step;
  while (!(step = await iterator.next()).done);
  assert.equal(step.value?.content, 'Hello from the fake.');
  assert.equal(step.value, await stream.result);
});

test('health: the fake is available, the other providers are disabled', async () => {
  const health = await host.health();
  assert.equal(health.providers.fake?.available, true, JSON.stringify(health.providers.fake));
  assert.equal(health.providers.fake?.enabled, true);
  for (const name of ['openai', 'anthropic', 'ollama']) {
    assert.equal(health.providers[name]?.enabled, false, `${name}: ${JSON.stringify(health.providers[name])}`);
  }
  if (health.providers['local-llm']) assert.equal(health.providers['local-llm'].enabled, false);
});

test('list-models: the fake\'s model is listed and available', async () => {
  const { models } = await host.listModels({ refresh: true });
  const mine = models.find((m) => m.provider === 'fake' && m.id === 'fake-model');
  assert.ok(mine, JSON.stringify(models));
  assert.equal(mine.available, true);
  assert.ok(!models.some((m) => ['openai', 'anthropic', 'ollama', 'local-llm'].includes(m.provider)), JSON.stringify(models));
});

test('request(): generic calls, typed JSON-RPC errors', async () => {
  const config = await host.request('model:get-config', {});
  assert.equal(config.defaultProvider, 'fake');
  const usage = await host.usage();
  assert.equal(typeof usage.daily.spentUsd, 'number');

  const unknown = await host.request('model:nope', {}).catch((e) => e);
  assert.ok(unknown instanceof MethodNotFoundError, String(unknown));
  assert.ok(unknown instanceof SidecarRpcError);
  assert.equal(unknown.code, -32601);
  assert.equal(unknown.type, 'MethodNotFound');
  assert.equal(unknown.retryable, false);

  const bad = await host.request('model:generate', { request: { prompt: 'x', maxTokens: '12' } }).catch((e) => e);
  assert.ok(bad instanceof InvalidParamsError, String(bad));
  assert.equal(bad.code, -32602);
  assert.equal(bad.data.type, 'InvalidParams');
  assert.ok(bad.errors.some((e) => e.path === '/request/maxTokens'), JSON.stringify(bad.errors));
});

test('cancel of a slow stream: RequestCancelled (-32800) with the partial content', async () => {
  const stream = host.stream({ request: { prompt: 'a long answer please' }, selection: SLOW });
  /** @type {string[]} */
  const seen = [];
  /** @type {unknown} */
  let thrown;
  try {
    for await (const chunk of stream) {
      seen.push(chunk.content);
      if (seen.length === 3) assert.equal(host.cancel(stream.id), true);
    }
  } catch (error) {
    thrown = error;
  }
  assert.ok(thrown instanceof RequestCancelledError, String(thrown));
  assert.equal(thrown.code, -32800);
  assert.equal(thrown.type, 'RequestCancelled');
  assert.equal(thrown.retryable, false);
  // Cancelled early: far from the 400 chunks, and the partial text is exactly what arrived.
  assert.ok(seen.length < 100, `chunks before the cancellation: ${seen.length}`);
  assert.equal(thrown.partialContent, seen.join(''));
  assert.equal(thrown.partialContent, stream.content);
  await assert.rejects(stream.result, RequestCancelledError);
  assert.equal(host.cancel(stream.id), false, 'a finished id is no longer in flight');
});

test('breaking out of a for-await cancels the stream; AbortSignal and timeouts cancel too', async () => {
  const stream = host.stream({ request: { prompt: 'long' }, selection: SLOW });
  for await (const chunk of stream) {
    assert.equal(typeof chunk.content, 'string');
    break;
  }
  await assert.rejects(stream.result, RequestCancelledError);

  const controller = new AbortController();
  const aborted = host.stream({ request: { prompt: 'long' }, selection: SLOW }, { signal: controller.signal });
  setTimeout(() => controller.abort(), 300);
  await assert.rejects(aborted.result, RequestCancelledError);

  // (The slow fake is slow only when streaming, so the timeout is tried on a stream.)
  const timedOut = host.stream({ request: { prompt: 'long' }, selection: SLOW }, { timeoutMs: 300 });
  await assert.rejects(timedOut.result, { name: 'SidecarTimeoutError' });
  assert.equal(host.cancel(timedOut.id), false, 'a timed-out request is no longer in flight');
  // The sidecar is still fine.
  assert.equal((await host.generate({ request: { prompt: 'still there?' } })).content, 'Hello from the fake.');
});

test('concurrent requests are matched to their ids', async () => {
  const results = await Promise.all([
    host.generate({ request: { prompt: 'one' } }),
    host.health(),
    host.generate({ request: { prompt: 'two' } }),
    host.listModels(),
  ]);
  assert.equal(results[0].content, 'Hello from the fake.');
  assert.ok('providers' in results[1]);
  assert.equal(results[2].content, 'Hello from the fake.');
  assert.ok(Array.isArray(results[3].models));
});

test('the sidecar logs JSON lines on stderr, delivered as stderr events', () => {
  assert.ok(stderr.length > 0);
  assert.ok(stderr.some((line) => line.startsWith('{')), stderr.slice(0, 3).join('\n'));
});

test('close(): in-flight work ends, the sidecar exits, no child is left, later requests are refused', async () => {
  const pids = [host.pid, ready.pid];
  const inflight = host.stream({ request: { prompt: 'long' }, selection: SLOW });
  await waitFor(() => inflight.content.length > 0, 10_000);
  /** @type {import('../src/host.js').ExitEvent[]} */
  const exits = [];
  host.on('exit', (e) => exits.push(e));
  await host.close();
  // Closing stdin makes the sidecar answer what is in flight with RequestCancelled.
  await assert.rejects(inflight.result, (e) => e instanceof RequestCancelledError || e instanceof SidecarClosedError);
  assert.equal(exits.length, 1);
  assert.equal(exits[0].expected, true);
  assert.equal(exits[0].code, 0, `the sidecar exits 0 on stdin EOF: ${JSON.stringify(exits[0])}`);
  for (const pid of pids) assert.ok(await waitFor(() => !pidAlive(pid), 5000), `pid ${pid} still alive`);
  assert.equal(host.pid, undefined);
  assert.equal(host.state, 'closed');
  await assert.rejects(host.health(), SidecarClosedError);
  await host.close(); // idempotent
});
