// @ts-check
/**
 * Errors: one class per row of the error table in docs/protocol.md (JSON-RPC errors the
 * sidecar answers with), plus the host's own failures (crash, handshake, timeouts, close).
 *
 * Every class extends `SidecarError`; JSON-RPC errors extend `SidecarRpcError`, which carries
 * `code`, `type` (= `data.type`), `retryable` (= `data.retryable`) and the whole `data`.
 */

/** @typedef {import('../types.js').ErrorData} ErrorData */

/** The JSON-RPC error codes of docs/protocol.md, by `data.type`. */
export const ERROR_CODES = Object.freeze({
  ParseError: -32700,
  InvalidRequest: -32600,
  MessageTooLarge: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  NetworkError: -32001,
  RateLimitError: -32002,
  AuthenticationError: -32003,
  ModelError: -32004,
  ValidationError: -32005,
  BudgetExceededError: -32006,
  StructuredOutputError: -32007,
  AllProvidersFailedError: -32008,
  RequestCancelled: -32800,
});

/** Base class of every error this module throws. */
export class SidecarError extends Error {
  /**
   * @param {string} message
   * @param {{ cause?: unknown }} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A JSON-RPC error response from the sidecar. */
export class SidecarRpcError extends SidecarError {
  /**
   * @param {{ code: number, message: string, data?: ErrorData }} error the `error` member of the response
   * @param {{ method?: string, requestId?: number | string }} [context]
   */
  constructor(error, context = {}) {
    const data = /** @type {ErrorData} */ (error.data ?? { type: 'Unknown', retryable: false });
    super(`${context.method ? `${context.method}: ` : ''}${error.message} (${error.code} ${data.type})`);
    /** JSON-RPC error code (`-32001` ...). */
    this.code = error.code;
    /** `data.type`, e.g. `"NetworkError"`, `"RequestCancelled"`. */
    this.type = data.type;
    /** `data.retryable`. */
    this.retryable = data.retryable === true;
    /** The whole `error.data` (`provider`, `modelId`, `status`, `attempts`, `partialContent`, ...). */
    this.data = data;
    /** The sidecar's message, as sent. */
    this.rpcMessage = error.message;
    this.method = context.method;
    this.requestId = context.requestId;
  }

