// @ts-check
// The version handshake, with a tiny stand-in sidecar (test/fixtures/fake-sidecar.mjs).
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import {
  SidecarCrashedError,
  SidecarHost,
  SidecarProtocolError,
  SidecarProtocolVersionError,
  SidecarReadyTimeoutError,
  SidecarStartError,
} from '../index.js';
import { HOST_DIR, pidAlive, waitFor } from './helpers.js';

const FAKE = path.join(HOST_DIR, 'test/fixtures/fake-sidecar.mjs');

/** @param {string} mode @param {Partial<import('../src/host.js').SidecarHostOptions>} [extra] */
function fakeHost(mode, extra = {}) {
  return new SidecarHost({ command: process.execPath, args: [FAKE, mode], readyTimeoutMs: 10_000, ...extra });
}

/**
 * Start a host that must fail; return the error and every pid it spawned.
 * @param {SidecarHost} host
 */
async function failedStart(host) {
  /** @type {import('../src/host.js').ExitEvent[]} */
  const exits = [];
  host.on('exit', (e) => exits.push(e));
  const error = await host.start().then(
    () => assert.fail('start() should have failed'),
    (e) => e,
  );
  return { error, exits };
}

test('a sidecar announcing another protocol version is refused with a clear message and killed', async () => {
  const host = fakeHost('mismatch');
  const { error, exits } = await failedStart(host);
  assert.ok(error instanceof SidecarProtocolVersionError, String(error));
  assert.equal(error.expected, 1);
  assert.equal(error.actual, 999);
  assert.equal(error.sidecarVersion, '9.9.9-fake');
  assert.match(error.message, /protocol version mismatch/);
  assert.match(error.message, /speaks protocol version 999/);
  assert.match(error.message, /written for version 1/);
  assert.match(error.message, /refusing/);
  // The child is gone (it ignores stdin EOF, so the host had to kill it).
  assert.ok(await waitFor(() => exits.length === 1, 5000), 'no exit event');
  assert.equal(exits[0].expected, true);
  assert.equal(exits[0].signal, 'SIGKILL');
  assert.ok(!pidAlive(error.pid));
  assert.equal(host.pid, undefined);
  assert.equal(host.state, 'idle');
  await host.close();
});

test('no sidecar:ready within readyTimeoutMs: SidecarReadyTimeoutError, child killed', async () => {
  const host = fakeHost('silent', { readyTimeoutMs: 700 });
  /** @type {string[]} */
  const stderr = [];
  host.on('stderr', (line) => stderr.push(line));
  const { error, exits } = await failedStart(host);
  assert.ok(error instanceof SidecarReadyTimeoutError, String(error));
  assert.match(error.message, /did not announce sidecar:ready within 700 ms/);
  assert.ok(await waitFor(() => exits.length === 1, 5000));
  assert.equal(exits[0].signal, 'SIGKILL');
  assert.ok(!pidAlive(exits[0].pid));
  assert.deepEqual(stderr, ['{"event":"fake-sidecar","mode":"silent"}']);
  await host.close();
});

test('a first line that is not sidecar:ready is a protocol error', async () => {
  const host = fakeHost('not-ready');
  const { error, exits } = await failedStart(host);
  assert.ok(error instanceof SidecarProtocolError, String(error));
  assert.match(error.message, /first line was not the sidecar:ready notification/);
  assert.ok(await waitFor(() => exits.length === 1, 5000));
  assert.ok(!pidAlive(exits[0].pid));
  await host.close();
});

test('a missing binary is a SidecarStartError', async () => {
  const host = new SidecarHost({ command: path.join(HOST_DIR, 'no-such-sidecar-binary') });
  const error = await host.start().catch((e) => e);
  assert.ok(error instanceof SidecarStartError, String(error));
  assert.match(error.message, /ENOENT/);
  await host.close();
});

test('a sidecar that exits before ready: SidecarCrashedError with its exit code', async () => {
  const host = new SidecarHost({ command: process.execPath, args: ['-e', 'process.stderr.write("boom\\n"); process.exit(7)'] });
  const error = await host.start().catch((e) => e);
  assert.ok(error instanceof SidecarCrashedError, String(error));
  assert.equal(error.exitCode, 7);
  assert.match(error.message, /exited with code 7 before sidecar:ready; last stderr line: boom/);
  await host.close();
});
