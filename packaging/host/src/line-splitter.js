// @ts-check
/**
 * Newline-delimited framing for the sidecar's stdout (and stderr).
 *
 * Lines are split on the byte 0x0A only, at the Buffer level: no readline (it also breaks
 * on U+2028/U+2029 and on lone `\r`), no string splitting. Bytes are decoded only once a
 * whole line is there, so a chunk boundary in the middle of a line or in the middle of a
 * multi-byte UTF-8 character is harmless.
 */

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;

export class LineTooLongError extends Error {
  /** @param {number} limit */
  constructor(limit) {
    super(`a line longer than ${limit} bytes arrived without a newline`);
    this.name = 'LineTooLongError';
    this.limit = limit;
  }
}

export class LineSplitter {
  /**
   * @param {{ maxLineBytes?: number }} [options] `maxLineBytes`: a partial line growing past
   *   this many bytes makes `push` throw a `LineTooLongError` (and drops it). Default: no limit.
   */
  constructor(options = {}) {
    /** @type {Buffer[]} */
    this._parts = [];
    this._size = 0;
    this._maxLineBytes = options.maxLineBytes ?? Infinity;
  }

  /**
   * Feed bytes; get back every line completed by them, without its 0x0A.
   * @param {Uint8Array} chunk
   * @returns {Buffer[]}
   */
  push(chunk) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    /** @type {Buffer[]} */
    const lines = [];
    let start = 0;
    let nl;
    while ((nl = buf.indexOf(NEWLINE, start)) !== -1) {
      let line = buf.subarray(start, nl);
      if (this._parts.length > 0) {
        line = Buffer.concat([...this._parts, line]);
        this._parts = [];
        this._size = 0;
      }
      lines.push(line);
      start = nl + 1;
    }
    if (start < buf.length) {
      const rest = buf.subarray(start);
      this._parts.push(rest);
      this._size += rest.length;
      if (this._size > this._maxLineBytes) {
        this._parts = [];
        this._size = 0;
        throw new LineTooLongError(this._maxLineBytes);
      }
    }
    return lines;
  }

  /** Bytes of an unterminated last line (the stream ended without a newline), or null. */
  flush() {
    if (this._parts.length === 0) return null;
    const rest = Buffer.concat(this._parts);
    this._parts = [];
    this._size = 0;
    return rest;
  }
}

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Decode one line as strict UTF-8, dropping a trailing `\r`. Throws a TypeError on invalid UTF-8.
 * @param {Uint8Array} line
 * @returns {string}
 */
export function decodeLine(line) {
  const end = line.length > 0 && line[line.length - 1] === CARRIAGE_RETURN ? line.length - 1 : line.length;
  return decoder.decode(line.subarray(0, end));
}

/**
 * Encode one outgoing message as a line. U+2028/U+2029 are escaped (valid JSON either way,
 * but a peer with a careless line reader cannot be confused by them).
 * @param {unknown} message
 * @returns {string}
 */
export function encodeLine(message) {
  return JSON.stringify(message).replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`) + '\n';
}
