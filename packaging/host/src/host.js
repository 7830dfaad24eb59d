// @ts-check
/**
 * `SidecarHost`: spawn model-sidecar, check its handshake, talk JSON-RPC 2.0 over its stdio
 * (docs/protocol.md), restart it when it crashes, and never leave it behind.
 */
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { LineSplitter, LineTooLongError, decodeLine, encodeLine } from './line-splitter.js';
import {
  MessageTooLargeError,
  RequestCancelledError,
  SidecarClosedError,
  SidecarCrashedError,
  SidecarError,
  SidecarProtocolError,
  SidecarProtocolVersionError,
  SidecarReadyTimeoutError,
  SidecarStartError,
  SidecarTimeoutError,
  SidecarUnavailableError,
  rpcErrorFrom,
} from './errors.js';

/**
 * @typedef {import('../types.js').SidecarMethods} SidecarMethods
 * @typedef {import('../types.js').SidecarReadyNotification} SidecarReadyNotification
 * @typedef {import('../types.js').ModelStreamChunkNotification} ModelStreamChunkNotification
 * @typedef {import('../types.js').ModelBudgetAlertNotification} ModelBudgetAlertNotification
 * @typedef {import('../types.js').StreamingChunk} StreamingChunk
 * @typedef {import('../types.js').ToolCallDelta} ToolCallDelta
 * @typedef {import('../types.js').ToolCall} ToolCall
 * @typedef {import('../types.js').ToolTurn} ToolTurn
 * @typedef {import('../types.js').ModelGenerateParams} ModelGenerateParams
 * @typedef {import('../types.js').ModelGenerateResult} ModelGenerateResult
 * @typedef {import('../types.js').ModelStreamParams} ModelStreamParams
 * @typedef {import('../types.js').ModelStreamResult} ModelStreamResult
 * @typedef {import('../types.js').ModelHealthResult} ModelHealthResult
 * @typedef {import('../types.js').ModelListModelsParams} ModelListModelsParams
 * @typedef {import('../types.js').ModelListModelsResult} ModelListModelsResult
 * @typedef {import('../types.js').ModelGetConfigResult} ModelGetConfigResult
 * @typedef {import('../types.js').ModelSetConfigParams} ModelSetConfigParams
 * @typedef {import('../types.js').ModelSetConfigResult} ModelSetConfigResult
 * @typedef {import('../types.js').ModelSelectParams} ModelSelectParams
 * @typedef {import('../types.js').ModelSelectResult} ModelSelectResult
 * @typedef {import('../types.js').ModelUsageResult} ModelUsageResult
 * @typedef {import('../types.js').ModelDiscoverResult} ModelDiscoverResult
 * @typedef {import('../types.js').ModelPullParams} ModelPullParams
 * @typedef {import('../types.js').ModelPullResult} ModelPullResult
 * @typedef {import('../types.js').ModelPullProgressNotification} ModelPullProgressNotification
 * @typedef {import('../types.js').ErrorData} ErrorData
 * @typedef {import('./errors.js').ExitInfo} ExitInfo
 */

/** The protocol version this host was written for; `sidecar:ready` must announce exactly this. */
export const PROTOCOL_VERSION = /** @type {import('../types.js').ProtocolVersion} */ (1);

/**
 * @typedef {object} RestartOptions
 * @property {number} [initialDelayMs=500] delay before the first restart after a crash
 * @property {number} [factor=2] each further restart in the window waits this much longer
 * @property {number} [maxDelayMs=30000] cap of the delay
 * @property {number} [maxRestarts=5] at most this many restarts within `windowMs`; one more
 *   crash and the host gives up (`'giveup'` event, requests fail with `SidecarUnavailableError`)
 * @property {number} [windowMs=60000]
 */

/**
 * @typedef {object} SidecarHostOptions
 * @property {string} command the sidecar executable (`.../model-sidecar`, or a Python interpreter)
 * @property {string[]} [args] arguments before ours (e.g. `['-m', 'sidecar']`)
 * @property {string} [dataDir] passed as `--data-dir` (config.json and the usage ledger live there)
 * @property {'debug' | 'info' | 'warning' | 'error'} [logLevel] passed as `--log-level`
 * @property {Record<string, string | undefined>} [env] merged over `process.env`
 * @property {string} [cwd]
 * @property {number} [readyTimeoutMs=30000] how long to wait for `sidecar:ready` after a spawn
 * @property {number} [closeGraceMs=5000] after closing stdin, how long the sidecar gets to exit before SIGKILL
 * @property {RestartOptions | false} [restart] restart policy after crashes; `false`: never restart
 * @property {number} [maxMessageBytes=16777216] the sidecar's `--max-message-bytes`: longer requests are refused here
 * @property {number} [stderrTailLines=50] how many stderr lines to keep for crash reports
 */

