// @ts-check
// No orphans: when the host process dies (SIGKILL, nothing runs), the sidecar sees stdin EOF
// and exits by itself.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { HOST_DIR, SIDECAR_ENV, pidAlive, sidecarCommand, startProviders, waitFor } from './helpers.js';

/** @type {{ dir: string, stop: () => Promise<void> }} */ let data;

before(async () => {
  data = await startProviders();
});

after(async () => {
  await data?.stop();
});

test('SIGKILL of the host process: the sidecar exits on stdin EOF within a few seconds', async () => {
  const { command, args } = sidecarCommand();
  const options = { command, args, dataDir: data.dir, env: SIDECAR_ENV };
  const app = spawn(process.execPath, [path.join(HOST_DIR, 'test/fixtures/host-process.mjs'), JSON.stringify(options)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  app.stderr.on('data', (d) => (err += d));
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the app printed no pid: ${err}`)), 20_000);
    app.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve(out.slice(0, out.indexOf('\n')));
      }
    });
    app.once('exit', (code) => reject(new Error(`the app exited (${code}): ${err}`)));
  });
  const { pid, readyPid } = JSON.parse(line);
  assert.ok(pidAlive(pid), 'the sidecar runs (mid-stream)');
  const appGone = new Promise((resolve) => app.once('exit', resolve));
  app.kill('SIGKILL');
  await appGone;
  const exited = await waitFor(() => !pidAlive(pid) && !pidAlive(readyPid), 8000, 100);
  if (!exited) {
    // Do not leave it behind if the assertion fails.
    for (const p of [pid, readyPid]) if (pidAlive(p)) process.kill(p, 'SIGKILL');
  }
  assert.ok(exited, `the sidecar (pid ${pid}) outlived its host`);
});

test('shutdown(): sidecar:shutdown answered, exit code 0, no restart, no process left', async () => {
  const { command, args } = sidecarCommand();
  const { SidecarHost, SidecarClosedError } = await import('../index.js');
  const host = new SidecarHost({ command, args, dataDir: data.dir, env: SIDECAR_ENV });
  /** @type {import('../src/host.js').ExitEvent[]} */
  const exits = [];
  let restarts = 0;
  host.on('exit', (e) => exits.push(e));
  host.on('restart', () => restarts++);
  const ready = await host.start();
  assert.equal((await host.generate({ request: { prompt: 'one last thing' } })).content, 'Hello from the fake.');
  await host.shutdown();
  assert.equal(exits.length, 1);
  assert.equal(exits[0].code, 0);
  assert.equal(exits[0].expected, true);
  assert.equal(restarts, 0);
  assert.ok(await waitFor(() => !pidAlive(ready.pid), 5000));
  assert.equal(host.state, 'closed');
  await assert.rejects(host.generate({ request: { prompt: 'x' } }), SidecarClosedError);
});