  /** `data.partialContent`: the text already streamed before the failure (streams only). */
  get partialContent() {
    return this.data.partialContent ?? undefined;
  }
}

/** -32700: the sidecar could not parse a line we sent (not JSON, not UTF-8, NaN, too deep). */
export class ParseError extends SidecarRpcError {}
/** -32600: not a request object, a batch, a duplicate id. */
export class InvalidRequestError extends SidecarRpcError {}
/** -32600 with `data.type: "MessageTooLarge"`: the line exceeded `--max-message-bytes`. */
export class MessageTooLargeError extends InvalidRequestError {}
/** -32601: unknown method. */
export class MethodNotFoundError extends SidecarRpcError {}
/** -32602: invalid params; `errors` lists `{path, message}` (JSON pointers over wire names). */
export class InvalidParamsError extends SidecarRpcError {
  get errors() {
    return this.data.errors ?? [];
  }
}
/** -32603: a bug in the sidecar (the traceback is on its stderr); it keeps serving. */
export class InternalError extends SidecarRpcError {}
/** -32001: connect/read failure, broken stream, timeout upstream. Retryable. */
export class NetworkError extends SidecarRpcError {}
/** -32002: rate limited (upstream 429 or the sidecar's own limiter); see `retryAfterMs`. */
export class RateLimitError extends SidecarRpcError {
  get retryAfterMs() {
    return this.data.retryAfterMs ?? undefined;
  }
}
/** -32003: 401/403/402, missing key. */
export class AuthenticationError extends SidecarRpcError {}
/** -32004: 404 model, 5xx/529 overloaded, malformed answer. */
export class ModelError extends SidecarRpcError {}
/** -32005: the provider refused the request; `data.contextTooLong`. */
export class ValidationError extends SidecarRpcError {}
/** -32006: the budget blocks the request (`data.usage`), or nothing fits `maxCostUsd`. */
export class BudgetExceededError extends SidecarRpcError {}
/** -32007: structured output did not validate (`data.validationErrors`, `data.lastContent`, `data.cause`). */
export class StructuredOutputError extends SidecarRpcError {}
/** -32008: every provider of the fallback chain failed; `data.attempts`. */
export class AllProvidersFailedError extends SidecarRpcError {}
/** -32800: cancelled (`$/cancelRequest`, or the sidecar shutting down); `partialContent` for streams. */
export class RequestCancelledError extends SidecarRpcError {}

/** @type {Record<string, typeof SidecarRpcError>} */
const BY_TYPE = {
  ParseError,
  InvalidRequest: InvalidRequestError,
  MessageTooLarge: MessageTooLargeError,
  MethodNotFound: MethodNotFoundError,
  InvalidParams: InvalidParamsError,
  InternalError,
  NetworkError,
  RateLimitError,
  AuthenticationError,
  ModelError,
  ValidationError,
  BudgetExceededError,
  StructuredOutputError,
  AllProvidersFailedError,
  RequestCancelled: RequestCancelledError,
};

/** @type {Record<number, typeof SidecarRpcError>} */
const BY_CODE = {
  [-32700]: ParseError,
  [-32600]: InvalidRequestError,
  [-32601]: MethodNotFoundError,
  [-32602]: InvalidParamsError,
  [-32603]: InternalError,
  [-32001]: NetworkError,
  [-32002]: RateLimitError,
  [-32003]: AuthenticationError,
  [-32004]: ModelError,
  [-32005]: ValidationError,
  [-32006]: BudgetExceededError,
  [-32007]: StructuredOutputError,
  [-32008]: AllProvidersFailedError,
  [-32800]: RequestCancelledError,
};

/**
 * The typed error for a JSON-RPC `error` member: by `data.type`, else by `code`, else `SidecarRpcError`.
 * @param {{ code: number, message: string, data?: ErrorData }} error
 * @param {{ method?: string, requestId?: number | string }} [context]
 * @returns {SidecarRpcError}
 */
export function rpcErrorFrom(error, context) {
  const type = error.data?.type;
  const Class = (type !== undefined && Object.hasOwn(BY_TYPE, type) ? BY_TYPE[type] : undefined) ??
    (Object.hasOwn(BY_CODE, error.code) ? BY_CODE[error.code] : undefined) ??
    SidecarRpcError;
  return new Class(error, context);
}

/**
 * @typedef {object} ExitInfo
 * @property {number | null} code exit code, or null when a signal ended the process
 * @property {NodeJS.Signals | null} signal the signal that ended it (`"SIGKILL"` ...), or null
 * @property {number | undefined} pid
 */

/** @param {ExitInfo} exit */
function describeExit(exit) {
  return exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
}

/**
 * The sidecar process ended without being asked to (crash, kill -9, OOM). Every request and
 * stream in flight on it fails with this error; the host restarts the sidecar (see the
 * `restart` option).
 */
export class SidecarCrashedError extends SidecarError {
  /**
   * @param {ExitInfo} exit
   * @param {{ stderrTail?: string[], phase?: string, method?: string, requestId?: number | string }} [details]
   */
  constructor(exit, details = {}) {
    const what = details.method ? ` while ${details.method} (id ${details.requestId}) was in flight` : '';
    const phase = details.phase ? ` ${details.phase}` : '';
    const tail = details.stderrTail?.length ? `; last stderr line: ${details.stderrTail[details.stderrTail.length - 1]}` : '';
    super(`the sidecar (pid ${exit.pid}) ${describeExit(exit)}${phase}${what}${tail}`);
    this.exitCode = exit.code;
    this.signal = exit.signal;
    this.pid = exit.pid;
    /** The last lines the sidecar wrote to stderr (its JSON log), oldest first. */
    this.stderrTail = details.stderrTail ?? [];
    this.method = details.method;
    this.requestId = details.requestId;
  }
}

/** `sidecar:ready` announced a protocol version this host does not speak. The child was killed. */
export class SidecarProtocolVersionError extends SidecarError {
  /**
   * @param {number} expected
   * @param {unknown} actual
   * @param {{ command?: string, version?: unknown, pid?: number }} [details]
   */
  constructor(expected, actual, details = {}) {
    super(
      `protocol version mismatch: the sidecar${details.command ? ` at ${details.command}` : ''}` +
        `${typeof details.version === 'string' ? ` (version ${details.version})` : ''} speaks protocol version ` +
        `${JSON.stringify(actual)}, but this host was written for version ${expected}; refusing to talk to it ` +
        `(install the sidecar build that ships with this app)`,
    );
    this.expected = expected;
    this.actual = actual;
    this.sidecarVersion = details.version;
    this.pid = details.pid;
  }
}

/** No `sidecar:ready` within `readyTimeoutMs`. The child was killed. */
export class SidecarReadyTimeoutError extends SidecarError {
  /** @param {number} timeoutMs @param {string[]} [stderrTail] */
  constructor(timeoutMs, stderrTail = []) {
    super(
      `the sidecar did not announce sidecar:ready within ${timeoutMs} ms` +
        (stderrTail.length ? `; last stderr line: ${stderrTail[stderrTail.length - 1]}` : ''),
    );
    this.timeoutMs = timeoutMs;
    this.stderrTail = stderrTail;
  }
}

/** The sidecar could not be started at all (binary missing, not executable...). */
export class SidecarStartError extends SidecarError {}

/** The sidecar broke the protocol (a stdout line that is not JSON, a first line that is not `sidecar:ready`, a chunk out of sequence). */
export class SidecarProtocolError extends SidecarError {}

/** The host was closed (or is closing): the request was not sent, or its sidecar went away. */
export class SidecarClosedError extends SidecarError {}

/** The sidecar kept crashing and the restart guard gave up (or restarts are disabled). `cause` is the last failure. */
export class SidecarUnavailableError extends SidecarError {}

/** The request's `timeoutMs` passed; a `$/cancelRequest` was sent for it. */
export class SidecarTimeoutError extends SidecarError {
  /** @param {string} method @param {number | string} requestId @param {number} timeoutMs */
  constructor(method, requestId, timeoutMs) {
    super(`${method} (id ${requestId}) got no answer within ${timeoutMs} ms; cancelled`);
    this.method = method;
    this.requestId = requestId;
    this.timeoutMs = timeoutMs;
  }
}