/**
 * @typedef {object} RequestOptions
 * @property {AbortSignal} [signal] aborting it cancels the request (`$/cancelRequest`)
 * @property {number} [timeoutMs] reject with `SidecarTimeoutError` (and cancel) after this long
 */

/**
 * @typedef {object} ExitEvent
 * @property {number | null} code
 * @property {NodeJS.Signals | null} signal
 * @property {number | undefined} pid
 * @property {boolean} expected true when the host asked for it (close, shutdown, handshake refused)
 */

/**
 * @typedef {object} RestartEvent
 * @property {number} attempt 1 for the first restart in the window, 2 for the second...
 * @property {number} delayMs how long the host waits before spawning again
 * @property {Error} reason what ended the previous sidecar
 */

/**
 * Events of `SidecarHost` (listener argument lists).
 * @typedef {object} SidecarHostEvents
 * @property {[ready: SidecarReadyNotification]} ready a sidecar passed the handshake (first start and every restart)
 * @property {[exit: ExitEvent]} exit a sidecar process ended
 * @property {[error: SidecarCrashedError]} crash a sidecar ended unexpectedly (also emitted: `exit`)
 * @property {[restart: RestartEvent]} restart a restart is scheduled
 * @property {[error: Error]} restartFailed a restarted sidecar did not come up (another restart follows unless the guard gives up)
 * @property {[error: SidecarUnavailableError]} giveup no more restarts; requests fail until `start()` is called again
 * @property {[line: string, pid: number | undefined]} stderr one line of the sidecar's stderr (its JSON log)
 * @property {[method: string, params: any]} notification every notification from the sidecar (stream chunks included)
 * @property {[alert: ModelBudgetAlertNotification]} budgetAlert `model:budget-alert`
 * @property {[error: Error, line?: string]} protocolError a stdout line that could not be used (logged, then ignored)
 * @property {[]} close the host is closed
 */

/**
 * @typedef {object} Child
 * @property {import('node:child_process').ChildProcessWithoutNullStreams} proc
 * @property {number | undefined} pid
 * @property {LineSplitter} stdout
 * @property {LineSplitter} stderr
 * @property {string[]} stderrTail
 * @property {SidecarReadyNotification | null} ready
 * @property {boolean} expectedExit
 * @property {ExitInfo | null} exit
 * @property {boolean} finished exit handled (stdout drained, in-flight failed)
 * @property {Promise<ExitInfo>} exited
 * @property {(exit: ExitInfo) => void} resolveExited
 * @property {((message: any) => void) | null} onHandshake
 */

/**
 * @typedef {object} Pending
 * @property {number} id
 * @property {string} method
 * @property {Child | null} child the sidecar it was sent to (null: not sent yet)
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 * @property {((params: ModelStreamChunkNotification) => void) | null} onChunk
 * @property {() => void} cleanup
 */

const DEFAULT_RESTART = Object.freeze({
  initialDelayMs: 500,
  factor: 2,
  maxDelayMs: 30_000,
  maxRestarts: 5,
  windowMs: 60_000,
});

/**
 * @template T
 * @typedef {{ promise: Promise<T>, settled: boolean, resolve: (value: T) => void, reject: (error: Error) => void }} Deferred
 */

/**
 * @template T
 * @param {boolean} [quiet] mark the promise handled: a failed start nobody waits for is not an unhandled rejection
 * @returns {Deferred<T>}
 */
