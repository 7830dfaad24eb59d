// @ts-check
// kill -9 of the sidecar mid-stream: the crash is reported, in-flight work fails at once,
// the host restarts the sidecar with backoff and the next requests work.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { SidecarCrashedError, SidecarHost, SidecarUnavailableError } from '../index.js';
import { HOST_DIR, SIDECAR_ENV, nextEvent, pidAlive, sidecarCommand, startProviders, waitFor } from './helpers.js';

/** @type {{ dir: string, stop: () => Promise<void> }} */ let data;

before(async () => {
  data = await startProviders();
});

after(async () => {
  await data?.stop();
});

test('kill -9 mid-stream: the stream rejects with SidecarCrashedError, the host reports it and restarts', async () => {
  const { command, args } = sidecarCommand();
  const host = new SidecarHost({
    command,
    args,
    dataDir: data.dir,
    env: SIDECAR_ENV,
    restart: { initialDelayMs: 300, factor: 2, maxDelayMs: 5000, maxRestarts: 3, windowMs: 60_000 },
  });
  /** @type {string[]} */
  const events = [];
  for (const name of /** @type {const} */ (['ready', 'exit', 'crash', 'restart'])) host.on(name, () => events.push(name));
  try {
    const first = await host.start();
    const firstPid = host.pid;
    assert.ok(firstPid);

    const stream = host.stream({ request: { prompt: 'a long answer' }, selection: { provider: 'slow', fallback: false } });
    /** @type {string[]} */
    const seen = [];
    const crashEvent = nextEvent(host, 'crash');
    const exitEvent = nextEvent(host, 'exit');
    const restartEvent = nextEvent(host, 'restart');
    const readyEvent = nextEvent(host, 'ready');
    /** @type {unknown} */
    let thrown;
    const started = Date.now();
    try {
      for await (const chunk of stream) {
        seen.push(chunk.content);
        // The sidecar's own pid (a onefile build runs it under a bootloader: host.pid is that).
        if (seen.length === 3) process.kill(first.pid, 'SIGKILL');
      }
    } catch (error) {
      thrown = error;
    }
    // The stream failed at once (not after its 20 s of chunks), with the crash error.
    const direct = first.pid === firstPid; // no bootloader in between
    assert.ok(thrown instanceof SidecarCrashedError, String(thrown));
    assert.equal(thrown.pid, firstPid);
    if (direct) {
      assert.equal(thrown.signal, 'SIGKILL');
      assert.equal(thrown.exitCode, null);
    }
    assert.equal(thrown.method, 'model:stream');
    assert.equal(thrown.requestId, stream.id);
    assert.match(thrown.message, direct ? /killed by SIGKILL while model:stream \(id \d+\) was in flight/ : /while model:stream/);
    assert.ok(Date.now() - started < 15_000);
    await assert.rejects(stream.result, SidecarCrashedError);

    // Reported: exit (unexpected), crash, restart with the first backoff delay.
    const [exit] = await exitEvent;
    if (direct) assert.deepEqual({ ...exit }, { code: null, signal: 'SIGKILL', pid: firstPid, expected: false });
    else assert.equal(exit.expected, false);
    const [crash] = await crashEvent;
    assert.ok(crash instanceof SidecarCrashedError);
    const [restart] = await restartEvent;
    assert.equal(restart.attempt, 1);
    assert.equal(restart.delayMs, 300);
    assert.equal(restart.reason, crash);

    // A request made while the sidecar restarts waits for the new one and succeeds.
    assert.equal(host.state, 'restarting');
    const during = host.generate({ request: { prompt: 'are you back?' } });
    const [again] = await readyEvent;
    assert.equal(again.protocolVersion, 1);
    assert.notEqual(again.pid, first.pid);
    assert.notEqual(host.pid, firstPid);
    assert.ok(!pidAlive(firstPid));
    assert.ok(!pidAlive(first.pid));
    assert.equal((await during).content, 'Hello from the fake.');

    // And new streams work end to end.
    const next = host.stream({ request: { prompt: 'stream again' } });
    let text = '';
    for await (const chunk of next) text += chunk.content;
    assert.equal(text, 'Hello from the fake.');
    assert.equal((await next.result).content, text);
    assert.deepEqual(events, ['ready', 'exit', 'crash', 'restart', 'ready']);
  } finally {
    const pid = host.pid;
    await host.close();
    assert.ok(!pidAlive(pid));
  }
});

test('a sidecar that keeps crashing: growing backoff, then the guard gives up', async () => {
  const host = new SidecarHost({
    command: process.execPath,
    args: [path.join(HOST_DIR, 'test/fixtures/fake-sidecar.mjs'), 'crash-after-ready'],
    restart: { initialDelayMs: 40, factor: 2, maxDelayMs: 100, maxRestarts: 3, windowMs: 60_000 },
  });
  /** @type {number[]} */
  const delays = [];
  /** @type {(number | null)[]} */
  const codes = [];
  host.on('restart', (r) => delays.push(r.delayMs));
  host.on('exit', (e) => codes.push(e.code));
  let readies = 0;
  host.on('ready', () => readies++);
  const gaveUp = nextEvent(host, 'giveup');
  await host.start();
  const [error] = await gaveUp;
  assert.ok(error instanceof SidecarUnavailableError, String(error));
  assert.match(error.message, /failed 4 times within 60000 ms; not restarting it again/);
  assert.ok(error.cause instanceof SidecarCrashedError);
  assert.deepEqual(delays, [40, 80, 100], 'exponential, capped at maxDelayMs');
  assert.equal(readies, 4);
  assert.deepEqual(codes, [3, 3, 3, 3]);
  assert.equal(host.state, 'failed');
  await assert.rejects(host.health(), SidecarUnavailableError);
  assert.equal(host.pid, undefined);
  await host.close();
});

test('restart: false fails in-flight work and does not restart', async () => {
  const host = new SidecarHost({
    command: process.execPath,
    args: [path.join(HOST_DIR, 'test/fixtures/fake-sidecar.mjs'), 'crash-after-ready'],
    restart: false,
  });
  await host.start();
  const pending = host.request('model:health', {});
  const error = await pending.catch((e) => e);
  assert.ok(error instanceof SidecarCrashedError, String(error));
  assert.equal(error.exitCode, 3);
  assert.ok(await waitFor(() => host.state === 'failed', 5000));
  await host.close();
});
