// @ts-check
// discover() and pull() against the real sidecar and a small Ollama stand-in (node:http)
// that streams /api/pull progress as Ollama does.
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { RequestCancelledError, SidecarHost } from '../index.js';
import { SIDECAR_ENV, sidecarCommand, waitFor } from './helpers.js';

/** @type {string[]} */ const models = ['llama3.2:latest'];
/** @type {{ closed: boolean }[]} */ const pulls = [];
/** @type {http.Server} */ let server;
/** @type {string} */ let dir;
/** @type {SidecarHost} */ let host;

const LAYER = { digest: 'sha256:' + 'a'.repeat(64), total: 4096 };

/** @param {http.IncomingMessage} req @param {http.ServerResponse} res */
async function handle(req, res) {
  let body = '';
  for await (const chunk of req) body += chunk;
  if (req.method === 'GET' && req.url === '/api/tags') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ models: models.map((m) => ({ name: m, model: m, digest: 'd'.repeat(64), size: 1234 })) }));
    return;
  }
  if (req.method !== 'POST' || req.url !== '/api/pull') {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('404 page not found');
    return;
  }
  const { model } = JSON.parse(body);
  const pull = { closed: false };
  pulls.push(pull);
  res.on('close', () => (pull.closed = !res.writableFinished));
  res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
  const lines = [
    { status: 'pulling manifest' },
    { status: `pulling ${LAYER.digest.slice(7, 19)}`, digest: LAYER.digest, total: LAYER.total },
    { status: `pulling ${LAYER.digest.slice(7, 19)}`, digest: LAYER.digest, total: LAYER.total, completed: LAYER.total },
    { status: 'verifying sha256 digest' },
    { status: 'writing manifest' },
    { status: 'success' },
  ];
  const hang = model === 'hangs';
  for (const [index, line] of lines.entries()) {
    if (hang && index === 2) return; // no more bytes: the client must close
    if (line.status === 'success') models.push(model); // the manifest is written by now
    res.write(JSON.stringify(line) + '\n');
    await new Promise((r) => setTimeout(r, 10));
  }
  res.end();
}

before(async () => {
  server = http.createServer((req, res) => void handle(req, res));
  await new Promise((r) => server.listen(0, '127.0.0.1', () => r(undefined)));
  const port = /** @type {import('node:net').AddressInfo} */ (server.address()).port;
  dir = await mkdtemp(path.join(os.tmpdir(), 'sidecar-host-local-'));
  const config = {
    providers: {
      openai: { baseURL: 'https://api.openai.com/v1', defaultModel: 'gpt-4o-mini', enabled: false },
      anthropic: { baseURL: 'https://api.anthropic.com', defaultModel: 'claude-haiku-4-5', enabled: false },
      ollama: { baseURL: `http://127.0.0.1:${port}`, defaultModel: 'llama3.2' },
      custom: { 'local-llm': { baseURL: 'http://127.0.0.1:8080/v1', defaultModel: 'smollm2-135m-instruct', enabled: false } },
    },
  };
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config));
  const { command, args } = sidecarCommand();
  // Discovery probes only the stand-in's port, whatever runs on this machine.
  host = new SidecarHost({ command, args, dataDir: dir, env: { ...SIDECAR_ENV, MODEL_SIDECAR_DISCOVER_PORTS: String(port) } });
});

after(async () => {
  await host?.close();
  server?.closeAllConnections();
  await new Promise((r) => server.close(() => r(undefined)));
  await rm(dir, { recursive: true, force: true });
});

test('discover(): the Ollama stand-in is found and known as the ollama entry', async () => {
  const port = /** @type {import('node:net').AddressInfo} */ (server.address()).port;
  const { servers } = await host.discover();
  assert.deepEqual(servers, [
    { kind: 'ollama', baseURL: `http://127.0.0.1:${port}`, models: ['llama3.2:latest'], configured: true, provider: 'ollama' },
  ]);
});

test('pull(): progress in order through onProgress, then the result', async () => {
  /** @type {string[]} */ const statuses = [];
  const result = await host.pull({ provider: 'ollama', model: 'qwen3:0.6b' }, {
    onProgress: (progress) => statuses.push(progress.status),
    timeoutMs: 20_000,
  });
  assert.deepEqual(result, { provider: 'ollama', model: 'qwen3:0.6b', digest: 'd'.repeat(64), sizeBytes: 1234 });
  assert.equal(statuses[0], 'pulling manifest');
  assert.equal(statuses.at(-1), 'success');
  assert.ok(statuses.includes(`pulling ${LAYER.digest.slice(7, 19)}`));
});

test('pull(): aborting the signal cancels it and closes the upstream request', async () => {
  const controller = new AbortController();
  const pulled = host.pull({ provider: 'ollama', model: 'hangs' }, {
    signal: controller.signal,
    timeoutMs: 20_000, // a progress line that never reached onProgress would end here instead
    onProgress: (progress) => {
      if (progress.status.startsWith('pulling ') && progress.status !== 'pulling manifest') controller.abort();
    },
  });
  await assert.rejects(pulled, RequestCancelledError);
  assert.ok(await waitFor(() => pulls.at(-1)?.closed === true, 5000), 'the upstream pull stayed open');
});