function deferred(quiet = false) {
  /** @type {(value: T) => void} */
  let res = () => {};
  /** @type {(error: Error) => void} */
  let rej = () => {};
  /** @type {Promise<T>} */
  const promise = new Promise((resolve, reject) => {
    res = resolve;
    rej = reject;
  });
  if (quiet) promise.catch(() => {});
  /** @type {Deferred<T>} */
  const d = {
    promise,
    settled: false,
    resolve: (value) => {
      d.settled = true;
      res(value);
    },
    reject: (error) => {
      d.settled = true;
      rej(error);
    },
  };
  return d;
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One model-sidecar process at a time, restarted when it crashes.
 *
 * @extends {EventEmitter<SidecarHostEvents>}
 */
export class SidecarHost extends EventEmitter {
  /** @param {SidecarHostOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.command !== 'string' || !options.command) {
      throw new TypeError('SidecarHost: options.command (the sidecar executable) is required');
    }
    this.options = options;
    this._restart = options.restart === false ? null : { ...DEFAULT_RESTART, ...options.restart };
    /** @type {'idle' | 'starting' | 'ready' | 'restarting' | 'failed' | 'closing' | 'closed'} */
    this._state = 'idle';
    /** @type {Child | null} */
    this._child = null;
    /** @type {Map<number, Pending>} */
    this._pending = new Map();
    this._nextId = 1;
    /** @type {Deferred<Child> | null} */
    this._ready = null;
    /** @type {number[]} */
    this._restartTimes = [];
    /** @type {NodeJS.Timeout | null} */
    this._restartTimer = null;
    /** @type {Promise<void> | null} */
    this._closing = null;
    /** @type {Error | null} */
    this._lastFailure = null;
  }

  /** `'idle' | 'starting' | 'ready' | 'restarting' | 'failed' | 'closing' | 'closed'` */
  get state() {
    return this._state;
  }

  /** The running sidecar's pid (undefined when none is running). */
  get pid() {
    return this._child?.pid;
  }

  /** The `sidecar:ready` params of the running sidecar, or null. */
  get readyInfo() {
    return this._child?.ready ?? null;
  }

  /**
   * Spawn the sidecar and wait for its handshake. Resolves with the `sidecar:ready` params.
   * Rejects (and kills the child) on a protocol version mismatch (`SidecarProtocolVersionError`),
   * a ready timeout (`SidecarReadyTimeoutError`), an exit before ready (`SidecarCrashedError`),
   * or a spawn failure (`SidecarStartError`). Calling it again while running returns the same.
   * After `'giveup'`, calling it starts afresh.
   * @returns {Promise<SidecarReadyNotification>}
   */
  async start() {
    if (this._state === 'closing' || this._state === 'closed') throw new SidecarClosedError('the host is closed');
    if (this._state === 'idle' || this._state === 'failed') {
      this._state = 'starting';
      this._restartTimes = [];
      /** @type {Deferred<Child>} */
      const ready = deferred(true);
      this._ready = ready;
      this._spawnChild().then(
        (child) => {
          if (this._ready !== ready) return;
          this._state = 'ready';
          ready.resolve(child);
          this.emit('ready', /** @type {SidecarReadyNotification} */ (child.ready));
        },
        (error) => {
          if (this._ready !== ready) return;
          if (this._state === 'starting') this._state = 'idle';
          ready.reject(error);
        },
      );
    }
    const child = await /** @type {Deferred<Child>} */ (this._ready).promise;
    return /** @type {SidecarReadyNotification} */ (child.ready);
  }

  // ---------------------------------------------------------------- requests

  /**
   * Send a request and wait for its response. JSON-RPC errors reject with the typed error of
   * their `data.type` (see errors.js); a crash rejects with `SidecarCrashedError`.
   * Starts the sidecar if needed; while it restarts, requests wait for it.
   * @template {keyof SidecarMethods} M
   * @overload
   * @param {M} method
   * @param {SidecarMethods[M]['params']} params
   * @param {RequestOptions} [options]
   * @returns {Promise<SidecarMethods[M]['result']>}
   */
  /**
   * @overload
   * @param {string} method
   * @param {object} [params]
   * @param {RequestOptions} [options]
   * @returns {Promise<unknown>}
   */
  /**
   * @param {string} method
   * @param {object} [params]
   * @param {RequestOptions} [options]
   * @returns {Promise<any>}
   */
  request(method, params, options) {
    return this._call(method, params ?? {}, options ?? {}, null).promise;
  }

  /**
   * `model:generate`.
   * @param {ModelGenerateParams} params
   * @param {RequestOptions} [options]
   * @returns {Promise<ModelGenerateResult>}
   */
  generate(params, options) {
    return this.request('model:generate', params, options);
  }

  /**
   * `model:stream`: an async iterable of the chunks (in `seq` order, the final `done: true`
   * chunk included), whose `result` promise is the final response (also the iterator's return
   * value). Breaking out of a `for await` cancels the stream.
   * @param {ModelStreamParams} params
   * @param {RequestOptions} [options]
   * @returns {SidecarStream}
   */
  stream(params, options) {
    return new SidecarStream(this, params, options ?? {});
  }

  /**
   * Cancel a request or stream in flight (`$/cancelRequest`). It then rejects with
   * `RequestCancelledError` (-32800; `partialContent` for a stream). Returns false when the id
   * is not in flight.
   * @param {number} id
   */
  cancel(id) {
    const entry = this._pending.get(id);
    if (!entry) return false;
    if (!entry.child) {
      // Not sent yet (waiting for the sidecar to come up): cancel it here.
      this._settle(entry, cancelledLocally(entry));
      return true;
    }
    this._write(entry.child, { jsonrpc: '2.0', method: '$/cancelRequest', params: { id } });
    return true;
  }

  /** `model:health`. @param {RequestOptions} [options] @returns {Promise<ModelHealthResult>} */
  health(options) {
    return this.request('model:health', {}, options);
  }

  /**
   * `model:list-models`.
   * @param {ModelListModelsParams} [params]
   * @param {RequestOptions} [options]
   * @returns {Promise<ModelListModelsResult>}
   */
  listModels(params, options) {
    return this.request('model:list-models', params ?? {}, options);
  }

  /**
   * `model:discover`: the local model servers running on this machine (nothing is changed).
   * @param {RequestOptions} [options]
   * @returns {Promise<ModelDiscoverResult>}
   */
  discover(options) {
    return this.request('model:discover', {}, options);
  }

  /**
   * `model:pull`: download a model into an Ollama provider. `onProgress` gets each
   * `model:pull-progress`; aborting `signal` cancels the download.
   * @param {ModelPullParams} params
   * @param {RequestOptions & {onProgress?: (progress: ModelPullProgressNotification) => void}} [options]
   * @returns {Promise<ModelPullResult>}
   */
  pull(params, options) {
    const { onProgress, ...rest } = options ?? {};
    // Progress lines are routed to the request like stream chunks.
    const onNotification = /** @type {any} */ (onProgress ?? null);
    return this._call('model:pull', params, rest, onNotification).promise;
  }

  /** `model:get-config`. @param {RequestOptions} [options] @returns {Promise<ModelGetConfigResult>} */
  getConfig(options) {
    return this.request('model:get-config', {}, options);
  }

  /**
   * `model:set-config` with an RFC 7386 merge patch.
   * @param {ModelSetConfigParams['config']} patch
   * @param {RequestOptions} [options]
   * @returns {Promise<ModelSetConfigResult>}
   */
  setConfig(patch, options) {
    return this.request('model:set-config', { config: patch }, options);
  }

  /**
   * `model:select`.
   * @param {ModelSelectParams} params
   * @param {RequestOptions} [options]
   * @returns {Promise<ModelSelectResult>}
   */
  select(params, options) {
    return this.request('model:select', params, options);
  }

  /** `model:usage`. @param {RequestOptions} [options] @returns {Promise<ModelUsageResult>} */
  usage(options) {
    return this.request('model:usage', {}, options);
  }

  // ---------------------------------------------------------------- shutdown

  /**
   * Graceful stop: `sidecar:shutdown` (answered once every other request is answered), then
   * close stdin and wait for the exit (SIGKILL after `closeGraceMs`). No restart follows.
   * @returns {Promise<void>}
   */
  async shutdown() {
    if (this._state === 'ready' && this._child?.ready && !this._closing) {
      const child = this._child;
      this._state = 'closing';
      const { promise } = this._call('sidecar:shutdown', {}, { timeoutMs: this.options.closeGraceMs ?? 5000 }, null, child);
      await promise.catch(() => {});
    }
    await this.close();
  }

  /**
   * Stop: fail requests not sent yet, close the sidecar's stdin (it answers what is in flight
   * with `RequestCancelled` and exits), SIGKILL it if it is still there after `closeGraceMs`.
   * Idempotent; resolves once the process is gone.
   * @returns {Promise<void>}
   */
  close() {
    if (this._closing) return this._closing;
    this._state = 'closing';
    this._closing = (async () => {
      if (this._restartTimer) clearTimeout(this._restartTimer);
      this._restartTimer = null;
      const closed = new SidecarClosedError('the host was closed');
      this._ready?.reject(closed);
      for (const entry of [...this._pending.values()]) if (!entry.child) this._settle(entry, closed);
      const child = this._child;
      if (child) {
        child.expectedExit = true;
        await this._stopChild(child, this.options.closeGraceMs ?? 5000);
      }
      for (const entry of [...this._pending.values()]) this._settle(entry, closed);
      this._state = 'closed';
      this.emit('close');
    })();
    return this._closing;
  }

  // ---------------------------------------------------------------- internals

  /**
   * @param {string} method
   * @param {object} params
   * @param {RequestOptions} options
   * @param {((params: ModelStreamChunkNotification) => void) | null} onChunk
   * @param {Child} [onChild] send on this child even while closing (shutdown)
   * @returns {{ id: number, promise: Promise<any> }}
   */
  _call(method, params, options, onChunk, onChild) {
    const id = this._nextId++;
    if (!onChild && (this._state === 'closing' || this._state === 'closed')) {
      return { id, promise: Promise.reject(new SidecarClosedError(`${method}: the host is closed`)) };
    }
    const line = encodeLine({ jsonrpc: '2.0', id, method, params });
    const limit = this.options.maxMessageBytes ?? 16 * 1024 * 1024;
    if (Buffer.byteLength(line) - 1 > limit) {
      const error = new MessageTooLargeError(
        {
          code: -32600,
          message: `the request is ${Buffer.byteLength(line) - 1} bytes, over the sidecar's limit of ${limit}`,
          data: { type: 'MessageTooLarge', retryable: false },
        },
        { method, requestId: id },
      );
      return { id, promise: Promise.reject(error) };
    }
    /** @type {Deferred<any>} */
    const answer = deferred();
    /** @type {Pending} */
    const entry = { id, method, child: null, resolve: answer.resolve, reject: answer.reject, onChunk, cleanup: () => {} };
    const promise = answer.promise;
    this._pending.set(id, entry);

    /** @type {NodeJS.Timeout | undefined} */
    let timer;
    const onAbort = () => this.cancel(id);
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        const pending = this._pending.get(id);
        if (!pending) return;
        const child = pending.child;
        this._settle(pending, new SidecarTimeoutError(method, id, /** @type {number} */ (options.timeoutMs)));
        if (child) this._write(child, { jsonrpc: '2.0', method: '$/cancelRequest', params: { id } });
      }, options.timeoutMs);
    }
    if (options.signal) {
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener('abort', onAbort, { once: true });
    }
    entry.cleanup = () => {
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };

    const send = async () => {
      for (;;) {
        if (!this._pending.has(id)) return; // cancelled or timed out before it was sent
        const child = onChild ?? (await this._whenReady());
        if (!this._pending.has(id)) return;
        if (child.finished || child.exit) {
          if (onChild) throw new SidecarClosedError(`${method}: the sidecar is gone`);
          await child.exited; // it died between ready and now: wait for the restart to begin
          continue;
        }
        entry.child = child;
        this._writeRaw(child, line);
        return;
      }
    };
    send().catch((error) => this._settle(entry, error));
    return { id, promise };
  }

  /** @returns {Promise<Child>} */
  async _whenReady() {
    if (this._state === 'idle') {
      await this.start();
    }
    if (this._state === 'failed') {
      throw new SidecarUnavailableError('the sidecar is not running (it kept crashing; call start() to try again)', {
        cause: this._lastFailure,
      });
    }
    if (this._state === 'closing' || this._state === 'closed') throw new SidecarClosedError('the host is closed');
    return /** @type {Deferred<Child>} */ (this._ready).promise;
  }

  /**
   * @param {Pending} entry
   * @param {Error | null} error
   * @param {unknown} [result]
   */
  _settle(entry, error, result) {
    if (this._pending.get(entry.id) !== entry) return;
    this._pending.delete(entry.id);
    entry.cleanup();
    if (error) entry.reject(error);
    else entry.resolve(result);
  }

  /** @param {Child} child @param {object} message */
  _write(child, message) {
    this._writeRaw(child, encodeLine(message));
  }

  /** @param {Child} child @param {string} line */
  _writeRaw(child, line) {
    const stdin = child.proc.stdin;
    if (stdin.destroyed || stdin.writableEnded) return; // the exit handler fails what was in flight
    stdin.write(line);
  }

  /**
   * Spawn one sidecar and run the handshake.
   * @returns {Promise<Child>}
   */
  _spawnChild() {
    const o = this.options;
    const args = [...(o.args ?? [])];
    if (o.dataDir !== undefined) args.push('--data-dir', o.dataDir);
    if (o.logLevel !== undefined) args.push('--log-level', o.logLevel);
    if (o.maxMessageBytes !== undefined) args.push('--max-message-bytes', String(o.maxMessageBytes));
    const tailSize = o.stderrTailLines ?? 50;

    return new Promise((resolve, reject) => {
      /** @type {import('node:child_process').ChildProcessWithoutNullStreams} */
      let proc;
      try {
        proc = spawn(o.command, args, {
          cwd: o.cwd,
          env: { ...process.env, ...o.env },
          stdio: ['pipe', 'pipe', 'pipe'],
          windowsHide: true,
        });
      } catch (error) {
        reject(new SidecarStartError(`could not start the sidecar ${o.command}: ${/** @type {Error} */ (error).message}`, { cause: error }));
        return;
      }
      /** @type {(exit: ExitInfo) => void} */
      let resolveExited = () => {};
      /** @type {Child} */
      const child = {
        proc,
        pid: proc.pid,
        stdout: new LineSplitter({ maxLineBytes: 512 * 1024 * 1024 }),
        stderr: new LineSplitter({ maxLineBytes: 1024 * 1024 }),
        stderrTail: [],
        ready: null,
        expectedExit: false,
        exit: null,
        finished: false,
        exited: new Promise((res) => {
          resolveExited = res;
        }),
        resolveExited: (exit) => resolveExited(exit),
        onHandshake: null,
      };
      this._child = child;
      let settled = false;
      const timeoutMs = o.readyTimeoutMs ?? 30_000;
      const timer = setTimeout(() => fail(new SidecarReadyTimeoutError(timeoutMs, child.stderrTail)), timeoutMs);
      /** @param {Error} error */
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        child.onHandshake = null;
        child.expectedExit = true;
        this._lastFailure = error;
        if (!child.exit) child.proc.kill('SIGKILL');
        reject(error);
      };
      child.onHandshake = (message) => {
        if (settled) return;
        if (message?.method !== 'sidecar:ready' || 'id' in message || typeof message.params !== 'object' || !message.params) {
          fail(new SidecarProtocolError(`the sidecar's first line was not the sidecar:ready notification: ${JSON.stringify(message).slice(0, 200)}`));
          return;
        }
        const params = message.params;
        if (params.protocolVersion !== PROTOCOL_VERSION) {
          fail(new SidecarProtocolVersionError(PROTOCOL_VERSION, params.protocolVersion, { command: o.command, version: params.version, pid: child.pid }));
          return;
        }
        settled = true;
        clearTimeout(timer);
        child.onHandshake = null;
        child.ready = params;
        resolve(child);
      };

      proc.on('error', (error) => {
        // spawn failure (ENOENT, EACCES) or a failed kill; a spawn failure has no pid.
        if (!settled && (proc.pid === undefined || /** @type {any} */ (error).syscall?.startsWith('spawn'))) {
          fail(new SidecarStartError(`could not start the sidecar ${o.command}: ${error.message}`, { cause: error }));
          this._onChildFinished(child, { code: null, signal: null, pid: proc.pid });
        }
      });
      proc.stdin.on('error', () => {}); // EPIPE after a crash: the exit handler reports it
      proc.stdout.on('data', (/** @type {Buffer} */ data) => this._onStdout(child, data));
      proc.stderr.on('data', (/** @type {Buffer} */ data) => this._onStderr(child, data, tailSize));
      let closeTimer = /** @type {NodeJS.Timeout | undefined} */ (undefined);
      proc.on('exit', (code, signal) => {
        child.exit = { code, signal, pid: proc.pid };
        // Wait for stdout to drain ('close'), so responses written before the exit still count;
        // a grandchild holding the pipe open must not delay the crash report for long.
        closeTimer = setTimeout(() => this._onChildFinished(child, /** @type {ExitInfo} */ (child.exit)), 1000);
      });
      proc.on('close', (code, signal) => {
        if (closeTimer) clearTimeout(closeTimer);
        this._onChildFinished(child, child.exit ?? { code, signal, pid: proc.pid });
      });
      child.exited.then((exit) => {
        if (!settled) {
          fail(new SidecarCrashedError(exit, { stderrTail: child.stderrTail, phase: 'before sidecar:ready' }));
        }
      });
    });
  }

  /** @param {Child} child @param {Buffer} data */
  _onStdout(child, data) {
    /** @type {Buffer[]} */
    let lines;
    try {
      lines = child.stdout.push(data);
    } catch (error) {
      if (error instanceof LineTooLongError) {
        this.emit('protocolError', new SidecarProtocolError(error.message));
        return;
      }
      throw error;
    }
    for (const raw of lines) this._onLine(child, raw);
  }

  /** @param {Child} child @param {Buffer} raw */
  _onLine(child, raw) {
    /** @type {string} */
    let text;
    /** @type {any} */
    let message;
    try {
      text = decodeLine(raw);
    } catch {
      this.emit('protocolError', new SidecarProtocolError('a stdout line is not valid UTF-8'));
      return;
    }
    if (text.trim() === '') return;
    try {
      message = JSON.parse(text);
    } catch (error) {
      const problem = new SidecarProtocolError(`a stdout line is not JSON: ${/** @type {Error} */ (error).message}`);
      if (child.onHandshake) child.onHandshake(null);
      this.emit('protocolError', problem, text);
      return;
    }
    if (child.onHandshake) {
      child.onHandshake(message);
      return;
    }
    if (!child.ready) return; // a refused sidecar: ignore whatever else it says
    if (message === null || typeof message !== 'object' || Array.isArray(message)) {
      this.emit('protocolError', new SidecarProtocolError('a stdout line is not a JSON object'), text);
      return;
    }
    if (typeof message.method === 'string' && !('id' in message)) {
      this._onNotification(message.method, message.params);
      return;
    }
    if ('id' in message && ('result' in message || 'error' in message)) {
      if (message.id === null) {
        // Not attributable to a request (e.g. a line we sent could not be parsed at all).
        const error = message.error ? rpcErrorFrom(message.error) : new SidecarProtocolError('a response with id null');
        this.emit('protocolError', error, text);
        return;
      }
      const entry = this._pending.get(message.id);
      if (!entry) return; // timed out or cancelled here already
      if ('error' in message) {
        this._settle(entry, rpcErrorFrom(message.error, { method: entry.method, requestId: entry.id }));
      } else {
        this._settle(entry, null, message.result);
      }
      return;
    }
    this.emit('protocolError', new SidecarProtocolError('a stdout line is neither a response nor a notification'), text);
  }

  /** @param {string} method @param {any} params */
  _onNotification(method, params) {
    if ((method === 'model:stream-chunk' || method === 'model:pull-progress') && params && typeof params === 'object') {
      const entry = this._pending.get(params.requestId);
      entry?.onChunk?.(params);
    } else if (method === 'model:budget-alert') {
      this.emit('budgetAlert', params);
    }
    this.emit('notification', method, params);
  }

  /** @param {Child} child @param {Buffer} data @param {number} tailSize */
  _onStderr(child, data, tailSize) {
    /** @type {Buffer[]} */
    let lines;
    try {
      lines = child.stderr.push(data);
    } catch {
      return; // an absurdly long log line: dropped
    }
    for (const raw of lines) {
      const line = raw.toString('utf8').replace(/\r$/, '');
      if (tailSize > 0) {
        child.stderrTail.push(line);
        if (child.stderrTail.length > tailSize) child.stderrTail.shift();
      }
      this.emit('stderr', line, child.pid);
    }
  }

  /**
   * The process is gone and its stdout drained: fail what was in flight on it, report, restart.
   * @param {Child} child
   * @param {ExitInfo} exit
   */
  _onChildFinished(child, exit) {
    if (child.finished) return;
    child.finished = true;
    child.exit = exit;
    const rest = child.stderr.flush();
    if (rest && rest.length) this._onStderr(child, Buffer.concat([rest, Buffer.from('\n')]), this.options.stderrTailLines ?? 50);
    child.stdout.flush();
    // Close our ends of its pipes: a grandchild still holding them (a onefile bootloader's
    // payload, say) then sees stdin EOF and exits instead of living on unseen.
    for (const stream of [child.proc.stdin, child.proc.stdout, child.proc.stderr]) stream.destroy();
    if (this._child === child) this._child = null;
    const wasReady = child.ready !== null;
    const expected = child.expectedExit || this._state === 'closing' || this._state === 'closed';
    this.emit('exit', { ...exit, expected });
    child.resolveExited(exit);

    const crash = new SidecarCrashedError(exit, { stderrTail: child.stderrTail });
    for (const entry of [...this._pending.values()]) {
      if (entry.child !== child) continue;
      this._settle(
        entry,
        expected
          ? new SidecarClosedError(`${entry.method} (id ${entry.id}): the sidecar exited (${exit.signal ?? `code ${exit.code}`}) as the host closed it`)
          : new SidecarCrashedError(exit, { stderrTail: child.stderrTail, method: entry.method, requestId: entry.id }),
      );
    }
    if (expected || !wasReady) return; // not ready yet: the handshake's failure path handles it
    this._lastFailure = crash;
    this.emit('crash', crash);
    this._scheduleRestart(crash);
  }

  /** @param {Error} reason */
  _scheduleRestart(reason) {
    if (this._state === 'closing' || this._state === 'closed') return;
    const policy = this._restart;
    const now = Date.now();
    if (policy) this._restartTimes = this._restartTimes.filter((t) => now - t < policy.windowMs);
    if (!policy || this._restartTimes.length >= policy.maxRestarts) {
      this._giveUp(
        new SidecarUnavailableError(
          policy
            ? `the sidecar failed ${this._restartTimes.length + 1} times within ${policy.windowMs} ms; not restarting it again (${reason.message})`
            : `the sidecar is gone and restarts are disabled (${reason.message})`,
          { cause: reason },
        ),
      );
      return;
    }
    const attempt = this._restartTimes.length + 1;
    const delayMs = Math.min(policy.initialDelayMs * policy.factor ** (attempt - 1), policy.maxDelayMs);
    this._restartTimes.push(now);
    this._state = 'restarting';
    // Requests made from now on wait for the new sidecar.
    if (!this._ready || this._ready.settled) this._ready = deferred(true);
    const ready = this._ready;
    this.emit('restart', { attempt, delayMs, reason });
    this._restartTimer = setTimeout(() => {
      this._restartTimer = null;
      if (this._state !== 'restarting') return;
      this._spawnChild().then(
        (child) => {
          if (this._state !== 'restarting' || this._child !== child) return;
          this._state = 'ready';
          ready.resolve(child);
          this.emit('ready', /** @type {SidecarReadyNotification} */ (child.ready));
        },
        (error) => {
          if (this._state !== 'restarting') return;
          this.emit('restartFailed', error);
          if (error instanceof SidecarProtocolVersionError) {
            this._giveUp(new SidecarUnavailableError(error.message, { cause: error }));
          } else {
            this._scheduleRestart(error);
          }
        },
      );
    }, delayMs);
  }

  /** @param {SidecarUnavailableError} error */
  _giveUp(error) {
    this._state = 'failed';
    this._lastFailure = error;
    this._ready?.reject(error);
    this._ready = null;
    for (const entry of [...this._pending.values()]) if (!entry.child) this._settle(entry, error);
    this.emit('giveup', error);
  }

  /**
   * End stdin, wait for the exit, SIGKILL after the grace period.
   * @param {Child} child
   * @param {number} graceMs
   */
  async _stopChild(child, graceMs) {
    if (!child.finished && !child.exit) {
      try {
        child.proc.stdin.end();
      } catch {
        // already gone
      }
      const exited = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!exited && !child.exit) child.proc.kill('SIGKILL');
    }
    await Promise.race([child.exited, sleep(5000)]);
  }
}

