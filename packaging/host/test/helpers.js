// @ts-check
/** Shared test helpers: the sidecar command, fake providers, data dirs, pid checks. */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HOST_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO = path.resolve(HOST_DIR, '../..');
export const PYTHON = path.join(REPO, '.venv', process.platform === 'win32' ? 'Scripts/python.exe' : 'bin/python');

/**
 * How to run the sidecar under test: `SIDECAR_BIN` (an executable; relative paths are taken
 * from the current directory, else from the repo root), else the source run
 * `.venv/bin/python -m sidecar`.
 * @returns {{ command: string, args: string[] }}
 */
export function sidecarCommand() {
  const bin = process.env.SIDECAR_BIN;
  if (bin) {
    const command = path.isAbsolute(bin) ? bin : existsSync(path.resolve(bin)) ? path.resolve(bin) : path.resolve(REPO, bin);
    return { command, args: [] };
  }
  return { command: PYTHON, args: ['-m', 'sidecar'] };
}

/** Environment for every sidecar the tests spawn. */
export const SIDECAR_ENV = {
  MODEL_SIDECAR_DENY_REMOTE: '1',
  OPENAI_API_KEY: '',
  ANTHROPIC_API_KEY: '',
  OLLAMA_HOST: '',
  PYTHONUNBUFFERED: '1',
};

/**
 * @typedef {object} Fake
 * @property {string} baseUrl
 * @property {import('node:child_process').ChildProcess} proc
 * @property {() => Promise<void>} stop
 */

/**
 * Start `python -m tests.fakes --kind openai --no-stdin [extra...]`; resolves once it printed its URL.
 * @param {string[]} [extra] e.g. `['--chunks', '200', '--delay-ms', '50']`
 * @returns {Promise<Fake>}
 */
export function startFake(extra = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(PYTHON, ['-m', 'tests.fakes', '--kind', 'openai', '--no-stdin', '--models', 'fake-model', ...extra], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`the fake provider did not print its URL: ${err}`));
    }, 20_000);
    proc.stderr?.on('data', (d) => (err += d));
    proc.stdout?.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl === -1) return;
      clearTimeout(timer);
      const baseUrl = out.slice(0, nl).trim();
      resolve({
        baseUrl,
        proc,
        stop: async () => {
          if (proc.exitCode !== null || proc.signalCode !== null) return;
          const gone = new Promise((r) => proc.once('exit', r));
          proc.kill('SIGTERM');
          const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
          await gone;
          clearTimeout(t);
        },
      });
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the fake provider exited (${code}): ${err}`));
    });
  });
}

/**
 * A data dir with a config.json: custom providers pointing at fakes, every other provider
 * disabled explicitly (openai, anthropic, ollama and the default `local-llm` entry).
 * @param {Record<string, string>} providers name -> base URL; the first is the default provider
 * @returns {Promise<{ dir: string, remove: () => Promise<void> }>}
 */
export async function makeDataDir(providers) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'sidecar-host-test-'));
  /** @type {Record<string, object>} */
  const custom = {
    'local-llm': { baseURL: 'http://127.0.0.1:8080/v1', defaultModel: 'smollm2-135m-instruct', enabled: false },
  };
  for (const [name, baseURL] of Object.entries(providers)) custom[name] = { baseURL, defaultModel: 'fake-model', local: true };
  const config = {
    providers: {
      openai: { baseURL: 'https://api.openai.com/v1', defaultModel: 'gpt-4o-mini', enabled: false },
      anthropic: { baseURL: 'https://api.anthropic.com', defaultModel: 'claude-haiku-4-5', enabled: false },
      ollama: { baseURL: 'http://127.0.0.1:11434', defaultModel: 'llama3.2', enabled: false },
      custom,
    },
    defaultProvider: Object.keys(providers)[0],
    fallbackChain: [],
  };
  await writeFile(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * The providers most tests use: a fast fake (`fake`, the default provider), a slow
 * streaming one (`slow`: 400 chunks 50 ms apart), and a data dir pointing at both.
 * @returns {Promise<{ dir: string, stop: () => Promise<void> }>}
 */
export async function startProviders() {
  const [fast, slow] = await Promise.all([startFake(), startFake(['--chunks', '400', '--delay-ms', '50'])]);
  const data = await makeDataDir({ fake: fast.baseUrl, slow: slow.baseUrl });
  return {
    dir: data.dir,
    stop: async () => {
      await Promise.all([fast.stop(), slow.stop()]);
      await data.remove();
    },
  };
}

/**
 * Is the process alive? A zombie (exited, not reaped yet: its parent died and nobody reaps
 * in this container) counts as gone.
 * @param {number | undefined} pid
 */
export function pidAlive(pid) {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch (error) {
    return /** @type {NodeJS.ErrnoException} */ (error).code === 'EPERM';
  }
  if (process.platform === 'linux') {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      return state !== 'Z' && state !== 'X';
    } catch {
      return false;
    }
  }
  return true;
}

/**
 * Poll until `check()` is true; false after `timeoutMs`.
 * @param {() => boolean | Promise<boolean>} check
 * @param {number} timeoutMs
 */
export async function waitFor(check, timeoutMs, intervalMs = 50) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Resolve with the arguments of the next `event` emitted by `emitter` (reject after `timeoutMs`).
 * @param {import('node:events').EventEmitter} emitter
 * @param {string} event
 * @returns {Promise<any[]>}
 */
export function nextEvent(emitter, event, timeoutMs = 20_000) {
  /** @type {Promise<any[]>} */
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`no '${event}' event within ${timeoutMs} ms`));
    }, timeoutMs);
    /** @param {any[]} args */
    const on = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    emitter.once(event, on);
  });
  promise.catch(() => {}); // awaited later, or not at all when the test already failed
  return promise;
}
