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
export const PROTOCOL_VERSION: import("../types.js").ProtocolVersion;
/**
 * One model-sidecar process at a time, restarted when it crashes.
 *
 * @extends {EventEmitter<SidecarHostEvents>}
 */
export class SidecarHost extends EventEmitter<SidecarHostEvents> {
    /** @param {SidecarHostOptions} options */
    constructor(options: SidecarHostOptions);
    options: SidecarHostOptions;
    _restart: {
        /**
         * delay before the first restart after a crash
         */
        initialDelayMs: number;
        /**
         * each further restart in the window waits this much longer
         */
        factor: number;
        /**
         * cap of the delay
         */
        maxDelayMs: number;
        /**
         * at most this many restarts within `windowMs`; one more
         * crash and the host gives up (`'giveup'` event, requests fail with `SidecarUnavailableError`)
         */
        maxRestarts: number;
        windowMs: number;
    } | null;
    /** @type {'idle' | 'starting' | 'ready' | 'restarting' | 'failed' | 'closing' | 'closed'} */
    _state: "idle" | "starting" | "ready" | "restarting" | "failed" | "closing" | "closed";
    /** @type {Child | null} */
    _child: Child | null;
    /** @type {Map<number, Pending>} */
    _pending: Map<number, Pending>;
    _nextId: number;
    /** @type {Deferred<Child> | null} */
    _ready: Deferred<Child> | null;
    /** @type {number[]} */
    _restartTimes: number[];
    /** @type {NodeJS.Timeout | null} */
    _restartTimer: NodeJS.Timeout | null;
    /** @type {Promise<void> | null} */
    _closing: Promise<void> | null;
    /** @type {Error | null} */
    _lastFailure: Error | null;
    /** `'idle' | 'starting' | 'ready' | 'restarting' | 'failed' | 'closing' | 'closed'` */
    get state(): "ready" | "idle" | "starting" | "restarting" | "failed" | "closing" | "closed";
    /** The running sidecar's pid (undefined when none is running). */
    get pid(): number | undefined;
    /** The `sidecar:ready` params of the running sidecar, or null. */
    get readyInfo(): import("../types.js").SidecarReadyNotification | null;
    /**
     * Spawn the sidecar and wait for its handshake. Resolves with the `sidecar:ready` params.
     * Rejects (and kills the child) on a protocol version mismatch (`SidecarProtocolVersionError`),
     * a ready timeout (`SidecarReadyTimeoutError`), an exit before ready (`SidecarCrashedError`),
     * or a spawn failure (`SidecarStartError`). Calling it again while running returns the same.
     * After `'giveup'`, calling it starts afresh.
     * @returns {Promise<SidecarReadyNotification>}
     */
    start(): Promise<SidecarReadyNotification>;
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
    request<M extends keyof SidecarMethods>(method: M, params: SidecarMethods[M]["params"], options?: RequestOptions | undefined): Promise<SidecarMethods[M]["result"]>;
    /**
     * @overload
     * @param {string} method
     * @param {object} [params]
     * @param {RequestOptions} [options]
     * @returns {Promise<unknown>}
     */
    request(method: string, params?: object | undefined, options?: RequestOptions | undefined): Promise<unknown>;
    /**
     * `model:generate`.
     * @param {ModelGenerateParams} params
     * @param {RequestOptions} [options]
     * @returns {Promise<ModelGenerateResult>}
     */
    generate(params: ModelGenerateParams, options?: RequestOptions): Promise<ModelGenerateResult>;
    /**
     * `model:stream`: an async iterable of the chunks (in `seq` order, the final `done: true`
     * chunk included), whose `result` promise is the final response (also the iterator's return
     * value). Breaking out of a `for await` cancels the stream.
     * @param {ModelStreamParams} params
     * @param {RequestOptions} [options]
     * @returns {SidecarStream}
     */
    stream(params: ModelStreamParams, options?: RequestOptions): SidecarStream;
    /**
     * Cancel a request or stream in flight (`$/cancelRequest`). It then rejects with
     * `RequestCancelledError` (-32800; `partialContent` for a stream). Returns false when the id
     * is not in flight.
     * @param {number} id
     */
    cancel(id: number): boolean;
    /** `model:health`. @param {RequestOptions} [options] @returns {Promise<ModelHealthResult>} */
    health(options?: RequestOptions): Promise<ModelHealthResult>;
    /**
     * `model:list-models`.
     * @param {ModelListModelsParams} [params]
     * @param {RequestOptions} [options]
     * @returns {Promise<ModelListModelsResult>}
     */
    listModels(params?: ModelListModelsParams, options?: RequestOptions): Promise<ModelListModelsResult>;
    /**
     * `model:discover`: the local model servers running on this machine (nothing is changed).
     * @param {RequestOptions} [options]
     * @returns {Promise<ModelDiscoverResult>}
     */
    discover(options?: RequestOptions): Promise<ModelDiscoverResult>;
    /**
     * `model:pull`: download a model into an Ollama provider. `onProgress` gets each
     * `model:pull-progress`; aborting `signal` cancels the download.
     * @param {ModelPullParams} params
     * @param {RequestOptions & {onProgress?: (progress: ModelPullProgressNotification) => void}} [options]
     * @returns {Promise<ModelPullResult>}
     */
    pull(params: ModelPullParams, options?: RequestOptions & {
        onProgress?: (progress: ModelPullProgressNotification) => void;
    }): Promise<ModelPullResult>;
    /** `model:get-config`. @param {RequestOptions} [options] @returns {Promise<ModelGetConfigResult>} */
    getConfig(options?: RequestOptions): Promise<ModelGetConfigResult>;
    /**
     * `model:set-config` with an RFC 7386 merge patch.
     * @param {ModelSetConfigParams['config']} patch
     * @param {RequestOptions} [options]
     * @returns {Promise<ModelSetConfigResult>}
     */
    setConfig(patch: ModelSetConfigParams["config"], options?: RequestOptions): Promise<ModelSetConfigResult>;
    /**
     * `model:select`.
     * @param {ModelSelectParams} params
     * @param {RequestOptions} [options]
     * @returns {Promise<ModelSelectResult>}
     */
    select(params: ModelSelectParams, options?: RequestOptions): Promise<ModelSelectResult>;
    /** `model:usage`. @param {RequestOptions} [options] @returns {Promise<ModelUsageResult>} */
    usage(options?: RequestOptions): Promise<ModelUsageResult>;
    /**
     * Graceful stop: `sidecar:shutdown` (answered once every other request is answered), then
     * close stdin and wait for the exit (SIGKILL after `closeGraceMs`). No restart follows.
     * @returns {Promise<void>}
     */
    shutdown(): Promise<void>;
    /**
     * Stop: fail requests not sent yet, close the sidecar's stdin (it answers what is in flight
     * with `RequestCancelled` and exits), SIGKILL it if it is still there after `closeGraceMs`.
     * Idempotent; resolves once the process is gone.
     * @returns {Promise<void>}
     */
    close(): Promise<void>;
    /**
     * @param {string} method
     * @param {object} params
     * @param {RequestOptions} options
     * @param {((params: ModelStreamChunkNotification) => void) | null} onChunk
     * @param {Child} [onChild] send on this child even while closing (shutdown)
     * @returns {{ id: number, promise: Promise<any> }}
     */
    _call(method: string, params: object, options: RequestOptions, onChunk: ((params: ModelStreamChunkNotification) => void) | null, onChild?: Child): {
        id: number;
        promise: Promise<any>;
    };
    /** @returns {Promise<Child>} */
    _whenReady(): Promise<Child>;
    /**
     * @param {Pending} entry
     * @param {Error | null} error
     * @param {unknown} [result]
     */
    _settle(entry: Pending, error: Error | null, result?: unknown): void;
    /** @param {Child} child @param {object} message */
    _write(child: Child, message: object): void;
    /** @param {Child} child @param {string} line */
    _writeRaw(child: Child, line: string): void;
    /**
     * Spawn one sidecar and run the handshake.
     * @returns {Promise<Child>}
     */
    _spawnChild(): Promise<Child>;
    /** @param {Child} child @param {Buffer} data */
    _onStdout(child: Child, data: Buffer): void;
    /** @param {Child} child @param {Buffer} raw */
    _onLine(child: Child, raw: Buffer): void;
    /** @param {string} method @param {any} params */
    _onNotification(method: string, params: any): void;
    /** @param {Child} child @param {Buffer} data @param {number} tailSize */
    _onStderr(child: Child, data: Buffer, tailSize: number): void;
    /**
     * The process is gone and its stdout drained: fail what was in flight on it, report, restart.
     * @param {Child} child
     * @param {ExitInfo} exit
     */
    _onChildFinished(child: Child, exit: ExitInfo): void;
    /** @param {Error} reason */
    _scheduleRestart(reason: Error): void;
    /** @param {SidecarUnavailableError} error */
    _giveUp(error: SidecarUnavailableError): void;
    /**
     * End stdin, wait for the exit, SIGKILL after the grace period.
     * @param {Child} child
     * @param {number} graceMs
     */
    _stopChild(child: Child, graceMs: number): Promise<void>;
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
export class SidecarStream implements AsyncIterable<StreamingChunk> {
    /**
     * @param {SidecarHost} host
     * @param {ModelStreamParams} params
     * @param {RequestOptions} options
     */
    constructor(host: SidecarHost, params: ModelStreamParams, options: RequestOptions);
    _host: SidecarHost;
    /** @type {StreamingChunk[]} */
    _queue: StreamingChunk[];
    /** @type {(() => void) | null} */
    _wake: (() => void) | null;
    _ended: boolean;
    /** @type {Error | null} */
    _error: Error | null;
    _errorThrown: boolean;
    _nextSeq: number;
    _iterating: boolean;
    /** The text so far (what a UI shows): reset by a `restart` chunk. */
    content: string;
    /**
     * The tool calls so far, assembled from the chunks' `toolCalls` deltas by `index`:
     * `arguments` is the JSON text received so far (incomplete until the stream ends; the
     * final, validated calls with parsed arguments are in `result.toolCalls`). Reset by a
     * `restart` chunk.
     * @type {StreamedToolCall[]}
     */
    toolCalls: StreamedToolCall[];
    /** @type {ModelStreamResult | undefined} */
    response: ModelStreamResult | undefined;
    /** The request id (what `model:stream-chunk` carries as `requestId`; pass it to `host.cancel`). */
    id: number;
    /** @type {Promise<ModelStreamResult>} the final response; rejects like `generate` */
    result: Promise<ModelStreamResult>;
    /** Cancel the stream (`$/cancelRequest`); `result` then rejects with `RequestCancelledError`. */
    cancel(): boolean;
    /** @param {ModelStreamChunkNotification} notification */
    _onChunk(notification: ModelStreamChunkNotification): void;
    /** @param {ToolCallDelta} delta */
    _addToolDelta(delta: ToolCallDelta): void;
    /** @param {Error | null} error */
    _end(error: Error | null): void;
    _wakeUp(): void;
    /** @returns {AsyncIterator<StreamingChunk, ModelStreamResult | undefined>} */
    [Symbol.asyncIterator](): AsyncIterator<StreamingChunk, ModelStreamResult | undefined>;
}
export type Deferred<T> = {
    promise: Promise<T>;
    settled: boolean;
    resolve: (value: T) => void;
    reject: (error: Error) => void;
};
export type SidecarMethods = import("../types.js").SidecarMethods;
export type SidecarReadyNotification = import("../types.js").SidecarReadyNotification;
export type ModelStreamChunkNotification = import("../types.js").ModelStreamChunkNotification;
export type ModelBudgetAlertNotification = import("../types.js").ModelBudgetAlertNotification;
export type StreamingChunk = import("../types.js").StreamingChunk;
export type ToolCallDelta = import("../types.js").ToolCallDelta;
export type ToolCall = import("../types.js").ToolCall;
export type ToolTurn = import("../types.js").ToolTurn;
export type ModelGenerateParams = import("../types.js").ModelGenerateParams;
export type ModelGenerateResult = import("../types.js").ModelGenerateResult;
export type ModelStreamParams = import("../types.js").ModelStreamParams;
export type ModelStreamResult = import("../types.js").ModelStreamResult;
export type ModelHealthResult = import("../types.js").ModelHealthResult;
export type ModelListModelsParams = import("../types.js").ModelListModelsParams;
export type ModelListModelsResult = import("../types.js").ModelListModelsResult;
export type ModelGetConfigResult = import("../types.js").ModelGetConfigResult;
export type ModelSetConfigParams = import("../types.js").ModelSetConfigParams;
export type ModelSetConfigResult = import("../types.js").ModelSetConfigResult;
export type ModelSelectParams = import("../types.js").ModelSelectParams;
export type ModelSelectResult = import("../types.js").ModelSelectResult;
export type ModelUsageResult = import("../types.js").ModelUsageResult;
export type ModelDiscoverResult = import("../types.js").ModelDiscoverResult;
export type ModelPullParams = import("../types.js").ModelPullParams;
export type ModelPullResult = import("../types.js").ModelPullResult;
export type ModelPullProgressNotification = import("../types.js").ModelPullProgressNotification;
export type ErrorData = import("../types.js").ErrorData;
export type ExitInfo = import("./errors.js").ExitInfo;
export type RestartOptions = {
    /**
     * delay before the first restart after a crash
     */
    initialDelayMs?: number | undefined;
    /**
     * each further restart in the window waits this much longer
     */
    factor?: number | undefined;
    /**
     * cap of the delay
     */
    maxDelayMs?: number | undefined;
    /**
     * at most this many restarts within `windowMs`; one more
     * crash and the host gives up (`'giveup'` event, requests fail with `SidecarUnavailableError`)
     */
    maxRestarts?: number | undefined;
    windowMs?: number | undefined;
};
export type SidecarHostOptions = {
    /**
     * the sidecar executable (`.../model-sidecar`, or a Python interpreter)
     */
    command: string;
    /**
     * arguments before ours (e.g. `['-m', 'sidecar']`)
     */
    args?: string[] | undefined;
    /**
     * passed as `--data-dir` (config.json and the usage ledger live there)
     */
    dataDir?: string | undefined;
    /**
     * passed as `--log-level`
     */
    logLevel?: "debug" | "info" | "warning" | "error" | undefined;
    /**
     * merged over `process.env`
     */
    env?: Record<string, string | undefined> | undefined;
    cwd?: string | undefined;
    /**
     * how long to wait for `sidecar:ready` after a spawn
     */
    readyTimeoutMs?: number | undefined;
    /**
     * after closing stdin, how long the sidecar gets to exit before SIGKILL
     */
    closeGraceMs?: number | undefined;
    /**
     * restart policy after crashes; `false`: never restart
     */
    restart?: false | RestartOptions | undefined;
    /**
     * the sidecar's `--max-message-bytes`: longer requests are refused here
     */
    maxMessageBytes?: number | undefined;
    /**
     * how many stderr lines to keep for crash reports
     */
    stderrTailLines?: number | undefined;
};
export type RequestOptions = {
    /**
     * aborting it cancels the request (`$/cancelRequest`)
     */
    signal?: AbortSignal | undefined;
    /**
     * reject with `SidecarTimeoutError` (and cancel) after this long
     */
    timeoutMs?: number | undefined;
};
export type ExitEvent = {
    code: number | null;
    signal: NodeJS.Signals | null;
    pid: number | undefined;
    /**
     * true when the host asked for it (close, shutdown, handshake refused)
     */
    expected: boolean;
};
export type RestartEvent = {
    /**
     * 1 for the first restart in the window, 2 for the second...
     */
    attempt: number;
    /**
     * how long the host waits before spawning again
     */
    delayMs: number;
    /**
     * what ended the previous sidecar
     */
    reason: Error;
};
/**
 * Events of `SidecarHost` (listener argument lists).
 */
export type SidecarHostEvents = {
    /**
     * a sidecar passed the handshake (first start and every restart)
     */
    ready: [ready: SidecarReadyNotification];
    /**
     * a sidecar process ended
     */
    exit: [exit: ExitEvent];
    /**
     * a sidecar ended unexpectedly (also emitted: `exit`)
     */
    crash: [error: SidecarCrashedError];
    /**
     * a restart is scheduled
     */
    restart: [restart: RestartEvent];
    /**
     * a restarted sidecar did not come up (another restart follows unless the guard gives up)
     */
    restartFailed: [error: Error];
    /**
     * no more restarts; requests fail until `start()` is called again
     */
    giveup: [error: SidecarUnavailableError];
    /**
     * one line of the sidecar's stderr (its JSON log)
     */
    stderr: [line: string, pid: number | undefined];
    /**
     * every notification from the sidecar (stream chunks included)
     */
    notification: [method: string, params: any];
    /**
     * `model:budget-alert`
     */
    budgetAlert: [alert: ModelBudgetAlertNotification];
    /**
     * a stdout line that could not be used (logged, then ignored)
     */
    protocolError: [error: Error, line?: string];
    /**
     * the host is closed
     */
    close: [];
};
export type Child = {
    proc: import("node:child_process").ChildProcessWithoutNullStreams;
    pid: number | undefined;
    stdout: LineSplitter;
    stderr: LineSplitter;
    stderrTail: string[];
    ready: SidecarReadyNotification | null;
    expectedExit: boolean;
    exit: ExitInfo | null;
    /**
     * exit handled (stdout drained, in-flight failed)
     */
    finished: boolean;
    exited: Promise<ExitInfo>;
    resolveExited: (exit: ExitInfo) => void;
    onHandshake: ((message: any) => void) | null;
};
export type Pending = {
    id: number;
    method: string;
    /**
     * the sidecar it was sent to (null: not sent yet)
     */
    child: Child | null;
    resolve: (value: any) => void;
    reject: (error: Error) => void;
    onChunk: ((params: ModelStreamChunkNotification) => void) | null;
    cleanup: () => void;
};
/**
 * A tool call being streamed, assembled from `toolCalls` deltas.
 */
export type StreamedToolCall = {
    /**
     * the call's position in the answer (0, 1, ...)
     */
    index: number;
    /**
     * the call's id (`''` until its first delta arrived)
     */
    id: string;
    /**
     * the tool's name
     */
    name: string;
    /**
     * the arguments' JSON text so far
     */
    arguments: string;
};
import { EventEmitter } from 'node:events';
import { SidecarUnavailableError } from './errors.js';
import { SidecarCrashedError } from './errors.js';
import { LineSplitter } from './line-splitter.js';