/** @param {Pending} entry */
function cancelledLocally(entry) {
  return new RequestCancelledError(
    { code: -32800, message: 'cancelled before it was sent', data: { type: 'RequestCancelled', retryable: false, partialContent: '' } },
    { method: entry.method, requestId: entry.id },
  );
}

/**
 * A tool call being streamed, assembled from `toolCalls` deltas.
 * @typedef {object} StreamedToolCall
 * @property {number} index the call's position in the answer (0, 1, ...)
 * @property {string} id the call's id (`''` until its first delta arrived)
 * @property {string} name the tool's name
 * @property {string} arguments the arguments' JSON text so far
 */

/**
 * A `model:stream` in flight: async-iterate it for the chunks; `result` is the final response.
 *
 * ```js
 * const stream = host.stream({ request: { prompt: 'Hi' } });
 * for await (const chunk of stream) process.stdout.write(chunk.content);
 * const response = await stream.result;
 * ```
 *
 * A `restart: true` chunk (a mid-stream fallback) is yielded as it comes, and resets `content`
 * and `toolCalls`.
 * When the stream fails, the iteration throws the error (after the chunks that arrived).
 * @implements {AsyncIterable<StreamingChunk>}
 */
export class SidecarStream {
  /**
   * @param {SidecarHost} host
   * @param {ModelStreamParams} params
   * @param {RequestOptions} options
   */
  constructor(host, params, options) {
    this._host = host;
    /** @type {StreamingChunk[]} */
    this._queue = [];
    /** @type {(() => void) | null} */
    this._wake = null;
    this._ended = false;
    /** @type {Error | null} */
    this._error = null;
    this._errorThrown = false;
    this._nextSeq = 0;
    this._iterating = false;
    /** The text so far (what a UI shows): reset by a `restart` chunk. */
    this.content = '';
    /**
     * The tool calls so far, assembled from the chunks' `toolCalls` deltas by `index`:
     * `arguments` is the JSON text received so far (incomplete until the stream ends; the
     * final, validated calls with parsed arguments are in `result.toolCalls`). Reset by a
     * `restart` chunk.
     * @type {StreamedToolCall[]}
     */
    this.toolCalls = [];
    /** @type {ModelStreamResult | undefined} */
    this.response = undefined;
    const { id, promise } = host._call('model:stream', params, options, (notification) => this._onChunk(notification));
    /** The request id (what `model:stream-chunk` carries as `requestId`; pass it to `host.cancel`). */
    this.id = id;
    /** @type {Promise<ModelStreamResult>} the final response; rejects like `generate` */
    this.result = promise.then(
      (response) => {
        this.response = response;
        this._end(null);
        return response;
      },
      (error) => {
        this._end(error);
        throw error;
      },
    );
    this.result.catch(() => {}); // iterating without awaiting `result` must not leave an unhandled rejection
  }

  /** Cancel the stream (`$/cancelRequest`); `result` then rejects with `RequestCancelledError`. */
  cancel() {
    return this._host.cancel(this.id);
  }

  /** @param {ModelStreamChunkNotification} notification */
  _onChunk(notification) {
    if (this._ended) return;
    if (notification.seq !== this._nextSeq) {
      const entry = this._host._pending.get(this.id);
      this._host.cancel(this.id);
      if (entry) {
        this._host._settle(entry, new SidecarProtocolError(`stream ${this.id}: chunk seq ${notification.seq} arrived, ${this._nextSeq} expected`));
      }
      return;
    }
    this._nextSeq += 1;
    const chunk = notification.chunk;
    if (chunk.restart) {
      this.content = '';
      this.toolCalls = [];
    }
    this.content += chunk.content;
    for (const delta of chunk.toolCalls ?? []) this._addToolDelta(delta);
    this._queue.push(chunk);
    this._wakeUp();
  }

  /** @param {ToolCallDelta} delta */
  _addToolDelta(delta) {
    let call = this.toolCalls.find((c) => c.index === delta.index);
    if (!call) {
      call = { index: delta.index, id: '', name: '', arguments: '' };
      this.toolCalls.push(call);
      this.toolCalls.sort((a, b) => a.index - b.index);
    }
    if (delta.id) call.id = delta.id;
    if (delta.name) call.name = delta.name;
    call.arguments += delta.argumentsDelta;
  }

  /** @param {Error | null} error */
  _end(error) {
    this._ended = true;
    this._error = error;
    this._wakeUp();
  }

  _wakeUp() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }

  /** @returns {AsyncIterator<StreamingChunk, ModelStreamResult | undefined>} */
  [Symbol.asyncIterator]() {
    if (this._iterating) throw new SidecarError('a SidecarStream can be iterated once');
    this._iterating = true;
    return {
      next: async () => {
        for (;;) {
          const chunk = this._queue.shift();
          if (chunk) return { value: chunk, done: false };
          if (this._ended) {
            if (this._error && !this._errorThrown) {
              this._errorThrown = true;
              throw this._error;
            }
            return { value: this.response, done: true };
          }
          await new Promise((resolve) => {
            this._wake = () => resolve(undefined);
          });
        }
      },
      return: async () => {
        if (!this._ended) this.cancel();
        this._queue = [];
        return { value: undefined, done: true };
      },
    };
  }
}
